"""A version's ATTRIBUTION.md and README.md, the card (dataset/card.py): hostile Flickr text, licences, the
classes taken out of the config, and what curation left out."""

from __future__ import annotations

import json

import pytest
from markdown_it import MarkdownIt

from storage_world import FIXTURES, plant_downloads

from mlc_pipeline.catalog import Catalog
from mlc_pipeline.config import parse_config
from mlc_pipeline.dataset.build import build_dataset
from mlc_pipeline.dataset.card import attribution, dataset_card, table_cell
from mlc_pipeline.manifest import read_manifest
from mlc_pipeline.report.inspect import dataset_summary, format_dataset_summary


def test_a_hostile_title_stays_in_its_own_cell_and_hides_nothing():
    rows = [{"path": "images/cat/1.jpg", "title": "a|b\r\nc <!-- hide", "owner": "x\\|y\u2028z & co",
             "license": "CC BY 2.0", "url": "https://www.flickr.com/photos/x/1"},
            {"path": "images/cat/2.jpg", "title": "<script>alert(1)</script>", "owner": "o", "license": "CC BY 2.0",
             "url": "https://www.flickr.com/photos/o/2"}]
    text = attribution(rows, "v1")
    table = [line for line in text.splitlines() if line.startswith("| images/")]
    assert len(table) == 2 and len(text.splitlines()) == 6 + 2       # title, blank, note, blank, header, rule
    for line in table:                # five cells: no pipe left unescaped inside a cell
        assert len(line.replace("\\\\", "").replace("\\|", "").split("|")) == 7, line
    assert "<" not in text.split("\n", 1)[1] and "&lt;!-- hide" in table[0]
    assert "&lt;script>alert(1)&lt;/script>" in table[1]        # a `>` with no `<` before it opens no tag
    assert "a\\|b c &lt;!-- hide" in table[0] and "x\\\\\\|y z &amp; co" in table[0]


def test_the_licence_links_to_its_deed_and_the_source_to_the_photos_page():
    """A user's audit: ATTRIBUTION.md said "as the CC licences require" with neither a licence link
    nor the photo's page (the source was the static image URL). A URL that could end or break the
    Markdown link, or is not http(s), stays plain text."""
    rows = [{"path": "images/cat/1.jpg", "title": "t", "owner": "o", "license": "CC BY 2.0", "license_id": "4",
             "license_url": "https://creativecommons.org/licenses/by/2.0/", "url": "https://live.staticflickr.com/1/1_s.jpg",
             "page": "https://www.flickr.com/photos/12@N01/1"},
            {"path": "images/cat/2.jpg", "title": "t", "owner": "o", "license": "CC0", "license_id": "9",
             "license_url": "javascript:alert(1)", "url": "http://127.0.0.1:9/x(1).jpg", "page": ""}]
    table = [line for line in attribution(rows, "v1").splitlines() if line.startswith("| images/")]
    assert table[0].endswith("| [CC BY 2.0](https://creativecommons.org/licenses/by/2.0/) | "
                             "[https://www.flickr.com/photos/12@N01/1](https://www.flickr.com/photos/12@N01/1) |")
    assert table[1].endswith("| CC0 | http://127.0.0.1:9/x(1).jpg |")


def rendered(text: str) -> list:
    """What a CommonMark renderer with GitHub's tables and strikethrough makes of `text`: its block
    tokens, each followed by its inline children."""
    tokens = MarkdownIt("commonmark").enable(["table", "strikethrough"]).parse(text)
    return [t for token in tokens for t in [token, *(token.children or [])]]


MARKUP = {"html_block", "html_inline", "image", "link_open", "code_inline", "em_open", "strong_open", "s_open"}


def cell_texts(text: str) -> list[list[str]]:
    """The text of each cell of the body of the Markdown table in `text`, as rendered."""
    rows, body = [], False
    for token in rendered(text):
        body = body or token.type == "tbody_open"
        if body and token.type == "tr_open":
            rows.append([])
        elif body and token.type == "inline":
            rows[-1].append("".join(c.content for c in token.children if c.type == "text"))
    return rows


