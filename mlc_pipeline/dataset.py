"""Build: publish the accepted images as a new, immutable dataset version.

  data/datasets/<name>/v<N>/
    images/<label>/<source>-<photo_id>.jpg   re-encoded RGB JPEG, long side <= build.max_side
    manifest.csv                              one row per image: labels, split, source, licence...
    ATTRIBUTION.md                            owner, title, licence and URL of every image
    README.md                                 the dataset card
    dataset.json                              parameters, counts and the content fingerprint
  data/datasets/<name>/latest -> v<N>         (and LATEST, a text file, for filesystems without links)

A version is built aside and renamed into place, so a killed build leaves nothing half-published;
earlier versions are never touched; a build identical to the latest version is not published.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .catalog import Catalog
from .config import Config
from .verify import load_rgb

MANIFEST_COLUMNS = ["path", "labels", "split", "candidate_id", "source", "photo_id", "url", "license_id",
                    "license", "owner", "title", "date_taken", "sha256", "phash", "purpose", "mined_round",
                    "query"]
SPLITS = ("train", "valid", "test")


@dataclass
class BuildResult:
    name: str
    version: str
    path: Path
    published: bool                 # False when identical to the latest version
    counts: dict = field(default_factory=dict)
    fingerprint: str = ""


def split_of(source: str, photo_id: str, fractions: dict[str, float]) -> str:
    """Deterministic by photo, so an image never changes split between versions."""
    h = int.from_bytes(hashlib.sha256(f"{source}:{photo_id}".encode()).digest()[:8], "big") / 2 ** 64
    total = sum(fractions.get(s, 0) for s in SPLITS)
    edge = 0.0
    for s in SPLITS:
        edge += fractions.get(s, 0) / total
        if h < edge:
            return s
    return SPLITS[-1]


def first_query(queries_json: str | None) -> str:
    """The query that first found a photo (the catalog keeps them all): says which kind a probe is."""
    queries = json.loads(queries_json) if queries_json else []
    return queries[0] if queries else ""


def folder_name(labels: str) -> str:
    """fastai's parent_label reads the folder; a multi-label image sits in 'a+b' (manifest is authoritative)."""
    return "+".join(labels.split()) if labels else "other"


def dataset_rows(cfg: Config, catalog: Catalog) -> list[dict]:
    """Everything accepted for training or probing, with its split; mined negatives train only."""
    rows = []
    removed_owners = catalog.removed_owners()       # `mlc remove --owner`: later photos stay out too
    for c in catalog.candidates("status='accepted' AND purpose IN ('train', 'probe')"):
        if c["owner"] in removed_owners:
            continue
        labels = "" if c["curated_label"] in (None, "other") else c["curated_label"]
        if c["purpose"] == "probe":
            split = "probe"
        elif c["mined_round"] is not None:
            split = "train"          # hard negatives are for learning; evaluation sets stay fixed
        else:
            split = split_of(c["source"], c["photo_id"], cfg.build.split)
        rows.append({
            "path": f"images/{folder_name(labels) if split != 'probe' else 'probe'}/{c['source']}-{c['photo_id']}.jpg",
            "labels": labels, "split": split, "candidate_id": c["id"], "source": c["source"],
            "photo_id": c["photo_id"], "url": c["url"], "license_id": c["license_id"],
            "license": c["license_name"] or "", "owner": c["owner_name"] or c["owner"] or "",
            "title": c["title"] or "", "date_taken": c["date_taken"] or "", "sha256": c["sha256"],
            "phash": c["phash"], "purpose": c["purpose"],
            "mined_round": "" if c["mined_round"] is None else c["mined_round"],
            "query": first_query(c["queries"]), "_file": c["file_path"]})
    return sorted(rows, key=lambda r: r["path"])


def fingerprint(rows: list[dict], cfg: Config) -> str:
    h = hashlib.sha256(json.dumps([cfg.build.max_side, cfg.build.jpeg_quality], sort_keys=True).encode())
    for r in rows:
        h.update(f"{r['path']}|{r['labels']}|{r['split']}|{r['sha256']}|{r['license_id']}\n".encode())
    return h.hexdigest()


def versions(root: Path) -> list[str]:
    found = [p.name for p in root.glob("v*") if p.is_dir() and p.name[1:].isdigit()]
    return sorted(found, key=lambda v: int(v[1:]))


