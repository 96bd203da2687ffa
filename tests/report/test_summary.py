"""The Prefect run summary as report/summary.py renders it from a run's record (what the flow puts
in the artifact: tests/test_flows.py)."""

from __future__ import annotations

import re

import pytest

from mlc_pipeline.config import ConfigError, load_config
from mlc_pipeline.report.summary import summary_markdown


def test_the_summary_of_a_refused_config_never_shows_its_password():
    """The config refuses a catalog.url with a password, and the failed run's summary printed the
    overrides as given, password and all (the arch24 audit)."""
    overrides = {"catalog": {"url": "postgresql://u:hunter2pw@db.example/mlc"}}
    with pytest.raises(ConfigError) as err:
        load_config("configs/offline.yaml", overrides)
    text = summary_markdown({"status": "Failed", "config_path": "configs/offline.yaml", "overrides": overrides,
                             "error": str(err.value)})
    assert "hunter2pw" not in text and "postgresql://u:***@db.example/mlc" in text, text


def test_summary_renders_the_shortfall_readably():
    collected = {"downloaded": 3, "found_new": 5, "api_calls": 7, "failed": {},
                 "shortfall": {"train/kite": 3, "pool/other": 1}}
    text = summary_markdown({"status": "Completed", "config_path": "c.yaml", "collect": collected})
    assert "shortfall: train/kite 3 images short, pool/other 1 image short" in text, text
    assert "{" not in text
    curated = {"accepted": 9, "inspected": 9, "reused": 0, "rejected": {}, "duplicates": {}, "taken_down": 1, "held": 2}
    text = summary_markdown({"status": "Completed", "config_path": "c.yaml", "curate": curated})
    assert "taken down as copies of removed photos 1; held for review, looking like removed photos 2" in text


def model(bundle: str, version: str, f1: float, round_no: int = 0) -> dict:
    """A model as the train task records it (only what the summary reads)."""
    return {"round": round_no, "bundle": bundle, "dataset_version": version,
            "metrics": {"test": {"macro_f1": f1, "unknown_accepted": 0.02, "probe_accepted": 0.03}}}


def test_the_summary_lists_a_kept_shipped_model_as_round_0_and_the_new_one_apart():
    """A day-2 night whose new round 0 did not beat the shipped model: the summary's rounds table
    showed the new model as round 0, beside a "Not shipped" line and a round 1 mined from the other.
    The shipped model is marked, as in the HTML report (they print one table: report/rounds.py)."""
    run = {"status": "Completed", "config_path": "c.yaml",
           "models": [model("default-v1-r0", "v2", 0.540), model("default-v3-r1", "v3", 0.52, round_no=1)],
           "round0_not_shipped": model("default-v2-r0", "v2", 0.275), "shipped": "default-v3-r1",
           "not_shipped": "lost 0.265 of macro F1 ...", "mined": [{"round": 1, "added": 5}]}
    rows = [line for line in summary_markdown(run).splitlines() if line.startswith("| 0") or line.startswith("| 1")]
    assert [r.split(" | ")[:3] for r in rows] == [["| 0", "v2", "default-v1-r0"],
                                                  ["| 0, trained, not shipped", "v2", "default-v2-r0"],
                                                  ["| 1 (shipped)", "v3", "default-v3-r1"]], rows
    assert rows[0].split(" | ")[3] == "0.540" and rows[1].split(" | ")[3] == "0.275"
    assert rows[0].endswith("| - |") and rows[2].endswith("| 5 |")      # negatives added: mining's, not round 0's


def test_the_alternatives_table_is_the_html_reports():
    """The summary's alternatives table listed the comparison heads alone, in columns of its own; it is
    report/rounds.py's, as in the HTML report: round 0's product model beside them, and the product
    after mining."""
    def metrics(f1):
        return {"macro_f1": f1, "accuracy": 0.9, "unknown_accepted": 0.1, "probe_accepted": 0.2, "fpr95_probe": 0.3}

    run = {"status": "Completed", "config_path": "c.yaml",
           "models": [{**model("m0", "v1", 0.5), "metrics": {"test": metrics(0.5)}},
                      {**model("m1", "v2", 0.6, round_no=1), "metrics": {"test": metrics(0.6)}}],
           "alternatives": {"softmax-other-class": {"test": metrics(0.4)}}}
    text = summary_markdown(run)
    table = text.split("## Alternatives on the same data (round 0)\n\n")[1].splitlines()
    assert table[0].startswith("| variant | macro F1 | in-domain accuracy |"), table
    assert [row.split(" | ")[0] for row in table[2:5]] == [
        "| product, round 0", "| softmax-other-class", "| product after mining (round 1)"], table


