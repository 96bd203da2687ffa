"""A version's human-readable files: ATTRIBUTION.md (what the CC licences require) and README.md
(the dataset card). Written by build.py from the rows it publishes."""

from __future__ import annotations

import time

from mlc_pipeline.config import Config
from mlc_pipeline.manifest import SPLITS


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
    """`[text](url)` for a plain http(s) URL (nothing in it that ends a Markdown link), else the text."""
    shown = table_cell("" if text is None else text)
    if not url or not url.startswith(("https://", "http://")) or any(c in url for c in " \t\n()<>|[]\\\"'`"):
        return shown
    return f"[{shown}]({url})"


def table_cell(value) -> str:
    """Untrusted text (a Flickr title, an owner's name) as one Markdown table cell: on one line (every
    line break, \\r and U+2028 included), its pipes and backslashes escaped, and no HTML (a `<!--` in
    a title hid every row after it when the file was rendered)."""
    text = " ".join(str(value).split())
    return (text.replace("\\", "\\\\").replace("|", "\\|")
            .replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))


def dataset_card(name: str, version: str, cfg: Config, counts: dict, curation: dict, previous: str | None) -> str:
    lines = [f"# Dataset {name} {version}", "",
             f"Built {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())} by mlc-pipeline from the catalog.",
             f"Previous version: {previous or 'none'}.", "",
             "## Contents (images per label and split)", "", "| label | " + " | ".join(SPLITS + ("probe",)) + " |",
             "|---|" + "---|" * (len(SPLITS) + 1)]
    for label, splits in counts["per_label_split"].items():
        lines.append(f"| {label} | " + " | ".join(str(splits.get(s, 0)) for s in SPLITS + ("probe",)) + " |")
    lines += ["", f"Images: {counts['images']}. Licences: " +
              ", ".join(f"{k or 'unknown'} ({v})" for k, v in sorted(counts["licenses"].items())), "",
              "## Parameters", "", f"- max side {cfg.build.max_side} px, JPEG quality {cfg.build.jpeg_quality}",
              f"- split fractions {cfg.build.split} (by a hash of source and photo id: stable across versions)",
              f"- near-duplicate Hamming threshold {cfg.curate.hamming_threshold}, min side {cfg.curate.min_side}, "
              f"max aspect {cfg.curate.max_aspect}", "", *licence_notice(cfg, counts), "## What curation and review left out", ""]
    lines += [f"- {k}: {v}" for k, v in sorted(curation.items())] or ["- nothing"]
    lines += ["", "`labels` empty = an \"other\" image (a negative for every class). Split `probe` = kinds under",
              "no training query, used only to measure how often the unknown is accepted.", ""]
    return "\n".join(lines)


def licence_notice(cfg: Config, counts: dict) -> list[str]:
    """The card's warning when `source.licenses` lets in licences that restrict use (all rights
    reserved, NC, ND): the setting, and how many published images carry each such licence."""
    restricted = counts.get("restricted_licenses") or {}
    if not cfg.source.restricted_licenses and not restricted:
        return []
    setting = cfg.source.licenses if cfg.source.licenses == "any" else ", ".join(map(str, cfg.source.licenses))
    found = ", ".join(f"{name} ({n})" for name, n in sorted(restricted.items())) or "none in this version"
    return ["## Licences that restrict use", "",
            f"**Warning:** collected with `source.licenses: {setting}`, which lets in licences that do not allow",
            f"free reuse (all rights reserved, non-commercial, no derivatives). Images under them: {found}.",
            "Check each image's licence (manifest.csv `license`, ATTRIBUTION.md) before using, sharing or",
            "training on this version.", ""]
