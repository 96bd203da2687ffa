"""`mlc inspect`: what the catalog and a dataset version hold, what was thrown out and why, and what
changed since the previous version — in the terminal, as JSON, or as one self-contained HTML page."""

from __future__ import annotations

import dataclasses
import html
import json
import logging
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable

from mlc_pipeline.fsutil import write_text_atomic
from mlc_pipeline.catalog import Catalog
from mlc_pipeline.catalog.overrides import overrides
from mlc_pipeline.catalog.runs import where
from mlc_pipeline.config import Config
from mlc_pipeline.dataset.takedowns import held_words, photo_name, takedowns_of
from mlc_pipeline.dataset.verify import VersionDamaged, damaged_version, read_version
from mlc_pipeline.manifest import UnknownVersion, latest_version, versions, withdrawn_meanwhile
from mlc_pipeline.report import html as blocks
from mlc_pipeline.report.copies import DuplicateView, duplicate_groups, review_pairs, review_words, shown_name
from mlc_pipeline.report.html import folded, image_figure, table

log = logging.getLogger(__name__)
thumbnail_uri = blocks.thumbnail_uri      # public here since 0.1
GRID_LIMIT = 48        # thumbnails per label shown open; the label's others are in a folded section
GROUP_LIMIT = 40       # duplicate groups shown
QUARANTINE_LIMIT = 80
# (side px, JPEG quality) of the inline thumbnails: ~4.3 KB each as shown, ~2.3 KB folded (measured
# on real photos; page sizes in docs/collection.md, "The HTML report")
THUMB, FOLDED_THUMB = (112, 75), (80, 60)


# --- catalog -----------------------------------------------------------------------------------
def catalog_summary(catalog: Catalog) -> dict:
    by_label: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in catalog.counts():
        by_label[f"{row['purpose']}/{row['label']}"][row["status"]] += row["n"]
    return {
        "by_label": {k: dict(v) for k, v in by_label.items()},
        "reasons": [dict(r) for r in catalog.reasons()],
        "review_pairs": review_pairs(catalog),      # the files of each review note (it names an id)
        "runs": catalog.runs(10),
        "unreadable_in_folder": unreadable_in_folder(catalog),
    }


def unreadable_in_folder(catalog: Catalog) -> dict:
    """Folder mode: the files of the folder that are no readable image or too large, as the latest
    completed collect found them (`CollectSummary.unreadable`: {"count", "files"}; {} for none). The
    bundled server does not serve them, so no catalog row names them: the collect's record is where
    they last."""
    for run in catalog.runs(100):
        if run["command"] == "collect" and run["status"] == "completed":
            found = json.loads(run["summary"] or "{}").get("unreadable")
            return found if isinstance(found, dict) and found.get("count") else {}
    return {}


def unreadable_lines(found: dict) -> list[str]:
    if not found:
        return []
    more = found["count"] - len(found["files"])
    return ([f"Not collected: {found['count']} file(s) in the folder are no readable image or too large "
             "(latest collect)"]
            + [f"  {f}" for f in found["files"]] + ([f"  ... and {more} more (collect's log names each)"] if more > 0 else []))


def short_sets(cfg: Config, catalog: Catalog) -> list:
    """The sets with fewer usable images than their `count` (collect.Shortfall, one line each)."""
    from mlc_pipeline.collect.sets import last_exhausted, shortfalls
    return shortfalls(cfg, catalog, last_exhausted(catalog))


def format_short_sets(short: list) -> str:
    if not short:
        return "Every set has its count of usable images."
    return "\n".join(["Short sets: fewer usable images than their count"] + [f"  {s.line()}" for s in short])


def run_error(run: dict) -> str:
    """': <why>' for a run that failed, was interrupted or crashed, as its record says (collect
    records the one line it stopped with); '' otherwise."""
    if run["status"] in ("completed", "running"):
        return ""
    try:
        error = json.loads(run["summary"] or "{}").get("error")
    except (ValueError, AttributeError):      # a record written by hand or by an older version
        return ""
    return f": {error}" if error else ""