def test_markdown_in_a_title_owner_or_licence_is_shown_as_text_not_a_link_or_an_image():
    """The security26 audit: ATTRIBUTION.md's cells escaped HTML but not Markdown: an owner
    `[owner](http://evil.example)` was a link, a title `![px](http://.../track.png)` an image loaded by
    whoever read the file; a NUL made it "binary" to grep and GitHub, and U+202E showed `Ann\u202eevil` as
    "Annlive". Each is now text, shown as the source gave it; a URL with a bidi or control character
    is no link; accents, CJK and emoji are kept."""
    title = "![px](http://127.0.0.1:9/track.png?title) `c` *b* _i_ ~~s~~ a_b"
    rows = [{"path": "images/cat/flickr-1000_5.jpg", "title": title, "owner": "[owner](http://evil.example)",
             "license": "CC BY](http://evil.example) [x", "license_id": "4",
             "license_url": "https://creativecommons.org/licenses/by/2.0/", "url": "https://live.staticflickr.com/1/1.jpg",
             "page": "https://www.flickr.com/photos/12@N01/1"},
            {"path": "images/cat/2.jpg", "title": "Ann\u202eevil\u2066 x\x00y\x07", "owner": "Zoë 猫 🐱‍👤", "license": "CC0",
             "license_url": "https://creativecommons.org/publicdomain/zero/1.0/\u202e", "url": "https://h/2.jpg",
             "page": "https://www.flickr.com/photos/x/2\x00"}]
    text = attribution(rows, "v1")
    tokens = rendered(text)
    assert not [t.type for t in tokens if t.type in MARKUP - {"link_open"}]
    assert [t.attrs["href"] for t in tokens if t.type == "link_open"] == [
        "https://creativecommons.org/licenses/by/2.0/", "https://www.flickr.com/photos/12@N01/1"]
    assert cell_texts(text) == [
        ["images/cat/flickr-1000_5.jpg", title, "[owner](http://evil.example)", "CC BY](http://evil.example) [x",
         "https://www.flickr.com/photos/12@N01/1"],
        ["images/cat/2.jpg", "Annevil x\ufffdy\ufffd", "Zoë 猫 🐱‍👤", "CC0", "https://www.flickr.com/photos/x/2\ufffd"]]
    assert not set(text) & {"\x00", "\x07", "\u202e", "\u2066"} and "flickr-1000_5.jpg" in text   # greppable


LINE_STARTS = ["# heading", "###### six", "> quote", "- item", "+ item", "* item", "1. item", "12) item", "---",
               "- - -", "___", "```", "~~~", "    indented", "<div>", "| a | b |", "[x]: http://evil.example"]


@pytest.mark.parametrize("where", ["{}", "- {}", "| {} |"])
def test_outside_text_at_the_start_of_a_line_is_text_too(where):
    """The run summary puts outside text at the start of a line (a list item, a paragraph of its own:
    report/summary.py, report/published.py), where `# `, `> `, `- `, `1. ` or `---` make a heading, a
    quote, a list or a rule of it. Escaped there too, it renders as the text it is, wherever it stands."""
    lines = [where.format(table_cell(text)) for text in LINE_STARTS]
    table = where.startswith("|")
    tokens = rendered("\n".join(["| text |", "|---|", *lines]) if table else "\n\n".join(lines))
    markup = {"heading_open", "blockquote_open", "ordered_list_open", "hr", "code_block", "fence", "html_block",
              "html_inline", "link_open"} | MARKUP
    assert not [t.type for t in tokens if t.type in markup], [t.type for t in tokens if t.type in markup]
    shown = ["".join(c.content for c in t.children if c.type == "text") for t in tokens if t.type == "inline"]
    assert shown[table:] == [" ".join(text.split()) for text in LINE_STARTS], shown
    assert table_cell("a -> b, #1, 1.5 m, -1, +3") == "a -> b, #1, 1.5 m, -1, +3"      # left as they are mid-line


def card_for(licenses, restricted: dict, not_allowed: dict | None = None, kind: str = "local") -> str:
    cfg = parse_config({"data_dir": "/nonexistent", "source": {"kind": kind, "licenses": licenses,
                                                               **({"csv": "l.csv"} if kind == "urls" else {})},
                        "classes": {"cat": {"queries": ["cat"], "count": 1}}, "other": {"queries": ["x"], "count": 1}})
    counts = {"images": 3, "per_label_split": {"cat": {"train": 3}},
              "licenses": {"CC BY 2.0": 3 - sum(restricted.values()), **restricted}, "restricted_licenses": restricted}
    return dataset_card("default", "v2", cfg, counts, {}, "v1", not_allowed)