def test_without_comparison_heads_the_summary_still_shows_the_html_reports_alternatives_table():
    """With no comparison heads (the default) the summary said only that none were trained, while the
    HTML report shows its table (round 0's product model and the product after mining) and says so
    (the verify24 audit)."""
    def metrics(f1):
        return {"macro_f1": f1, "accuracy": 0.9, "unknown_accepted": 0.1, "probe_accepted": 0.2, "fpr95_probe": 0.3}

    run = {"status": "Completed", "config_path": "c.yaml",
           "models": [{**model("m0", "v1", 0.5), "metrics": {"test": metrics(0.5)}},
                      {**model("m1", "v2", 0.6, round_no=1), "metrics": {"test": metrics(0.6)}}]}
    text = summary_markdown(run)
    table = text.split("## Alternatives on the same data (round 0)\n\n")[1].splitlines()
    assert [row.split(" | ")[0] for row in table[2:4]] == ["| product, round 0", "| product after mining (round 1)"]
    assert "No comparison heads were trained in this run" in text
    failed = summary_markdown({**run, "status": "Failed"})
    assert "Alternatives on the same data" not in failed        # a failed run: no "off" table that looks whole


def test_text_from_outside_renders_as_text_never_as_html_a_link_or_an_image():
    """The security26 audit: a failed download's reason (`host-not-allowed:<a result URL's host>`) and
    a failed run's error (a reply's keys) went into the Prefect run summary as they came, and Prefect's
    UI drew an attacker's <img> (its address loads for whoever views the run). Rendered by a CommonMark
    renderer, every such text is plain text: no element, link or image, and all of it readable."""
    from html import unescape
    from markdown_it import MarkdownIt
    tag = "<img src=http://evil.example/pixel.png onerror=alert(1)>"
    image, link = "![px](http://evil.example/track.png)", "[click](javascript:alert(1))"
    error = (f"stage 'collect' failed: RetriesExhausted: a malformed reply: no 'licenses' in it (keys: {tag}, "
             f"***, stat) {image} `code` \\[x] &lt;b&gt;")
    collected = {"downloaded": 1, "found_new": 2, "api_calls": 3, "shortfall": {"train/kite": 1},
                 "failed": {f"host-not-allowed:{tag}": 2, f"not-an-image:{image}": 1, "too-large": 1},
                 "short": [f"kite: 0 of 9 usable ({link} | x)"]}
    text = summary_markdown({"status": "Failed", "config_path": "c.yaml", "error": error, "collect": collected})
    html = MarkdownIt("commonmark").enable("table").render(text.split("- config:")[0] + text.split("## Collect")[1])
    assert not re.search(r"<(img|a|code|b|em|script)\b", html) and html.count("<strong>") == 2, html
    shown = unescape(re.sub(r"<[^>]+>", "", html))
    for part in (error, tag, image, f"{link} | x"):
        assert part in shown, (part, shown)
    assert f"failed: host-not-allowed:{tag} 2, not-an-image:{image} 1, too-large 1;" in shown, shown


def test_the_summary_escapes_outside_text_as_the_dataset_card_does():
    """The summary had an escaper of its own (MD_ESCAPES), a part of the card's: `_emphasis_` and
    `~~strikethrough~~` (which Prefect's UI draws, as GitHub does) were markup, a NUL, an ESC and
    U+202E went in as they came (`Ann\\u202eevil` showed as "Annlive"), and a short set's line
    starting with `# ` or `1. ` was a heading or a list in its list item. It is the card's escaper
    now (dataset/card.py, table_cell): all of it text, on the line it came on."""
    from html import unescape
    from markdown_it import MarkdownIt
    from mlc_pipeline.dataset.card import table_cell
    from mlc_pipeline.report.summary import md_escape
    assert md_escape is table_cell
    hostile = "_em_ ~~struck~~ ![x](http://evil.example/p.png) Ann\u202eevil\x00\x1b[2J"
    collected = {"downloaded": 1, "found_new": 2, "api_calls": 3, "shortfall": {f"train/{hostile}": 1},
                 "failed": {f"host-not-allowed:{hostile}": 2}, "short": [f"# {hostile}", "1. listed"]}
    run = {"status": "Failed", "config_path": "c.yaml", "error": f"RetriesExhausted: {hostile}", "collect": collected,
           "models": [{"round": 0, "dataset_version": "v1", "bundle": "b",
                       "metrics": {"test": {"macro_f1": 0.5}, "warnings": [f"> {hostile}"]}}],
           "not_shipped": hostile, "stop_reason": hostile, "reused": hostile}
    text = summary_markdown(run)
    tokens = [t for token in MarkdownIt("commonmark").enable(["table", "strikethrough"]).parse(text)
              for t in [token, *(token.children or [])]]
    markup = {"em_open", "s_open", "image", "link_open", "html_inline", "html_block", "blockquote_open",
              "ordered_list_open"}
    assert not [t.type for t in tokens if t.type in markup], [t.type for t in tokens if t.type in markup]
    headings = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"]
    assert headings == ["collect-and-train: Failed", "Failed", "Collect", "Model: before and after mining (test split)"]
    assert not set(text) & {"\x00", "\x1b", "\u202e"}
    shown = unescape("".join(c.content for t in tokens if t.type == "inline" for c in t.children if c.type == "text"))
    seen = "_em_ ~~struck~~ ![x](http://evil.example/p.png) Annevil\ufffd\ufffd[2J"
    for line in (f"RetriesExhausted: {seen}", f"host-not-allowed:{seen} 2", f"train/{seen} 1 image short",
                 f"# {seen}", "1. listed", f"> {seen}", f"Not shipped: {seen}", f"Mining stopped: {seen}."):
        assert line in shown, (line, shown)
