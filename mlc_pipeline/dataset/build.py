"""Build: publish the accepted images as a new, immutable dataset version.

  data/datasets/<name>/v<N>/
    images/<label>/<source>-<photo_id>.jpg   re-encoded RGB JPEG, long side <= build.max_side
    manifest.csv                              one row per image: labels, split, source, licence...
    ATTRIBUTION.md                            owner, title, licence and URL of every image
    README.md                                 the dataset card
    SHA256SUMS                                sha256 of every published image (`sha256sum -c` format)
    dataset.json                              parameters, counts, the content fingerprint, SHA256SUMS's digest
  data/datasets/<name>/latest -> v<N>         (and LATEST, a text file, for filesystems without links)

A version is built aside and renamed into place, so a killed build leaves nothing half-published;
earlier versions are never touched; a build identical to the latest version is not published. An
accepted image whose file is gone or unreadable is left out, and on a local data root recorded in the
catalog (`write_images`). An accepted image whose licence `source.licenses` no longer allows (narrowed
since it was collected) is left out too, and counted by licence: the catalog keeps it, so widening the
setting again brings it back (`catalog.labels.licence_allowed`).

A published version is verified before it is used (dataset/verify.py: build, train, inspect, export).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from mlc_pipeline.catalog import Catalog
from mlc_pipeline import progress
from mlc_pipeline.catalog.labels import licence_allowed
from mlc_pipeline.catalog.overrides import build_candidates, review_changed_photos
from mlc_pipeline.catalog.putback import put_back_pairs
from mlc_pipeline.dataset.card import FLICKR_PHOTO_PAGE, attribution, dataset_card, licence_setting
from mlc_pipeline.dataset.splits import own_split, published_splits, settle_splits
from mlc_pipeline.config import RESTRICTED_LICENSES, Config
from mlc_pipeline.fsutil import errors_name, remove_dead_leftovers, sha256_file
from mlc_pipeline.locking import files_lock
from mlc_pipeline.manifest import (PUBLISHED, highest_published, latest_version, point_latest,
                                   recorded_fingerprint, withdrawn_versions, write_manifest)
from mlc_pipeline.images import DECODE_ERRORS, load_rgb
from mlc_pipeline.dataset.verify import SUMS_NAME, VersionDamaged, rows_fingerprint, verify_version

log = logging.getLogger(__name__)


@dataclass
class BuildResult:
    name: str
    version: str
    path: Path
    published: bool                 # False when identical to the latest version
    counts: dict = field(default_factory=dict)
    fingerprint: str = ""
    skipped: dict = field(default_factory=dict)     # accepted images left out, by reason (file gone or unreadable)
    left_out: dict = field(default_factory=dict)    # accepted images of classes no longer in the config, by labels
    not_allowed: dict = field(default_factory=dict)  # accepted images whose licence source.licenses no longer allows


def first_query(queries_json: str | None) -> str:
    """The query that first found a photo (the catalog keeps them all): says which kind a probe is."""
    queries = json.loads(queries_json) if queries_json else []
    return queries[0] if queries else ""


def folder_name(labels: str) -> str:
    """fastai's parent_label reads the folder; a multi-label image sits in 'a+b' (manifest is authoritative)."""
    return "+".join(labels.split()) if labels else "other"


class NothingToBuild(RuntimeError):
    """No image to publish: the data's state, not a bug (one line from the CLI, no traceback)."""


def licence_label(c: dict) -> str:
    """A licence as the build's counts name it: its name from the catalog, else its id's, else "unknown"."""
    if c["license_name"]:
        return c["license_name"]
    if c["license_id"] is None:
        return "unknown"
    return RESTRICTED_LICENSES.get(int(c["license_id"]), f"licence id {c['license_id']}")


