"""The dataset versions of an object-store data root: publish a cache's versions, fetch the store's,
and withdraw one (`mlc withdraw`) so that no cache ever publishes it again.

What the store holds for a version, under datasets/<name>/vN/:
  ...files...        the version's files, uploaded after the folder is claimed (.claim, a conditional write)
  _COMPLETE          its marker, written last: the version is published (the highest is `latest`)
  _WITHDRAWN         a tombstone, written first by a withdrawal, which then deletes the marker and the
                     files; the tombstone and the claim stay, so that the name is never given again

Every fetch of versions and every publish reads the tombstones: a cache drops its copy of a version
withdrawn elsewhere (when it is that version: same fingerprint) and keeps the name in its ledgers,
so a build there numbers past it; a cache's version under a withdrawn name is never published.

A version reads the same from every cache: the store's files are the version's. Two machines that
built the same version at once (the same images: one fingerprint, one claim, one marker) each wrote
their own dataset.json (`created_at`) and README.md (its "Built" line); the one that finds the version
in the store when it publishes, or fetches it over its own copy, takes the store's top-level files
where their bytes differ (`adopt_store_files`; the images are the fingerprint's). A version this cache
published, fetched or adopted is recorded in the sync state (`versions_synced`) and not compared again.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import shutil
import socket
import time
from pathlib import Path

from mlc_pipeline.config import Config
from mlc_pipeline.manifest import (VERSION_META, VersionMetaUnreadable, read_version_meta, recorded_fingerprint,
                                   versions as local_versions)
from mlc_pipeline.objectstore import (CLAIM, MARKER, ObjectStoreError, Store, claim_folder, missing_files, pull_folder,
                                      push_folder, read_marker, same_bytes)
from mlc_pipeline.storestate import read_state, write_state
from mlc_pipeline.withdrawal import repoint_latest, withdraw_folder

log = logging.getLogger(__name__)
VERSION_RE = re.compile(r"^v\d+$")
TOMBSTONE = "_WITHDRAWN"


def version_key(cfg: Config, version: str) -> str:
    return f"datasets/{cfg.build.name}/{version}"


def remote_versions(store: Store, cfg: Config) -> list[str]:
    """The versions in the store that have their marker and no tombstone, oldest first (the last is
    `latest`): a withdrawal killed between its tombstone and the marker's deletion is withdrawn all the
    same (the verify21 audit: other caches fetched it again, and trained on it)."""
    found = [v for v in store_version_names(store, cfg) if store.info(f"{version_key(cfg, v)}/{MARKER}")
             and not store.info(f"{version_key(cfg, v)}/{TOMBSTONE}")]
    return sorted(found, key=lambda v: int(v[1:]))


def store_version_names(store: Store, cfg: Config) -> list[str]:
    "The vN folders under datasets/<name>/ in the store, whatever they hold."
    try:
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in store.fs.ls(store.path(f"datasets/{cfg.build.name}"),
                                                                        detail=False)]
    except FileNotFoundError:
        return []
    return [v for v in names if VERSION_RE.match(v)]


def push_versions(store: Store, cfg: Config) -> list[str]:
    """Publish the cache's complete versions the store lacks. A store version of the same number with
    other contents (built meanwhile on another machine) is a conflict: one line, nothing overwritten."""
    pushed = []
    for version in local_versions(cfg.layout.datasets):
        folder = cfg.layout.version(version)
        if not (folder / VERSION_META).exists():
            continue
        meta, key = version_meta(folder), version_key(cfg, version)
        if (stone := read_tombstone(store, key)) is not None:       # even with its marker left (a killed withdrawal)
            if stone.get("fingerprint") in (None, meta.get("fingerprint")):     # withdrawn since drop_withdrawn ran
                withdraw_folder(cfg.layout.datasets, version, stone.get("reason") or "withdrawn",
                                stone.get("fingerprint"), stone.get("at"))
                continue
            raise ObjectStoreError(
                f"{store.url}/{key} was withdrawn ({stone.get('reason') or 'no reason given'}): this cache's "
                f"{version} is another build under that name and is not published; {set_aside(cfg, version)}: {REBUILD}")
        marker = read_marker(store, key)
        if marker is not None and marker.get("fingerprint") == meta.get("fingerprint"):
            adopt_store_files(store, cfg, version)      # built here too: the store's copy is the version
            continue
        if marker is None:
            refuse_foreign_folder(store, key, folder)
        other = marker or claim_folder(store, key, meta.get("fingerprint"))
        if other is not None:
            by = "" if marker else f", claimed by {other.get('host')} {int(time.time() - other.get('at', 0)) // 60} min ago"
            raise ObjectStoreError(
                f"{store.url}/{key} holds, or is receiving, another build's {version} (built meanwhile on another "
                f"machine{by}): this cache's {version} is not published; {set_aside(cfg, version)}: {REBUILD}")
        push_folder(store, folder, key, {"version": version, "fingerprint": meta.get("fingerprint"),
                                         "files_sha256": meta.get("files_sha256")}, prune=True)
        synced(cfg, version, meta.get("fingerprint"))
        pushed.append(version)
        log.info("dataset %s %s published to %s", cfg.build.name, version, store.url)
    return pushed


UNPUBLISHED = ".unpublished-"    # datasets/<name>/.unpublished-vN-<time>: a cache's vN the store refused


REBUILD = "run `mlc build` again, which builds the next version from the catalog"


def set_aside(cfg: Config, version: str, repoint: bool = True) -> str:
    """The cache's own `version`, which the store will not take (another build holds that name there),
    renamed out of the versions and kept: "it is kept aside as <folder> ...". Left in place, every rerun
    met it again until the user moved it by hand (the beyond28 audit); the next build numbers past it,
    from the catalog, and the next fetch brings the store's version of that name (`repoint`: False where
    that fetch follows at once, so `latest` stays on the name). A rename that fails is its own line."""
    root, folder = cfg.layout.datasets, cfg.layout.version(version)
    aside = root / f"{UNPUBLISHED}{version}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    try:
        os.rename(folder, aside)
    except OSError as exc:
        raise ObjectStoreError(f"this cache's {version} is not the store's and is not published; it could not be "
                               f"set aside ({exc}): move {folder} aside by hand, then rerun") from None
    if repoint:
        repoint_latest(root, version)
    return f"it is kept aside as {aside} (delete it when you no longer need it)"


def refuse_foreign_folder(store: Store, key: str, folder: Path) -> None:
    """A version folder in the store with objects but neither a marker nor a claim was not published
    by mlc (a local data root copied in by hand, `aws s3 sync`): publishing over it replaced a copied
    v1 with other contents (the scale26 audit). Refused in one line; docs/orchestration.md says how to
    move a local data root to a store."""
    held = store.listing(key)
    if held and f"{key}/{CLAIM}" not in held:
        raise ObjectStoreError(
            f"{store.url}/{key} holds {len(held)} object(s) but no {MARKER} marker and no claim: not a version "
            f"mlc published (a data root copied in by hand?). This cache's {folder} is not published over it. "
            f"To move a local data root to a store, see docs/orchestration.md (\"Moving a local data root to "
            f"an object store\"); debris of an old upload: delete those objects, then rerun")


def version_meta(folder: Path) -> dict:
    """A cached version's dataset.json; a missing, unreadable or non-object one is the version damaged,
    said in one line with the way out."""
    try:
        return read_version_meta(folder)
    except VersionMetaUnreadable as exc:
        raise ObjectStoreError(f"dataset version {folder} is damaged ({exc.problem}): not published nor "
                               f"compared; move it aside (or `mlc build --repair` for the latest)") from None


def pull_version(store: Store, cfg: Config, version: str | None = None) -> str | None:
    """Fetch a version (default: the store's latest) into the cache unless complete there."""
    version = version or (remote_versions(store, cfg) or [None])[-1]
    if version is None:
        return None
    key, folder = version_key(cfg, version), cfg.layout.version(version)
    marker = None if store.info(f"{key}/{TOMBSTONE}") else read_marker(store, key)     # withdrawn: not fetched
    if marker is None:
        return version if folder.exists() else None     # not published (yet): the cache's own, if any
    had = (folder / VERSION_META).exists()
    if had and version_meta(folder).get("fingerprint") != marker.get("fingerprint"):
        log.warning("the cache's %s is not the version %s/%s holds (built here but never published?): %s; the "
                    "store's is fetched", version, store.url, key, set_aside(cfg, version, repoint=False))
        had = False
    if pull_folder(store, key, folder, marker):
        log.info("dataset %s %s fetched from %s", cfg.build.name, version, store.url)
    if had:
        adopt_store_files(store, cfg, version)      # a copy built here (its publish refused, or from before)
    else:
        synced(cfg, version, marker.get("fingerprint"))
    return version


def synced(cfg: Config, version: str, fingerprint: str | None) -> None:
    "The cache's `version` recorded as the store's, file for file (published, fetched or adopted from here)."
    known = read_state(cfg).get("versions_synced", {})
    if known.get(version) != fingerprint:
        write_state(cfg, versions_synced={**known, version: fingerprint})


def adopt_store_files(store: Store, cfg: Config, version: str) -> list[str]:
    """The cache's copy of a version the store holds, built here too (the same fingerprint): its
    top-level files whose bytes are not the store's (dataset.json, README.md) replaced by the store's,
    so that every cache shows the version's own created_at and card. Once per version (the sync state);
    the names of the files replaced."""
    folder, key = cfg.layout.version(version), version_key(cfg, version)
    fingerprint = recorded_fingerprint(folder)
    if read_state(cfg).get("versions_synced", {}).get(version) == fingerprint:
        return []
    try:
        top = {p["name"].rstrip("/").rsplit("/", 1)[-1]: p for p in store.fs.ls(store.path(key), detail=True)
               if p.get("type") == "file"}
    except FileNotFoundError:
        return []
    own = {p.name: p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name in top}
    differ = sorted(rel for rel, p in own.items() if not same_bytes(store, p, f"{key}/{rel}", top[rel]))
    store.download([(f"{key}/{rel}", folder / rel) for rel in differ])
    if differ:
        log.info("dataset %s %s: this cache built the version %s holds; its %s replaced by the store's",
                 cfg.build.name, version, store.url, ", ".join(differ))
    synced(cfg, version, fingerprint)
    return differ


LISTING_FILES = ("manifest.csv", VERSION_META)


def pull_previous_listing(store: Store, cfg: Config, version: str) -> str | None:
    """`mlc inspect` of `version` from a cache that lacks the version before it: that version's
    manifest.csv and dataset.json (all its changes are counted from) fetched beside the versions
    (layout.version_listing), not its images; the previous version's name, None when there is none
    to count from (the first version, a withdrawn one, or one the cache holds whole)."""
    try:
        previous = read_version_meta(cfg.layout.version(version)).get("previous")
    except VersionMetaUnreadable:
        return None                 # inspect says what is wrong with the version itself
    if not isinstance(previous, str) or not VERSION_RE.match(previous) or cfg.layout.version(previous).is_dir():
        return None
    return previous if pull_listing(store, cfg, previous) is not None else None


def pull_listing(store: Store, cfg: Config, version: str) -> bool | None:
    """A version's manifest.csv and dataset.json alone, into layout.version_listing(version), unless
    there: True when fetched, False when there already, None when the store publishes no such version
    (withdrawn, unmarked, or a marker from before it named its files)."""
    key, listing = version_key(cfg, version), cfg.layout.version_listing(version)
    marker = None if store.info(f"{key}/{TOMBSTONE}") else read_marker(store, key)
    if marker is None or not all(name in marker["files"] for name in LISTING_FILES):
        return None
    todo = missing_files(key, listing, {name: marker["files"][name] for name in LISTING_FILES})
    store.download(todo)
    return bool(todo)


def pull_listings(store: Store, cfg: Config) -> list[str]:
    """`mlc build`: the listing of every published version the cache does not hold whole, so that a
    picture keeps the split any version published it in (dataset/splits.py) whatever the cache holds
    (review29 finding 6: a build from a fresh cache split by the latest version alone). The manifests
    only, never the images; each fetched once. The versions whose listing was fetched."""
    return [v for v in remote_versions(store, cfg)
            if not cfg.layout.version(v).is_dir() and pull_listing(store, cfg, v)]


def remote_versions_with(store: Store, cfg: Config, photos: set[tuple[str, str]]) -> dict[str, list[str]]:
    """version -> photo ids of `photos` (source, photo_id) that the store's published version lists, read
    from each manifest in the store: a takedown names them without fetching every version whole."""
    out = {}
    for version in remote_versions(store, cfg):
        text = store.read_text(f"{version_key(cfg, version)}/manifest.csv") or ""
        held = sorted(r["photo_id"] for r in csv.DictReader(io.StringIO(text)) if (r["source"], r["photo_id"]) in photos)
        if held:
            out[version] = held
    return out


def read_tombstone(store: Store, key: str) -> dict | None:
    text = store.read_text(f"{key}/{TOMBSTONE}")
    try:
        return json.loads(text) if text else None
    except ValueError:        # written by hand, or cut short: withdrawn all the same
        return {"reason": "", "fingerprint": None, "at": None}


def remote_withdrawn(store: Store, cfg: Config) -> dict[str, dict]:
    """The versions withdrawn from the store: name -> tombstone (fingerprint, reason, at, host)."""
    found = {v: read_tombstone(store, version_key(cfg, v)) for v in store_version_names(store, cfg)}
    return {v: stone for v, stone in sorted(found.items(), key=lambda kv: int(kv[0][1:])) if stone is not None}


def withdraw_in_store(store: Store, cfg: Config, version: str, reason: str) -> int | None:
    """Withdraw `version` from the store: the tombstone, then the marker, then its files. The objects
    deleted; None when the store has no such version (published or withdrawn)."""
    key = version_key(cfg, version)
    held = store.listing(key)
    if not held:
        return None
    stone = read_tombstone(store, key)
    if stone is None:
        marker = read_marker(store, key) or {}
        fingerprint = marker.get("fingerprint") or recorded_fingerprint(cfg.layout.version(version))
        stone = {"version": version, "fingerprint": fingerprint, "reason": " ".join(reason.split()),
                 "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": socket.gethostname()}
        store.write_text(f"{key}/{TOMBSTONE}", json.dumps(stone))
    store.delete([f"{key}/{MARKER}"] if f"{key}/{MARKER}" in held else [])      # no longer listed, fetched
    kept = {f"{key}/{TOMBSTONE}", f"{key}/{CLAIM}", f"{key}/{MARKER}"}
    return store.delete(sorted(k for k in held if k not in kept)) + (f"{key}/{MARKER}" in held)


def drop_withdrawn(store: Store, cfg: Config) -> list[str]:
    """This cache's copies of the versions withdrawn from the store (on any machine): deleted, and their
    names kept in the cache's ledgers. A cache's own different version under such a name is kept
    (push_versions refuses it). Returns the versions whose copy was deleted."""
    root, dropped = cfg.layout.datasets, []
    for version, stone in remote_withdrawn(store, cfg).items():
        folder, listing = root / version, cfg.layout.version_listing(version)
        if listing.is_dir():            # what an inspect of the next version fetched: no longer counted from
            shutil.rmtree(listing)
        mine = recorded_fingerprint(folder) if folder.is_dir() else None
        if folder.is_dir() and mine is not None and stone.get("fingerprint") not in (None, mine):
            continue
        if withdraw_folder(root, version, stone.get("reason") or "withdrawn", stone.get("fingerprint"),
                           stone.get("at")):
            dropped.append(version)
            log.warning("dataset %s %s was withdrawn from %s (%s): this cache's copy deleted", cfg.build.name,
                        version, store.url, stone.get("reason") or "no reason given")
    return dropped