def latest_version(root: Path) -> str | None:
    """The newest complete version. A version folder only ever appears whole (rename), so the
    pointer files are derived from the folders, and a build killed between the rename and the
    pointer update is repaired by the next build."""
    vs = [v for v in versions(root) if (root / v / "dataset.json").exists()]
    return vs[-1] if vs else None


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def point_latest(root: Path, version: str) -> None:
    link_tmp = root / f".latest.tmp-{os.getpid()}"
    if link_tmp.is_symlink() or link_tmp.exists():
        link_tmp.unlink()
    link_tmp.symlink_to(version, target_is_directory=True)
    os.replace(link_tmp, root / "latest")
    write_text_atomic(root / "LATEST", version + "\n")


def write_manifest(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, MANIFEST_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def read_manifest(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def count_rows(rows: list[dict]) -> dict:
    per_label: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        for label in (r["labels"].split() or ["(none: other)"]):
            per_label[label][r["split"]] += 1
    return {"images": len(rows), "per_label_split": {k: dict(v) for k, v in sorted(per_label.items())},
            "licenses": dict(Counter(r["license"] for r in rows))}


def attribution(rows: list[dict], version: str) -> str:
    lines = [f"# Attribution — dataset {version}", "",
             "Every image, its author, title, licence and source, as the CC licences require.", "",
             "| image | title | author | licence | source |", "|---|---|---|---|---|"]
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
    for r in rows:
        lines.append(f"| {r['path']} | {esc(r['title'])} | {esc(r['owner'])} | {esc(r['license'])} | {esc(r['url'])} |")
    return "\n".join(lines) + "\n"


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
              f"max aspect {cfg.curate.max_aspect}", "", "## What curation removed", ""]
    lines += [f"- {k}: {v}" for k, v in sorted(curation.items())] or ["- nothing"]
    lines += ["", "`labels` empty = an \"other\" image (a negative for every class). Split `probe` = kinds under",
              "no training query, used only to measure how often the unknown is accepted.", ""]
    return "\n".join(lines)


def curation_counts(catalog: Catalog) -> dict:
    out: Counter = Counter()
    for r in catalog.reasons():
        if r["status"] in ("rejected", "duplicate", "failed", "skipped"):
            out[f"{r['status']}: {r['reason'].split(':')[0]}"] += r["n"]
    return dict(out)


def build_dataset(cfg: Config) -> BuildResult:
    name = cfg.build.name
    root = cfg.data_dir / "datasets" / name
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".build-*"):          # a killed build: never published, safe to drop
        shutil.rmtree(stale)
    with Catalog(cfg.catalog_path) as catalog:
        rows = dataset_rows(cfg, catalog)
        curation = curation_counts(catalog)
    if not rows:
        raise RuntimeError("nothing to build: no accepted images in the catalog (run collect and curate first)")
    fp = fingerprint(rows, cfg)
    previous = latest_version(root)
    counts = count_rows(rows)
    if previous and (root / previous / "dataset.json").exists():
        if json.loads((root / previous / "dataset.json").read_text()).get("fingerprint") == fp:
            point_latest(root, previous)
            return BuildResult(name, previous, root / previous, False, counts, fp)
    version = f"v{int(previous[1:]) + 1 if previous else 1}"
    while (root / version).exists():                # never overwrite, whatever LATEST says
        version = f"v{int(version[1:]) + 1}"
    tmp = root / f".build-{version}-{os.getpid()}"
    tmp.mkdir()
    for r in rows:
        dest = tmp / r["path"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        load_rgb(r["_file"], max_side=cfg.build.max_side).save(dest, "JPEG", quality=cfg.build.jpeg_quality)
    write_manifest(tmp / "manifest.csv", rows)
    (tmp / "ATTRIBUTION.md").write_text(attribution(rows, version))
    (tmp / "README.md").write_text(dataset_card(name, version, cfg, counts, curation, previous))
    meta = {"name": name, "version": version, "previous": previous, "fingerprint": fp, "counts": counts,
            "curation": curation, "created_at": time.time(),
            "params": {"build": cfg.build.model_dump(), "curate": cfg.curate.model_dump()}}
    (tmp / "dataset.json").write_text(json.dumps(meta, indent=2, default=str))
    os.rename(tmp, root / version)                 # the publish: atomic on one filesystem
    point_latest(root, version)
    return BuildResult(name, version, root / version, True, counts, fp)