def dataset_rows(cfg: Config, catalog: Catalog, left_out: Counter | None = None,
                 not_allowed: Counter | None = None, dropped: Counter | None = None,
                 apart: Counter | None = None) -> list[dict]:
    """Everything accepted for training or probing, with its split (dataset/splits.py: by photo id, or
    the split its picture was published in); pool images (mined negatives, or labelled in review)
    never test: test and probe stay the images every round compares on.

    Labels of classes no longer in the config are dropped: a photo left with none of the config's
    classes is left out (counted in `left_out` by its former labels), not made a negative: the user
    took the class out of the project, not into "other"; a photo that keeps another class counts its
    dropped labels in `dropped` (by label). A photo whose licence `source.licenses` no
    longer allows is left out (counted in `not_allowed` by licence): the catalog keeps it, and
    widening the setting brings it back. An image that may never be tested (mined, or labelled in review)
    whose picture was published in test (put back as "not a duplicate" of its twin, or its twin rejected
    since) is left out (counted in `apart` by labels: dataset/splits.py)."""
    rows = []
    removed_owners = catalog.removed_owners()       # `mlc remove --owner`: later photos stay out too
    # a deed is a web page: what else a source lists (`javascript:`, text, a formula) is no URL of one
    license_urls = {k: url for k, url in catalog.license_urls().items() if url.startswith(("https://", "http://"))}
    for c in build_candidates(catalog):             # accepted, with the review app's decisions applied
        if c["owner"] in removed_owners:
            continue
        if not licence_allowed(c["source"], c["license_id"], cfg.source.licenses):
            if not_allowed is not None:
                not_allowed[licence_label(c)] += 1
            continue
        found = [] if c["curated_label"] in (None, "other") else c["curated_label"].split()
        labels = " ".join(label for label in found if label in cfg.classes)
        if found and not labels:
            if left_out is not None:
                left_out[" ".join(found)] += 1
            continue
        if dropped is not None and len(labels.split()) < len(found):
            dropped.update(label for label in found if label not in cfg.classes)
        split, keeps = own_split(c, cfg.build.split, cfg.mine.calibration_share)
        rows.append({
            "path": f"images/{folder_name(labels) if split != 'probe' else 'probe'}/{c['source']}-{c['photo_id']}.jpg",
            "labels": labels, "split": split, "candidate_id": c["id"], "source": c["source"],
            "photo_id": c["photo_id"], "url": c["url"], "license_id": c["license_id"],
            "license": c["license_name"] or "", "owner": c["owner_name"] or c["owner"] or "",
            "title": c["title"] or "", "date_taken": c["date_taken"] or "", "sha256": c["sha256"],
            "phash": c["phash"], "purpose": "pool" if c["from_pool"] else c["purpose"],
            "mined_round": "" if c["mined_round"] is None else c["mined_round"],
            "query": first_query(c["queries"]), "source_file": c["source_file"] or "", "_file": c["file_path"],
            "license_url": license_urls.get(c["license_id"], "") if c["license_id"] is not None else "",
            "page": photo_page(c),
            "_conflict": c["label"] if (c["reason"] or "").startswith("conflict:") else None, "_reason": c["reason"],
            "_splits": keeps})
    in_rows = {r["candidate_id"] for r in rows}
    dropped_for: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for d in catalog.candidates(status="duplicate"):
        if d["duplicate_of"] is not None and d["id"] not in in_rows:
            dropped_for[d["duplicate_of"]].append((d["source"], d["photo_id"]))
    put_back = [p for p in put_back_pairs(catalog) if p["copy"] in in_rows]    # each takes its twin's split
    for p in put_back:
        dropped_for[p["copy"]].append((p["source"], p["photo_id"]))
    gone: list[dict] = []
    listings = cfg.layout.version_listing("v0").parent     # the manifests alone of an object store's versions
    if moved := settle_splits(rows, published_splits(cfg.layout.datasets, listings), dropped_for,
                              [(p["copy"], p["twin"]) for p in put_back], gone):
        log.info("%d image(s) keep the split their picture was published in, not their own photo id's", moved)
    if gone:
        log.warning("%d image(s) left out: a copy of a picture published in test (put back in review as "
                    "another picture, or its twin rejected since); they can never be tested, and one picture is "
                    "never in train and test (candidates %s)",
                    len(gone), ", ".join(str(r["candidate_id"]) for r in gone[:10]))
        if apart is not None:
            apart.update(r["labels"] or "other" for r in gone)
    return sorted(rows, key=lambda r: r["path"])