def format_catalog_summary(summary: dict) -> str:
    statuses = sorted({s for v in summary["by_label"].values() for s in v})
    width = max([len(k) for k in summary["by_label"]] + [12])
    lines = ["Catalog: candidates per set (purpose/label) and status", "",
             f"{'set':<{width}} " + " ".join(f"{s:>10}" for s in statuses) + f" {'total':>8}"]
    for key, counts in sorted(summary["by_label"].items()):
        lines.append(f"{key:<{width}} " + " ".join(f"{counts.get(s, 0):>10}" for s in statuses)
                     + f" {sum(counts.values()):>8}")
    if summary["reasons"]:
        pairs = review_words(summary.get("review_pairs", []))
        lines += ["", "Why (status: reason = count)"]
        lines += [f"  {r['status']}: {r['reason']} = {r['n']}" + (f": {pairs[r['reason']]}" if r["reason"] in pairs else "")
                  for r in summary["reasons"]]
    if summary.get("unreadable_in_folder"):
        lines += [""] + unreadable_lines(summary["unreadable_in_folder"])
    if summary["runs"]:
        lines += ["", "Recent runs"]
        lines += [f"  {r['run_id']} {r['command']:<8} {r['status']}{where(r) if r['status'] == 'running' else ''}"
                  f"{run_error(r)}" for r in summary["runs"]]
    return "\n".join(lines)


# --- dataset versions --------------------------------------------------------------------------
PROBE_GROUP = "(probe)"     # probe rows have no label either; parentheses: never a class name


def diff_group(row: dict) -> str:
    """What a manifest row counts under in a version diff: its labels, "other" for a negative, and
    PROBE_GROUP for a probe (unknown-kind) image, which is not a negative trained on."""
    return row["labels"] or (PROBE_GROUP if row.get("split") == "probe" else "other")


def version_diff(old: list[dict], new: list[dict], reviewed: Iterable[str] = ()) -> dict:
    """Added / removed / relabelled images per label (by source and photo id) between two manifests,
    and those that kept their label but moved between splits ("moved train->valid": a mined negative
    re-split by `mine.calibration_share`, say; a version may differ from the previous one by just
    that); of those, "changed in review" counts the photos ('source:photo_id' in `reviewed`) the
    review app changed."""
    key = lambda r: (r["source"], r["photo_id"])
    reviewed = {tuple(k.split(":", 1)) for k in reviewed}
    old_by, new_by = {key(r): r for r in old}, {key(r): r for r in new}
    out: dict[str, Counter] = defaultdict(Counter)
    for k in new_by.keys() - old_by.keys():
        for label in diff_group(new_by[k]).split():
            out[label]["added"] += 1
            out[label]["changed in review"] += k in reviewed
    for k in old_by.keys() - new_by.keys():
        for label in diff_group(old_by[k]).split():
            out[label]["removed"] += 1
            out[label]["changed in review"] += k in reviewed
    for k in new_by.keys() & old_by.keys():
        was, now = old_by[k], new_by[k]
        if diff_group(now) != diff_group(was):      # its split too, maybe (a probe that trains): one change
            out[diff_group(now)]["relabelled"] += 1
            out[diff_group(now)]["changed in review"] += k in reviewed
        elif was["split"] != now["split"]:
            for label in diff_group(now).split():
                out[label][f"moved {was['split']}->{now['split']}"] += 1
                out[label]["changed in review"] += k in reviewed
    return {label: {k: n for k, n in sorted(c.items(), key=lambda kn: diff_order(kn[0])) if n}
            for label, c in sorted(out.items())}


def diff_order(what: str) -> tuple:
    """added, removed, relabelled, the moves (by split pair), then "changed in review"."""
    return ({"added": 0, "removed": 1, "relabelled": 2}.get(what, 4 if what == "changed in review" else 3), what)


def moves_of(counts: dict) -> str:
    """A label's split moves in a version diff, for a table cell: "train->valid 27" ('' for none)."""
    return ", ".join(f"{k.removeprefix('moved ')} {n}" for k, n in counts.items() if k.startswith("moved "))


def dataset_summary(cfg: Config, version: str | None = None) -> dict | None:
    root = cfg.layout.datasets
    version = version or latest_version(root)
    if not version:
        return None
    folder = root / version
    if not folder.is_dir():
        raise UnknownVersion(withdrawn_meanwhile(root, version) or
                             f"no dataset version {version} under {root} (have: {', '.join(versions(root)) or 'none'})")
    meta, rows = read_version(folder)           # a damaged version: VersionDamaged, one line (exit 3)
    counts, curation = meta.get("counts"), meta.get("curation")
    if not (isinstance(counts, dict) and isinstance(counts.get("per_label_split"), dict)
            and isinstance(counts.get("licenses"), dict) and isinstance(curation, dict)):
        raise damaged_version(folder, "dataset.json lacks its counts")
    previous = meta.get("previous")
    # The label conflicts a version settled are in its dataset.json (builds since 2026-12-06); for an
    # older version, the catalog's now, of the version's images, and said to be so.
    recorded = isinstance(meta.get("conflicts"), list)
    conflicts = meta["conflicts"] if recorded else conflict_rows(cfg, {r["candidate_id"] for r in rows})
    return {"name": cfg.build.name, "version": version, "path": str(folder), "counts": counts,
            "curation": curation, "left_out": built_without(meta), "previous": previous,
            "diff": diff_since(root, previous, rows, meta, cfg.layout.version_listing(previous) if previous else None),
            "conflicts": conflicts, "conflicts_from": "version" if recorded else "catalog", "rows": rows}