HOSTILE = ["CC BY\n<!-- everything below is hidden", "x\n## Heading injected", "<script>alert(1)</script>",
           "[click](http://evil.example)", "![px](http://127.0.0.1:9/track.png)", "`c` *b* _i_ ~~s~~", "Ann\u202eevil"]


def test_outside_text_in_the_card_is_text_and_hides_not_its_licence_warning():
    """The security26 audit: licence names (a URL list's free text, a licence list's names) went into
    the card as Markdown: a newline made a heading of the rest, and after "CC BY\n<!--" everything
    below, the "Licences that restrict use" warning included, was an HTML comment nobody sees. Each
    name, and each label of a class the catalog holds and the config no longer has, is one line of
    text now."""
    cfg = parse_config({"data_dir": "/nonexistent", "source": {"licenses": "any"},
                        "classes": {"cat": {"queries": ["cat"], "count": 1}}, "other": {"queries": ["x"], "count": 1}})

    def card(names: list[str]) -> str:
        named = {name: n for n, name in enumerate(names, start=1)}
        counts = {"images": 28, "per_label_split": {"cat": {"train": 28}}, "licenses": named, "restricted_licenses": named}
        return dataset_card("default", "v2", cfg, counts, {"too-small": 1}, "v1", named, named, named)

    hostile = {name: n for n, name in enumerate(HOSTILE, start=1)}
    tokens = rendered(card(HOSTILE))
    headings = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"]
    assert headings == ["Dataset default v2", "Contents (images per label and split)", "Parameters",
                        "Licences that restrict use", "Licences left out", "Classes no longer in the config",
                        "What curation and review left out"]
    # the same Markdown as a card of plain names: no heading, HTML, link, image, code or emphasis more
    assert [t.type for t in tokens] == [t.type for t in rendered(card([f"name {n}" for n in range(len(HOSTILE))]))]
    shown = "\n".join("".join(c.content if c.type == "text" else "\n" for c in t.children) for t in tokens
                      if t.type == "inline")
    for name in HOSTILE:       # as the source gave it, on one line, bidi controls left out
        one_line = " ".join(name.replace("\u202e", "").split())
        assert f"{one_line} ({hostile[name]})" in shown and f"{one_line} dropped from" in shown, (one_line, shown)
    warning = shown.split("Warning:", 1)[1].split("Check each image", 1)[0]
    assert all(" ".join(name.replace("\u202e", "").split()) in warning for name in HOSTILE)


def test_a_narrowed_setting_is_stated_as_it_is_with_the_licences_it_left_out():
    """The collect25 audit: after `source.licenses` went from `any` to open licences, the card said
    "collected with `source.licenses: 4, 5, 9, 10, 11`, which lets in licences that do not allow free
    reuse", false for that setting. It names the setting, and what it left out, truthfully."""
    card = card_for([4, 5, 9, 10, 11], {}, {"All Rights Reserved": 8, "CC BY-NC 2.0": 37})
    assert "lets in licences" not in card and "Licences that restrict use" not in card
    assert ("- licences allowed: `source.licenses: 4, 5, 9, 10, 11` (only these Flickr licence ids: an accepted "
            "image under another is left out)") in card
    assert ("## Licences left out\n\n45 accepted image(s) in the catalog, collected under an earlier setting, carry "
            "a licence `source.licenses: 4, 5, 9, 10, 11` does not allow: All Rights Reserved (8), CC BY-NC 2.0 (37).\n"
            "They are not in this version; the catalog keeps them, and widening `source.licenses` again\n"
            "brings them back.") in card
    assert "Images: 3. Licences: CC BY 2.0 (3)" in card


def test_a_setting_that_lets_in_restricted_licences_is_warned_about_with_the_images_under_them():
    card = card_for("any", {"All Rights Reserved": 1})
    assert ("**Warning:** built with `source.licenses: any`, which lets in licences that do not allow\nfree reuse "
            "(all rights reserved, non-commercial, no derivatives). Images under them: All Rights Reserved (1).") in card
    assert "- licences allowed: `source.licenses: any` (every licence)" in card and "Licences left out" not in card
    assert "Images under them: none in this version." in card_for([4, 0], {})


def test_the_open_default_has_no_licence_section_and_a_url_list_is_said_to_carry_its_own_licences():
    card = card_for([4, 5, 9, 10, 11], {})
    assert "## Licences" not in card and "URL list" not in card
    assert ("`source.licenses: 4, 5, 9, 10, 11` (only these Flickr licence ids: an accepted image under another is "
            "left out; a URL list's rows carry their own licence text, which it does not filter)") in card_for(
                [4, 5, 9, 10, 11], {}, kind="urls")