def photo_page(c: dict, flickr_pages: bool = True) -> str:
    """Where a person sees the photo and its owner: its page at the real Flickr, or the `photo_page` a
    URL list gave (kept as `source_file`); "" when none is known (a folder, the bundled server: neither
    has photo pages). A photo is the real Flickr's when its image is on Flickr's servers: a mirror's or
    the bundled server's ids name no photo there. (Until 2026-12-07 the build's rest_url decided: with
    www.flickr.com's endpoint, or a proxy's, no photo had a page: audit collect27 D7.)"""
    if flickr_pages and c["source"] == "flickr" and c["owner"] and on_flickr(c["url"]):
        return FLICKR_PHOTO_PAGE.format(owner=c["owner"], photo_id=c["photo_id"])
    given = c["source_file"] or ""
    return given if c["source"] == "urls" and given.startswith(("https://", "http://")) else ""


def on_flickr(url: str | None) -> bool:
    parts = urlsplit(url or "")
    host = (parts.hostname or "").lower()
    return parts.scheme == "https" and (host == "staticflickr.com" or host.endswith(".staticflickr.com"))


def label_conflicts(rows: list[dict]) -> list[dict]:
    """The version's images whose labels curate settled in a conflict (a photo found under two labels),
    as dataset.json keeps them: `mlc inspect --version vN` shows that version's, not the catalog's now."""
    return [{"candidate_id": r["candidate_id"], "source": r["source"], "photo_id": r["photo_id"],
             "label": r["_conflict"], "curated_label": r["labels"] or "other", "resolution": r["_reason"]}
            for r in rows if r["_conflict"] is not None]


def fingerprint(rows: list[dict], cfg: Config) -> str:
    return rows_fingerprint(rows, cfg.build.max_side, cfg.build.jpeg_quality, cfg.build.jpeg_subsampling)


def count_rows(rows: list[dict]) -> dict:
    per_label: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        for label in (r["labels"].split() or ["(none: other)"]):
            per_label[label][r["split"]] += 1
    return {"images": len(rows), "per_label_split": {k: dict(v) for k, v in sorted(per_label.items())},
            "licenses": dict(Counter(r["license"] for r in rows)),
            "restricted_licenses": dict(Counter(r["license"] or RESTRICTED_LICENSES[int(r["license_id"])] for r in rows
                                                if r["license_id"] not in (None, "") and
                                                int(r["license_id"]) in RESTRICTED_LICENSES))}


def curation_counts(catalog: Catalog) -> dict:
    out: Counter = Counter()
    for r in catalog.reasons(dataset_only=True):     # not the mining pool's: never dataset candidates
        if r["status"] in ("rejected", "duplicate", "failed", "skipped"):
            out[f"{r['status']}: {r['reason'].split(':')[0]}"] += r["n"]
    return dict(out)


def write_sums(folder: Path, rows: list[dict]) -> str:
    """SHA256SUMS of the published images; returns the digest of that file (kept in dataset.json)."""
    lines = "".join(f"{sha256_file(folder / r['path'])}  {r['path']}\n" for r in rows)
    (folder / SUMS_NAME).write_text(lines)
    return hashlib.sha256(lines.encode()).hexdigest()


def remove_stale_builds(root: Path) -> list[Path]:
    """Drop `.build-<version>-<pid>[-<id>]` folders whose writer is dead (a killed build: never
    published). A live writer's folder is never touched, whoever it belongs to."""
    return remove_dead_leftovers([p for p in root.glob(".build-*") if p.is_dir()],
                                 lambda p: p.name.split("-")[2] if p.name.count("-") >= 2 else "")


def build_dataset(cfg: Config, repair: bool = False) -> BuildResult:
    """Publish the catalog's accepted images as a new version, unless identical to the latest one.

    The latest version is verified before it is called identical: a damaged one is a VersionDamaged
    error, or with `repair` the reason to publish a fresh version from the catalog.
    """
    with files_lock(cfg.data_dir, "build"):      # it copies files: no takedown deletes one meanwhile
        return _build_dataset(cfg, repair)