# What the build left out of a version although the catalog accepted it (dataset.json's `left_out`,
# builds since 2026-12-07), as `mlc inspect` names each reason.
BUILD_LEFT_OUT = {"licence-not-allowed": "licence not in source.licenses",
                  "class-not-in-config": "class no longer in the config", "file-unusable": "file gone or unreadable",
                  "label-not-in-config": "label of a class no longer in the config (the image is in under its others)",
                  "copy-of-a-test-picture": "a copy of a picture published in test (put back in review, or its twin "
                                            "rejected since) that may never be tested: it would train on a test picture"}


def built_without(meta: dict) -> dict[str, dict]:
    """reason -> {what: count} of the accepted images a version's build left out ({} for none, or a
    version built before dataset.json recorded them)."""
    left = meta.get("left_out")
    return {k: v for k, v in left.items() if isinstance(v, dict) and v} if isinstance(left, dict) else {}


def left_out_lines(s: dict) -> list[str]:
    return [f"{BUILD_LEFT_OUT.get(k, k)}: " + ", ".join(f"{what} {n}" for what, n in v.items())
            for k, v in s.get("left_out", {}).items()]


def diff_since(root: Path, previous: str | None, rows: list[dict], meta: dict,
               listing: Path | None = None) -> dict | None:
    """The changes since the previous version; None when there is none, or it cannot be read (a damaged
    previous version is said in a warning: it is not the one shown). `listing`: that version's manifest
    and dataset.json alone, where the folder is not here (a cache of an object store fetches them)."""
    folder = root / previous if previous else None
    if folder is not None and not folder.is_dir() and listing is not None and listing.is_dir():
        folder = listing
    if folder is None or not folder.is_dir():
        return None
    try:
        _, old = read_version(folder)
    except VersionDamaged as exc:
        log.warning("changes since %s not shown: %s", previous, exc)
        return None
    reviewed = meta.get("review_changed") or ()
    return version_diff(old, rows, reviewed if isinstance(reviewed, list) else ())


def conflict_rows(cfg: Config, candidate_ids: set[str] | None = None) -> list[dict]:
    """The catalog's accepted images whose labels curate settled in a conflict, as it says now (of
    `candidate_ids` only, when given: a version's images, as the manifest writes their ids)."""
    with Catalog(cfg.catalog_path, readonly=True) as catalog:
        return [{"candidate_id": r["id"], "source": r["source"], "photo_id": r["photo_id"], "label": r["label"],
                 "curated_label": r["curated_label"], "resolution": r["reason"]}
                for r in catalog.candidates(status="accepted", reason_prefix="conflict:")
                if candidate_ids is None or str(r["id"]) in candidate_ids]


def format_dataset_summary(s: dict) -> str:
    splits = ("train", "valid", "test", "probe")
    lines = [f"Dataset {s['name']} {s['version']}  ({s['path']})", "",
             f"{'label':<16} " + " ".join(f"{x:>6}" for x in splits)]
    for label, c in s["counts"]["per_label_split"].items():
        lines.append(f"{label:<16} " + " ".join(f"{c.get(x, 0):>6}" for x in splits))
    lines += ["", "Licences: " + ", ".join(f"{k or 'unknown'} {v}" for k, v in sorted(s["counts"]["licenses"].items()))]
    lines += ["", "Left out by curation and review (status: reason = count)"]
    lines += [f"  {k} = {v}" for k, v in sorted(s["curation"].items())] or ["  nothing"]
    if built := left_out_lines(s):
        lines += ["", "Left out by the build (the catalog keeps them: back when the setting allows them)"]
        lines += [f"  {line}" for line in built]
    where = (f"in {s['version']}" if s.get("conflicts_from", "version") == "version" else
             f"(the catalog's now: {s['version']} was built before versions recorded them)")
    lines += ["", f"Label conflicts resolved {where}: {len(s['conflicts'])}"]
    lines += [f"  photo {c['photo_id']}: {c['label']} -> {c['curated_label']} ({c['resolution']})" for c in s["conflicts"][:10]]
    if s["diff"] is not None:
        lines += ["", f"Changes since {s['previous']}"]
        lines += [f"  {label}: " + ", ".join(f"{k} {v}" for k, v in c.items()) for label, c in s["diff"].items()] or ["  none"]
    return "\n".join(lines)


