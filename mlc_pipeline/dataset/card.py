"""A version's human-readable files: ATTRIBUTION.md (what the CC licences require) and README.md
(the dataset card). Written by build.py from the rows it publishes."""

from __future__ import annotations

import re
import time
import unicodedata

from mlc_pipeline.config import Config
from mlc_pipeline.manifest import SPLITS
from mlc_pipeline.secrets import BIDI_CONTROLS, CONTROLS, code_points


FLICKR_PHOTO_PAGE = "https://www.flickr.com/photos/{owner}/{photo_id}"


def attribution(rows: list[dict], version: str) -> str:
    """Title, author, source and licence of every image (what the CC licences ask an attribution to
    give): the licence linked to its deed (`license_url`), the source to the photo's page (`page`,
    for photos from the real Flickr) or else to the URL the image was fetched from."""
    lines = [f"# Attribution — dataset {version}", "",
             "Every image, its title, author, source and licence, as the CC licences require.", "",
             "| image | title | author | licence | source |", "|---|---|---|---|---|"]
    for r in rows:
        source = r.get("page") or r["url"]
        cells = [table_cell(r[k]) for k in ("path", "title", "owner")]
        cells += [link(r["license"] or r.get("license_id"), r.get("license_url")), link(source, source)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def link(text, url: str | None) -> str:
    """`[text](url)` for a plain http(s) URL (nothing in it that ends a Markdown link, no space, control
    or bidi character: the link goes where its text says), else the text, and never a `javascript:`."""
    shown = table_cell("" if text is None else text)
    if (not url or not url.startswith(("https://", "http://")) or any(c in url for c in " \t\n()<>|[]\\\"'`")
            or any(unicodedata.category(c)[0] in "CZ" for c in url)):
        return shown
    return f"[{shown}]({url})"


# The bidi embeddings, overrides and isolates (secrets.BIDI_CONTROLS) are dropped. The C0 and C1
# controls (secrets.CONTROLS), NUL among them, become U+FFFD, as CommonMark does with NUL; those that
# are white space are line breaks or spaces.
UNSEEN = {**{c: "\ufffd" for c in code_points(CONTROLS) if not chr(c).isspace()},
          **dict.fromkeys(code_points(BIDI_CONTROLS))}
# What makes Markdown of text: links and images (`[`, `]`, `!` before `[`), code spans, emphasis and
# strikethrough, escapes and table pipes. Backslash-escaped, each shows as itself. A `_` between two
# letters or digits is left as it is (it cannot start or end emphasis: `flickr-1000_5` stays greppable).
MARKDOWN_SYNTAX = re.compile(r"[\\`*~|\[\]]|!(?=\[)|(?<![^\W_])_|_(?![^\W_])")
# And at the start of a line (where a backslash goes): a heading (`# `), a quote (`>`), a list item
# (`- `, `+ `, `1. `, `1) `), a rule (`---`).
LINE_START_SYNTAX = re.compile(r"^(?=#{1,6}(?:\s|$)|>|[-+](?:[\s-]|$))|^\d{1,9}(?=[.)](?:\s|$))")


def table_cell(value) -> str:
    """Outside text (a Flickr title, an owner's name, a licence's name, a reply's words in a run
    summary) as Markdown that shows it as it is, in a table cell or anywhere in a line, its start
    included: on one line (every line break, \\r and U+2028 included: a newline in a licence name
    started a heading of the card), no HTML (a `<!--` hid every row after it), no Markdown (a
    `[x](http://...)` was a live link, a `![](...)` an image loaded from anywhere: the security26
    audit), and no control or bidi character. Accents, CJK and emoji are kept. The one Markdown
    escaper of outside text: the run summary's (report/summary.py) is this one."""
    text = " ".join(str(value).translate(UNSEEN).split())
    text = MARKDOWN_SYNTAX.sub(lambda m: "\\" + m.group(), text)
    text = text.replace("&", "&amp;").replace("<", "&lt;")       # `>` closes no tag: `a -> b` stays readable
    return LINE_START_SYNTAX.sub(lambda m: m.group() + "\\", text, count=1)


def dataset_card(name: str, version: str, cfg: Config, counts: dict, curation: dict, previous: str | None,
                 not_allowed: dict | None = None, class_left_out: dict | None = None,
                 labels_dropped: dict | None = None) -> str:
    """The card. `not_allowed`: the accepted images left out because `source.licenses` does not allow
    their licence now (by licence), said in the card's licence section. `class_left_out`: the accepted
    images left out because none of their classes is in the config now (by their labels), and
    `labels_dropped`: the labels of such classes dropped from images published under their others (by
    label), said in a section of their own. `curation`: what curation and review left out of the
    dataset's candidates (the mining pool's are none of them)."""
    lines = [f"# Dataset {name} {version}", "",
             f"Built {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())} by mlc-pipeline from the catalog.",
             f"Previous version: {previous or 'none'}.", "",
             "## Contents (images per label and split)", "", "| label | " + " | ".join(SPLITS + ("probe",)) + " |",
             "|---|" + "---|" * (len(SPLITS) + 1)]
    for label, splits in counts["per_label_split"].items():
        lines.append(f"| {label} | " + " | ".join(str(splits.get(s, 0)) for s in SPLITS + ("probe",)) + " |")
    lines += ["", f"Images: {counts['images']}. Licences: {counted(counts['licenses'])}", "",
              "## Parameters", "", f"- max side {cfg.build.max_side} px, JPEG quality {cfg.build.jpeg_quality}",
              f"- split fractions {cfg.build.split} (by a hash of source and photo id: stable across versions)",
              f"- near-duplicate Hamming threshold {cfg.curate.hamming_threshold}, min side {cfg.curate.min_side}, "
              f"max aspect {cfg.curate.max_aspect}", f"- {licence_parameter(cfg)}", "",
              *licence_notice(cfg, counts, not_allowed or {}), *class_notice(class_left_out or {}, labels_dropped or {}),
              "## What curation and review left out", ""]
    lines += [f"- {k}: {v}" for k, v in sorted(curation.items())] or ["- nothing"]
    lines += ["", "`labels` empty = an \"other\" image (a negative for every class). Split `probe` = kinds under",
              "no training query, used only to measure how often the unknown is accepted.", ""]
    return "\n".join(lines)


def counted(counts: dict) -> str:
    """`name (n), ...` of a count by licence or by labels: the names are outside text (a licence's
    name comes from the source, a URL list's row or Flickr's licence list; labels from the catalog,
    not the config now), shown as text, never as Markdown or HTML (table_cell)."""
    return ", ".join(f"{table_cell(name or 'unknown')} ({n})" for name, n in sorted(counts.items()))


def licence_setting(cfg: Config) -> str:
    """`source.licenses` as a user writes it: `any`, or its ids."""
    return "any" if cfg.source.licenses == "any" else ", ".join(map(str, cfg.source.licenses))


def licence_parameter(cfg: Config) -> str:
    """The card's line on the licence setting the version was built with."""
    allows = ("every licence" if cfg.source.licenses == "any" else
              "only these Flickr licence ids: an accepted image under another is left out")
    if cfg.source.kind == "urls":
        allows += "; a URL list's rows carry their own licence text, which it does not filter"
    return f"licences allowed: `source.licenses: {licence_setting(cfg)}` ({allows})"


def licence_notice(cfg: Config, counts: dict, not_allowed: dict) -> list[str]:
    """The card's warning when `source.licenses` lets in licences that restrict use (all rights
    reserved, NC, ND): the setting, and how many published images carry each such licence; and, when
    the setting no longer allows images the catalog holds, how many it left out, by licence."""
    restricted = counts.get("restricted_licenses") or {}
    setting = licence_setting(cfg)
    lines = []
    if cfg.source.restricted_licenses:      # (the build leaves out any licence the setting does not allow)
        found = counted(restricted) or "none in this version"
        lines += ["## Licences that restrict use", "",
                  f"**Warning:** built with `source.licenses: {setting}`, which lets in licences that do not allow",
                  f"free reuse (all rights reserved, non-commercial, no derivatives). Images under them: {found}.",
                  "Check each image's licence (manifest.csv `license`, ATTRIBUTION.md) before using, sharing or",
                  "training on this version.", ""]
    if not_allowed:
        left = counted(not_allowed)
        lines += ["## Licences left out", "",
                  f"{sum(not_allowed.values())} accepted image(s) in the catalog, collected under an earlier setting, "
                  f"carry a licence `source.licenses: {setting}` does not allow: {left}.",
                  "They are not in this version; the catalog keeps them, and widening `source.licenses` again",
                  "brings them back.", ""]
    return lines


def class_notice(class_left_out: dict, labels_dropped: dict) -> list[str]:
    """The card's section on classes taken out of the config while the catalog holds their images (the
    build keeps them out; dataset.json's `left_out`): the images left out, and the labels dropped
    from images of several classes, published under their other labels."""
    if not class_left_out and not labels_dropped:
        return []
    lines = ["## Classes no longer in the config", ""]
    if class_left_out:
        left = counted(class_left_out)
        lines += [f"{sum(class_left_out.values())} accepted image(s) in the catalog are not in this version: none of "
                  f"their classes is in the config now: {left}.",
                  "They are not made \"other\" images; the catalog keeps them, and adding the class back brings them back.", ""]
    if labels_dropped:
        dropped = "; ".join(f"{table_cell(label)} dropped from {n} image(s)" for label, n in sorted(labels_dropped.items()))
        lines += ["Images of several classes lost the labels of classes no longer in the config, and are in this",
                  f"version under their other labels: {dropped}.", ""]
    return lines