def _build_dataset(cfg: Config, repair: bool) -> BuildResult:
    name = cfg.build.name
    root = cfg.layout.datasets
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_builds(root)
    left_out, not_allowed, dropped, apart = Counter(), Counter(), Counter(), Counter()
    with Catalog(cfg.catalog_path) as catalog:
        rows = dataset_rows(cfg, catalog, left_out, not_allowed, dropped, apart)
        curation = curation_counts(catalog)
        reviewed = review_changed_photos(catalog)   # the version diff says which changes came from review
    if left_out:
        log.warning("%d accepted image(s) left out: their classes are no longer in the config (%s); add a "
                    "class back to include its images again", sum(left_out.values()),
                    ", ".join(f"{k} {n}" for k, n in sorted(left_out.items())))
    if not_allowed:
        log.warning("%d accepted image(s) left out: source.licenses (%s) does not allow their licence (collected "
                    "under an earlier setting: %s); the catalog keeps them: widen source.licenses to include them "
                    "again", sum(not_allowed.values()), licence_setting(cfg),
                    ", ".join(f"{k} {n}" for k, n in sorted(not_allowed.items())))
    if not rows:
        if not_allowed:
            raise NothingToBuild(f"nothing to build: every accepted image's licence is one source.licenses "
                                 f"({licence_setting(cfg)}) does not allow ({dict(sorted(not_allowed.items()))})")
        raise NothingToBuild("nothing to build: no accepted images in the catalog (run collect and curate first)")
    fp = fingerprint(rows, cfg)
    previous = latest_version(root)
    counts = count_rows(rows)
    if same_as_published(root, previous, fp, repair, rows):
        return summarised(BuildResult(name, previous, root / previous, False, counts, fp, left_out=dict(left_out),
                                      not_allowed=dict(not_allowed)))
    tmp = root / f".build-{previous or 'v0'}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with errors_name(root, tmp):     # ENOSPC, read-only: name the datasets folder
            tmp.mkdir()
            unusable = write_images(cfg, tmp, rows)
            skipped = dict(Counter(reason.split(":")[1] for reason in unusable.values()))   # file-missing, ...
            if unusable:        # left out, recorded in the catalog: the rest is built without them
                rows = [r for r in rows if r["candidate_id"] not in unusable]
                if not rows:
                    raise NothingToBuild(f"nothing to build: no accepted image's file could be read ({skipped})")
                fp, counts = fingerprint(rows, cfg), count_rows(rows)
                if same_as_published(root, previous, fp, repair, rows):
                    return summarised(BuildResult(name, previous, root / previous, False, counts, fp, skipped,
                                                  dict(left_out), dict(not_allowed)))
            warn_if_withdrawn(root, fp)
            write_manifest(tmp / "manifest.csv", rows)
            files_sha256 = write_sums(tmp, rows)
            version = f"v{highest_published(root) + 1}"     # never the name of a version withdrawn (deleted)
            while True:
                while (root / version).exists():            # never overwrite, whatever LATEST says
                    version = f"v{int(version[1:]) + 1}"
                (tmp / "ATTRIBUTION.md").write_text(attribution(rows, version))
                (tmp / "README.md").write_text(dataset_card(name, version, cfg, counts, curation, previous,
                                                            dict(not_allowed), dict(left_out), dict(dropped)))
                meta = {"name": name, "version": version, "previous": previous, "fingerprint": fp,
                        "files_sha256": files_sha256, "counts": counts, "curation": curation,
                        "review_changed": reviewed, "conflicts": label_conflicts(rows), "created_at": time.time(),
                        "left_out": {"licence-not-allowed": dict(sorted(not_allowed.items())),
                                     "class-not-in-config": dict(sorted(left_out.items())),
                                     "label-not-in-config": dict(sorted(dropped.items())),
                                     "copy-of-a-test-picture": dict(sorted(apart.items())),
                                     "file-unusable": skipped},
                        "params": {"build": cfg.build.model_dump(), "curate": cfg.curate.model_dump(),
                                   "source": {"licenses": cfg.source.licenses}}}
                (tmp / "dataset.json").write_text(json.dumps(meta, indent=2, default=str))
                try:
                    os.rename(tmp, root / version)         # the publish: atomic on one filesystem
                    break
                except OSError:
                    if not (root / version).exists():       # not a name taken meanwhile: a real error
                        raise
                    log.info("version %s was published meanwhile by another build; taking the next number", version)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    with open(root / PUBLISHED, "a") as ledger:     # appended after the publish: the folder is the truth
        ledger.write(f"{version} {fp} {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
    point_latest(root, version)
    return summarised(BuildResult(name, version, root / version, True, counts, fp, skipped, dict(left_out),
                                  dict(not_allowed)))


def warn_if_withdrawn(root: Path, fp: str) -> None:
    """A build holding exactly what a withdrawn version held (the verify21 audit: rebuilt with the config
    that caused the withdrawal, it was published again in silence): said, not refused (a withdrawal
    made by mistake is undone this way)."""
    for version, record in withdrawn_versions(root).items():
        if record["fingerprint"] == fp:
            log.warning("this build holds exactly what %s held, withdrawn on %s (%s): it is published as a new "
                        "version all the same; if %s was withdrawn for its contents, fix what made them first",
                        version, record["at"], record["reason"] or "no reason given", version)


def same_as_published(root: Path, previous: str | None, fp: str, repair: bool, rows: list[dict]) -> bool:
    """Whether the latest version, verified, already holds these rows (then `latest` points at it).
    A damaged one is VersionDamaged, or with `repair` a reason to publish a fresh version. Attribution
    is no part of the fingerprint: a changed one (a photo page found, an owner renamed) publishes a
    version with the same images (a rebuild said "unchanged" and kept the old: audit collect27 D7)."""
    if not previous or recorded_fingerprint(root / previous) not in (fp, None):    # None: verify says why
        return False
    try:
        verify_version(root / previous)
    except VersionDamaged as exc:
        if not repair:
            raise
        log.warning("%s: publishing a fresh version from the catalog", exc)
        return False
    held = root / previous / "ATTRIBUTION.md"
    if held.is_file() and held.read_text() != attribution(rows, previous):
        log.info("%s holds these images, but their attribution (title, author, licence, source) has changed: "
                 "publishing a new version", previous)
        return False
    point_latest(root, previous)
    return True


def write_images(cfg: Config, folder: Path, rows: list[dict]) -> dict[int, str]:
    """Write every row's image under `folder`. A file that is gone or no longer decodes is left out
    and, on a local data root, recorded in the catalog as curate records a missing file
    (`transient:file-missing`, or `transient:file-unreadable:<Exc>`: the next collect downloads it
    again); returns those rows' candidate id -> reason."""
    unusable: dict[int, str] = {}
    with progress.bar("build: write images", total=len(rows)) as bar:
        for r in rows:
            try:
                image = load_rgb(r["_file"], max_side=cfg.build.max_side)
            except FileNotFoundError:
                unusable[r["candidate_id"]] = "transient:file-missing"
            except DECODE_ERRORS as exc:           # changed or damaged on disk since curation accepted it
                unusable[r["candidate_id"]] = f"transient:file-unreadable:{type(exc).__name__}"
            else:
                (folder / r["path"]).parent.mkdir(parents=True, exist_ok=True)
                image.save(folder / r["path"], "JPEG", quality=cfg.build.jpeg_quality,
                           subsampling=cfg.build.jpeg_subsampling)     # its colours in sRGB: no profile needed
            bar.advance()
    for r in (r for r in rows if r["candidate_id"] in unusable):
        log.warning("candidate %s: %s: %s; left out of this version", r["candidate_id"], r["_file"],
                    unusable[r["candidate_id"]])
    # On an object-store data root the cache holds only what has been published: a file another
    # machine accepted but has not published yet is missing here and fine there, so a shared catalog
    # is not told it failed (that machine's next publish brings it; the next build includes it).
    if unusable and cfg.data_url is None:
        with Catalog(cfg.catalog_path) as catalog:
            for cid, reason in unusable.items():
                catalog.set_status(cid, "failed", reason, None, "build")
    return unusable


def summarised(res: BuildResult) -> BuildResult:
    """Print the build's one-screen summary (when progress is shown) and return `res`."""
    splits = ("train", "valid", "test", "probe")
    progress.summary(f"build {res.name} {res.version}: {'published' if res.published else 'unchanged'}", [
        ("folder", res.path), ("images", res.counts["images"]),
        ("skipped (file gone or unreadable here)", res.skipped),
        ("left out (classes no longer in the config)", res.left_out),
        ("left out (licence not in source.licenses)", res.not_allowed)] + [
        (label, " ".join(f"{s} {c.get(s, 0)}" for s in splits)) for label, c in res.counts["per_label_split"].items()])
    return res