def planted(tmp_path):
    """A catalog of real photos, curated: twelve ants, six bees, an ant photo also found as a bee, and
    three byte copies of ant photos (one in the training set, two in the mining pool). (config with
    both classes, config with ants only, the training set's candidates curate left out)."""
    if not FIXTURES.is_dir():
        pytest.skip("fixture photos missing (../shared/fixtures)")
    def cfg_for(classes):
        return parse_config({"data_dir": str(tmp_path / "data"), "other": {"queries": ["x"], "count": 5},
                             "classes": {c: {"queries": [c], "count": 20} for c in classes}, "curate": {"workers": 1},
                             "mine": {"pool": {"queries": ["pool"], "count": 5}}})

    both, ants_only = cfg_for(["ants", "bees"]), cfg_for(["ants"])
    ants, bees = sorted((FIXTURES / "ants").glob("*.jpg"))[:12], sorted((FIXTURES / "bees").glob("*.jpg"))[:6]
    plan = ([("train", "ants", f) for f in ants] + [("train", "bees", f) for f in bees]
            + [("train", "ants", ants[1]), ("pool", "other", ants[2]), ("pool", "other", ants[3])])   # byte copies
    plant_downloads(both, plan, also=[(0, "bees")])             # p0: found by both classes
    with Catalog(both.catalog_path) as c:
        pool_out = [r for r in c.candidates(purpose="pool") if r["status"] != "accepted"]
        train_out = [r for r in c.candidates(purpose="train") if r["status"] != "accepted"]
    assert len(pool_out) == 2 and len(train_out) == 1, (pool_out, train_out)
    return both, ants_only, train_out


def test_what_curation_left_out_counts_no_mining_pool_image(tmp_path):
    """The export26 audit: the card's "What curation and review left out" counted the mining pool's
    copies (`duplicate: exact-duplicate...`), never candidates of the dataset."""
    both, _, train_out = planted(tmp_path)
    card = (build_dataset(both).path / "README.md").read_text()
    section = card.split("## What curation and review left out\n\n", 1)[1].split("\n\n", 1)[0]
    counted = sum(int(line.rsplit(": ", 1)[1]) for line in section.splitlines())
    assert counted == len(train_out), section                   # the pool's two copies are not counted
    assert "## Classes no longer in the config" not in card


def test_the_card_says_which_classes_left_the_config_and_which_labels_were_dropped(tmp_path):
    """The export26 audit: with a class taken out of the config, dataset.json recorded the images left
    out and `mlc inspect` showed them, but the card, which travels with every export, said nothing, nor
    that an image of two classes lost a label."""
    _, ants_only, _ = planted(tmp_path)
    v1 = build_dataset(ants_only)
    card = (v1.path / "README.md").read_text()
    assert ("## Classes no longer in the config\n\n6 accepted image(s) in the catalog are not in this version: none of "
            "their classes is in the config now: bees (6).\n") in card, card
    assert ("Images of several classes lost the labels of classes no longer in the config, and are in this\n"
            "version under their other labels: bees dropped from 1 image(s).") in card, card
    meta = json.loads((v1.path / "dataset.json").read_text())
    assert meta["left_out"]["class-not-in-config"] == {"bees": 6} and meta["left_out"]["label-not-in-config"] == {"bees": 1}
    assert "label of a class no longer in the config (the image is in under its others): bees 1" in \
        format_dataset_summary(dataset_summary(ants_only, v1.version))


def test_a_licence_url_that_is_no_web_page_is_not_published(tmp_path):
    """The security26 audit: a licence list's `url` was published as the deed whatever it held
    (`javascript:...`, text, a spreadsheet formula), in manifest.csv's `license_url`, a column of URLs
    that is written as it is. Only an http(s) URL is a deed."""
    both, _, _ = planted(tmp_path)
    with Catalog(both.catalog_path) as c:
        c.save_licenses({4: ("CC BY 2.0", '=HYPERLINK("http://evil.example/","x")')})
    v1 = build_dataset(both).path
    rows = read_manifest(v1 / "manifest.csv")
    assert rows and {r["license_url"] for r in rows} == {""}     # (an http(s) deed: test_curate_build)
    assert "HYPERLINK" not in (v1 / "manifest.csv").read_text() + (v1 / "ATTRIBUTION.md").read_text()