# --- HTML ----------------------------------------------------------------------------------------
CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}h2{border-bottom:1px solid #ccc}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}.grid{display:flex;flex-wrap:wrap;gap:6px}
figure{margin:0;width:116px;font-size:11px;overflow:hidden;overflow-wrap:anywhere}figure img{width:112px;height:112px;object-fit:cover}
.broken{width:112px;height:112px;background:#fdd;display:flex;align-items:center;justify-content:center;text-align:center}
.group{display:flex;gap:6px;margin:8px 0;padding:6px;border:1px solid #eee}small{color:#777}
td.clip{max-width:18em;text-align:left;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
td{overflow-wrap:anywhere}summary{cursor:pointer;color:#036;margin:6px 0}
.small figure{width:84px;font-size:9px}.small figure img,.small .broken{width:80px;height:80px}"""


def html_report(cfg: Config, version: str | None = None, extra_sections: list[str] | None = None) -> str:
    from mlc_pipeline.curate.stage import limits_of     # scipy: only when a page is written
    limits = limits_of(cfg)         # a file over curation's limits is not decoded for its thumbnail
    ds = dataset_summary(cfg, version)
    with Catalog(cfg.catalog_path, readonly=True) as catalog:
        cat = catalog_summary(catalog)
        quarantined = catalog.candidates(status="rejected")
        copies = DuplicateView.read(catalog, {cid: o["include"] for cid, o in overrides(catalog).items()})
        short = short_sets(cfg, catalog)
        taken_down = takedowns_of(catalog)      # the photos removed and the copies a takedown holds
    if ds:      # a photo taken down since the version was built, or held: neither its pixels nor its row here
        kept, gone = taken_down.left_out_of(ds["rows"])
        ds = {**ds, "rows": kept}
    parts = [f"<h1>mlc-pipeline report{' — ' + html.escape(ds['name'] + ' ' + ds['version']) if ds else ''}</h1>"]
    statuses = sorted({s for v in cat["by_label"].values() for s in v})
    parts += ["<h2>Catalog</h2>", table(["set"] + statuses, [[k] + [v.get(s, 0) for s in statuses]
                                                              for k, v in sorted(cat["by_label"].items())])]
    if short:
        parts += ["<h3 id='short-sets'>Short sets: fewer usable images than their count</h3><ul>"]
        parts += [f"<li>{html.escape(s.line())}</li>" for s in short] + ["</ul>"]
    if ds:
        splits = ["train", "valid", "test", "probe"]
        parts += [f"<h2 id='dataset'>Dataset {html.escape(ds['version'])}</h2>",
                  table(["label"] + splits, [[k] + [c.get(s, 0) for s in splits]
                                            for k, c in ds["counts"]["per_label_split"].items()])]
        if built := left_out_lines(ds):
            parts += ["<h3 id='left-out'>Left out by the build (the catalog keeps them)</h3><ul>"]
            parts += [f"<li>{html.escape(line)}</li>" for line in built] + ["</ul>"]
        if ds["diff"] is not None:
            parts += [f"<h3>Changes since {html.escape(ds['previous'])}</h3>",
                      table(["label", "added", "removed", "relabelled", "moved between splits", "changed in review"],
                            [[k, c.get("added", 0), c.get("removed", 0), c.get("relabelled", 0), moves_of(c),
                              c.get("changed in review", 0)] for k, c in ds["diff"].items()])]
        folder = Path(ds["path"])
        groups: dict[str, list[dict]] = defaultdict(list)
        for r in ds["rows"]:
            groups[(r["labels"] or "other") + (" (probe)" if r["split"] == "probe" else "")].append(r)
        parts.append("<h2 id='thumbnails'>Images per label</h2>")
        if gone:
            held = taken_down.held_names(gone)
            names = [photo_name(r) for r in gone]
            names = [n + " (held)" if n in held else n for n in names]
            parts.append(f"<p id='taken-down'>{len(gone)} photo(s) of {html.escape(ds['version'])} taken down since "
                         f"it was built (<code>mlc remove</code>){held_words(held)}{',' if held else ''} are not shown: "
                         f"{html.escape(', '.join(names))}.</p>")
        for label, rows in sorted(groups.items()):
            figs = [image_figure(folder / r["path"], f"{r['split']} · {r['photo_id']}",
                                 *(THUMB if k < GRID_LIMIT else FOLDED_THUMB), limits=limits) for k, r in enumerate(rows)]
            parts.append(f"<h3>{html.escape(label)} <small>{len(rows)} images</small></h3>"
                         f"<div class='grid'>{''.join(figs[:GRID_LIMIT])}</div>")
            if len(figs) > GRID_LIMIT:
                parts.append(folded(f"the other {len(figs) - GRID_LIMIT} images of {html.escape(label)}",
                                    f"<div class='grid small'>{''.join(figs[GRID_LIMIT:])}</div>"))
    parts.append(f"<h2 id='duplicates'>Duplicates removed <small>{len(copies.dups)}</small></h2>")
    # the original files, as the pipeline reads them (upright, on white), within curation's limits
    parts += duplicate_groups(copies, GROUP_LIMIT, limits)
    parts.append(f"<h2 id='quarantine'>Quarantined <small>{len(quarantined)}</small></h2><div class='grid'>")
    # a file refused as too large (or one that crashed a decoder) gets a placeholder: never decoded here
    parts += [image_figure(q["file_path"], f"{shown_name(q)}: {q['reason']}", limits=limits, reason=q["reason"])
              for q in quarantined[:QUARANTINE_LIMIT]]
    parts.append("</div>")
    if cat["unreadable_in_folder"]:
        title, *files = unreadable_lines(cat["unreadable_in_folder"])
        parts += [f"<h3 id='unreadable'>{html.escape(title)}</h3><ul>"]
        parts += [f"<li>{html.escape(f.strip())}</li>" for f in files] + ["</ul>"]
    parts += ["<h2 id='rejections'>Rejections and failures by reason</h2>",
              table(["status", "reason", "count"], [[r["status"], r["reason"], r["n"]] for r in cat["reasons"]
                                                    if r["status"] != "accepted"])]
    pairs = review_words(cat["review_pairs"])
    noted = [[r["reason"], r["n"], pairs.get(r["reason"], "")] for r in cat["reasons"] if r["status"] == "accepted"]
    if noted:   # kept images with a note (label conflicts resolved, review pairs, mined negatives, held for review)
        parts += ["<h3 id='accepted-notes'>Accepted, with a note</h3>", table(["reason", "count", "images"], noted)]
    parts += extra_sections or []
    if ds:
        parts += ["<h2 id='attribution'>Attribution</h2>",
                  table(["image", "title", "author", "licence", "source"],
                        [[r["path"], r["title"], r["owner"], r["license"], r["url"]] for r in ds["rows"]],
                        clip=(1, 2))]
    return ("<!doctype html><html><head><meta charset='utf-8'><title>mlc-pipeline report</title>"
            f"<style>{CSS}</style></head><body>" + "\n".join(parts) + "</body></html>")


def write_html_report(cfg: Config, path: str | Path, version: str | None = None,
                      extra_sections: list[str] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, html_report(cfg, version, extra_sections))
    return path


def inspect_main(cfg: Config, args) -> int:
    with Catalog(cfg.catalog_path, readonly=True) as catalog:
        summary = catalog_summary(catalog)
        short = short_sets(cfg, catalog)
    ds = dataset_summary(cfg, getattr(args, "version", None))
    damage = str(args.damage) if getattr(args, "damage", None) else None     # cmd_inspect's verify_version
    if getattr(args, "json", False):
        out = {"catalog": summary, "dataset": {k: v for k, v in ds.items() if k != "rows"} if ds else None,
               "dataset_damaged": damage, "shortfall": [{**dataclasses.asdict(s), "line": s.line()} for s in short]}
        print(json.dumps(out, indent=2, default=str))
    else:
        print(format_catalog_summary(summary))
        print()
        print(format_short_sets(short))
        print()
        print(format_dataset_summary(ds) if ds else "No dataset version yet: run `mlc build`.")
    if getattr(args, "html", None):
        from mlc_pipeline.report.latest import latest_model_sections
        warn = [f"<p id='damaged'><b>This version is damaged</b>: {html.escape(damage)}</p>"] if damage else []
        path = write_html_report(cfg, args.html, getattr(args, "version", None), warn + latest_model_sections(cfg))
        print(f"\nHTML report: {path}")
    return 0
