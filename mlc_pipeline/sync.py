"""A data root on object storage (`data_dir: s3://bucket/prefix`), with a local cache.

The stages never see the store. They work on a local data root, the cache (`cfg.data_dir`, from
`cache_dir`), exactly as on a plain disk; this module fetches what a command reads before it runs and
publishes what it wrote after it (`synced` for one command, `pull` + `publish` in the stage loop).

What the store holds, under the URL:
  catalog.sqlite                  a snapshot of the SQLite catalog (SQLite's online backup) after each stage
  raw/..., quarantine/...         exactly the files the catalog names, at the same relative paths
  datasets/<name>/vN/...          a version's files, then its marker datasets/<name>/vN/_COMPLETE
  models/<bundle>/...             a bundle's files, then models/<bundle>/_COMPLETE, then models/LATEST
  reports/...

Atomic publishing keeps its meaning through the markers (objectstore.py): `latest` is the highest
version that has one. New files go up before the catalog snapshot that names them; objects under raw/
and quarantine/ that the catalog no longer names (quarantine moves, takedowns) are deleted after it,
and the store is listed before the catalog is read, so a file another writer uploaded meanwhile
(after recording it in the catalog) is always named. The image files themselves (fetch, publish,
deletions, takedowns reaching this cache) are storefiles.py's; the dataset versions (publish, fetch,
withdrawals) storeversions.py's.
"""

from __future__ import annotations

import logging
import re
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from mlc_pipeline.catalog import Catalog, catalog_exists
from mlc_pipeline.config import Config
from mlc_pipeline.fsutil import remove_dead_leftovers, sha256_file, temp_beside
from mlc_pipeline.locking import DataRootBusy, data_root_lock
from mlc_pipeline.objectstore import (ObjectStoreError, Store, folder_files, holds_digests, md5_file,
                                      refuse_moved_catalog, same, same_bytes, store_errors, store_of)
from mlc_pipeline import storefiles
from mlc_pipeline.publishing import failed_publish_recorded
from mlc_pipeline.storemodels import (POINTER_KEY, finish_pointer_move, owe_pointer_move, pull_compared, pull_listing,
                                     pull_model, pull_bundle, pull_registry, push_bundle)
from mlc_pipeline.storestate import LATEST_SEEN, read_state, write_state
from mlc_pipeline.storefiles import delete_unnamed_files, drop_taken_down, pull_files, push_files
from mlc_pipeline.storereports import last_run_bundles, pull_run_records
from mlc_pipeline.storeversions import (drop_withdrawn, pull_listings, pull_previous_listing, pull_version,
                                        push_versions, remote_versions, remote_versions_with)

log = logging.getLogger(__name__)
# Still reachable from here (tests, benchmarks): the files' half of syncing lives in storefiles.py.
file_listing, named_files, open_catalog = storefiles.file_listing, storefiles.named_files, storefiles.open_catalog

CATALOG_OBJECT = "catalog.sqlite"
REWRITTEN_BUNDLE_FILES = ("mined.csv", "review.csv")   # what `mlc mine` rewrites in a published bundle
MINED_ROUND_RECORD = re.compile(r"^mined-r\d+\.csv$")    # and each round's record, rewritten by a rerun


def rewritten_by_mine(rel: str) -> bool:
    return rel in REWRITTEN_BUNDLE_FILES or bool(MINED_ROUND_RECORD.match(rel))


# What each command reads from the data root, fetched into the cache before it runs.
# curate checks new images against the test images of every published version: it needs them all.
# build keeps each picture in the split a version published it in: every version's manifest (listings).
PULLS = {"collect": ("catalog", "files"), "curate": ("catalog", "files", "versions"),
         "build": ("catalog", "files", "version", "listings"), "train": ("catalog", "version"),
         "train-continue": ("catalog", "versions", "model"),     # the model continued and its versions
         "mine": ("catalog", "files", "model"), "inspect": ("catalog", "version", "previous"),
         "inspect-html": ("catalog", "version", "previous", "model", "reports", "rounds"),   # + the model section
         "remove": ("catalog",),     # then its photos' files alone (pull_for_takedown); versions read in the store
         "run": ("catalog", "files", "versions", "model", "reports"),    # reports: storereports.RUN_RECORDS
         "review": ("catalog", "files", "versions", "model")}   # pages, thumbnails, the model's queues


READ_ONLY = {"inspect", "inspect-html"}      # `mlc inspect` and `mlc export` fetch, and never publish


def uses_local_catalog(cfg: Config) -> bool:
    """SQLite in the cache, snapshotted to the store; a server catalog (`catalog.url`) is shared as is."""
    url = getattr(getattr(cfg, "catalog", None), "url", None)
    return not url or str(url).startswith("sqlite")


def has_catalog(cfg: Config) -> bool:
    return catalog_exists(cfg.catalog_path)


def local_signature(cfg: Config) -> list:
    """Size and mtime of the catalog's files: tells whether the cached catalog changed since its sync."""
    out = []
    for suffix in ("", "-wal"):
        p = Path(f"{cfg.catalog_path}{suffix}")
        out.append([p.stat().st_size, p.stat().st_mtime_ns] if p.exists() and p.stat().st_size else None)
    return out


def tag(store: Store, info: dict, sha256: str | None = None) -> str:
    """What tells one upload of the catalog from another: its ETag (S3, GCS and Azure give each write of
    other bytes another one), else (file://, no ETag) the SHA-256 of its bytes (`sha256` when the caller
    knows them: read back otherwise). Never the size alone: a status update usually keeps SQLite's page
    count."""
    etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
    if etag:
        return f"{info.get('size')}:{etag}"
    return f"{info.get('size')}:sha256:{sha256 or store.sha256(CATALOG_OBJECT)}"


def pull_catalog(store: Store, cfg: Config) -> bool:
    """Fetch the store's catalog snapshot unless the cache already has it. A cached catalog changed
    since its last sync (a stage that failed before publishing) is kept aside, never overwritten, unless
    the store holds it (killed after its upload). Snapshots and fetches a killed command left are removed."""
    info = store.info(CATALOG_OBJECT)
    if info is None:
        return False
    state, local, remote = read_state(cfg), cfg.catalog_path, tag(store, info)
    remove_dead_leftovers(local.parent.glob(f".{local.name}.tmp-*"), lambda p: p.name.rsplit("-", 2)[1])
    if local.exists() and state.get("catalog") == remote:
        return False
    if local.exists() and local_signature(cfg) != state.get("local"):
        if holds_our_upload(store, info, state.get("uploading"), local_signature(cfg)):
            log.info("the last publish from this cache was interrupted after the catalog upload: %s has this "
                     "cache's catalog", store.url)
            write_state(cfg, catalog=remote, catalog_sha256=state["uploading"]["sha256"], uploading=None,
                        local=local_signature(cfg))
            return False
        aside = local.with_name(f"catalog.unsynced-{uuid.uuid4().hex[:8]}.sqlite")
        with Catalog(local) as catalog:     # a consistent copy, WAL included
            catalog.snapshot(aside)
        log.warning("the cached catalog %s has changes never published to %s, and the store's catalog is "
                    "newer: the store's is used, the cached one is kept as %s", local, store.url, aside)
    store.download([(CATALOG_OBJECT, local)])
    for suffix in ("-wal", "-shm"):     # a stale WAL would be replayed into the new file
        Path(f"{local}{suffix}").unlink(missing_ok=True)
    write_state(cfg, catalog=remote, catalog_sha256=sha256_file(local), local=local_signature(cfg))
    log.info("catalog fetched from %s", store.url)
    return True


def holds_our_upload(store: Store, info: dict, uploading: dict | None, signature: list) -> bool:
    """Is the store's catalog the snapshot this cache was uploading when it was killed, before recording
    the upload, with the cached catalog unchanged since? Its bytes say so: the MD5 where the ETag is
    one, else the object read back and hashed."""
    if not uploading or uploading.get("local") != signature or info.get("size") != uploading.get("size"):
        return False
    return holds_digests(store, CATALOG_OBJECT, info, lambda: uploading.get("md5"), lambda: uploading.get("sha256"))


def push_catalog(store: Store, cfg: Config) -> None:
    """Upload the catalog's snapshot, unless the store's changed since this cache fetched it: another
    machine published meanwhile, and the last snapshot would win (SQLite: one writer at a time).
    The store's catalog is then the one this cache last synced with, whose SHA-256 the state keeps:
    the snapshot is uploaded unless its bytes are those."""
    if not cfg.catalog_path.exists():
        return
    info, state = store.info(CATALOG_OBJECT), read_state(cfg)
    if info is not None and tag(store, info) != state.get("catalog"):
        raise ObjectStoreError(f"the catalog in {store.url} changed since this cache ({cfg.data_dir}) fetched it: "
                               "another machine published meanwhile, and this cache's catalog would overwrite its "
                               "work. Not published; with SQLite, write from one machine at a time (or use a "
                               "PostgreSQL catalog); the next command here fetches the store's catalog")
    snapshot = temp_beside(cfg.catalog_path)
    try:
        with Catalog(cfg.catalog_path, readonly=True) as catalog:
            catalog.snapshot(snapshot)
        digest = sha256_file(snapshot)
        if info is None or digest != state.get("catalog_sha256"):
            # What is uploaded, recorded first: killed before the record below, the next fetch can tell
            # the store's catalog is this cache's own (holds_our_upload), not changes never published.
            write_state(cfg, uploading={"sha256": digest, "md5": md5_file(snapshot), "size": snapshot.stat().st_size,
                                        "local": local_signature(cfg)})
            store.upload([(snapshot, CATALOG_OBJECT)])
            write_state(cfg, catalog=tag(store, store.info(CATALOG_OBJECT), digest), catalog_sha256=digest,
                        uploading=None)
    finally:
        snapshot.unlink(missing_ok=True)
    write_state(cfg, local=local_signature(cfg))


def push_models(store: Store, cfg: Config) -> list[str]:
    root = cfg.layout.models
    if not root.is_dir():
        return []
    held = store.listing("models")
    owe_pointer_move(store, cfg, held)      # before any marker: killed after it, the next command moves it
    pushed = []
    for bundle in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                         and p.name != "LATEST"):       # LATEST made a link to a bundle: the pointer
        key = f"models/{bundle.name}"
        if not (bundle / "bundle.json").exists():
            continue                    # not a bundle (train publishes one whole, by a rename)
        if push_bundle(store, bundle, held):
            pushed.append(bundle.name)
        else:                           # published: only what `mlc mine` adds (mined*.csv, review.csv)
            files = folder_files(bundle)
            fixed = {r: p for r, p in files.items() if not rewritten_by_mine(r)}
            store.upload([(p, f"{key}/{r}") for r, p in fixed.items() if not same(p, held.get(f"{key}/{r}"))])
            push_rewritten(store, cfg, {f"{key}/{r}": p for r, p in files.items() if rewritten_by_mine(r)},
                           held)
    # The shared pointer moves only to the model owed above, after its marker: a cache that still points
    # at an older model never moves it back (`mlc promote` moves it by hand: storemodels.promoting).
    finish_pointer_move(store, cfg)
    return pushed


def push_rewritten(store: Store, cfg: Config, files: dict[str, Path], held: dict) -> int:
    """Upload files rewritten in place (reports, a bundle's mined.csv): those whose bytes differ from
    what this cache last published (their SHA-256 kept in the sync state), else, never published from
    here, from the store's (same_bytes). Nothing is read back from the store for a file this cache
    published unchanged: every publish re-read every report and model file before."""
    published = read_state(cfg).get("published", {})
    todo, digests = [], {}
    for key, path in files.items():
        digests[key] = digest = sha256_file(path)
        if published.get(key) == digest and key in held:
            continue
        if key not in published and same_bytes(store, path, key, held.get(key)):
            continue
        todo.append((path, key))
    uploaded = store.upload(todo)
    write_state(cfg, published={**read_state(cfg).get("published", {}), **digests})
    return uploaded


def push_reports(store: Store, cfg: Config) -> int:
    files = folder_files(cfg.layout.reports) if cfg.layout.reports.is_dir() else {}
    return push_rewritten(store, cfg, {f"reports/{r}": p for r, p in files.items()}, store.listing("reports"))


def pull(cfg: Config, command: str, version: str | None = None) -> None:
    """Before a command: fetch what it reads into the cache (no-op for a local data root)."""
    store = store_of(cfg)
    if store is None:
        return
    parts = PULLS[command]
    with store_errors(store):
        store.check()
        owe_pointer_move(store, cfg)    # a training here whose publish never began: from the pointer it saw
        write_state(cfg, **{LATEST_SEEN: store.pointer_tag(POINTER_KEY)})   # what a training moves it from
        if uses_local_catalog(cfg):
            refuse_moved_catalog(store)
        if command not in READ_ONLY:
            finish_pointer_move(store, cfg, fetching=True)      # an interrupted publish's, before the model
        if "catalog" in parts and uses_local_catalog(cfg):
            pull_catalog(store, cfg)
        if has_catalog(cfg):
            drop_taken_down(cfg)        # a takedown made on another machine reaches this cache
        if "files" in parts and has_catalog(cfg):
            pull_files(store, cfg)
        if {"version", "versions"} & set(parts):
            drop_withdrawn(store, cfg)      # withdrawn on any machine: gone from this cache too
        if "version" in parts and (shown := pull_version(store, cfg, version)) and "previous" in parts:
            pull_previous_listing(store, cfg, shown)    # what `mlc inspect` counts its changes against
        if "listings" in parts:
            pull_listings(store, cfg)       # after the latest: a version held whole needs no listing
        if "versions" in parts:
            for v in remote_versions(store, cfg):
                pull_version(store, cfg, v)
        if "model" in parts:
            pull_model(store, cfg)
        if "reports" in parts:      # what the last run shipped (after LATEST: shipping compares the two)
            published = read_state(cfg).get("published", {})
            write_state(cfg, published={**published, **pull_run_records(store, cfg, published)})
        if "rounds" in parts:       # the last run's other rounds, which its report shows beside LATEST
            for name in last_run_bundles(cfg):
                pull_bundle(store, cfg, name)


def publish(cfg: Config) -> None:
    """After a stage: publish what it wrote. New files before the catalog snapshot that names them, the
    objects it no longer names deleted after it: killed anywhere, the store's catalog names only
    objects that are there. Markers last."""
    store = store_of(cfg)
    if store is None:
        return
    with failed_publish_recorded(cfg), store_errors(store):     # runs recorded failed; what is kept, said
        if uses_local_catalog(cfg):
            refuse_moved_catalog(store, publishing=True)     # moved while this command ran: publish nothing
        if has_catalog(cfg):
            drop_taken_down(cfg)        # taken down meanwhile (on any machine): never uploaded again
        uploaded = push_files(store, cfg) if has_catalog(cfg) else 0
        if uses_local_catalog(cfg):
            push_catalog(store, cfg)
        deleted = delete_unnamed_files(store, cfg) if has_catalog(cfg) else 0
        drop_withdrawn(store, cfg)          # withdrawn meanwhile: never uploaded again
        push_versions(store, cfg)
        push_models(store, cfg)
        push_reports(store, cfg)
    log.info("published to %s: %d new file(s), %d removed", store.url, uploaded, deleted)


@contextmanager
def synced(cfg: Config, command: str, version: str | None = None) -> Iterator[None]:
    """One command on an object-store data root: fetch before, publish after it succeeds (a failed
    stage's work stays in the cache and is published by the next command that succeeds)."""
    pull(cfg, command, version)
    yield
    publish(cfg)


@contextmanager
def served(cfg: Config, command: str) -> Iterator[None]:
    """An app over the cache for as long as it runs (`mlc review`): fetched before it starts, its
    changes (the review, takedowns) published when it stops, Ctrl-C and SIGTERM included (the server
    shuts down cleanly, then re-raises them). Neither waits for a command writing to this cache: that
    command fetched before it and publishes after it, the app's changes with its own."""
    if store_of(cfg) is None:
        yield
        return
    unless_busy(cfg, f"mlc {command} (fetching)", lambda: pull(cfg, command))
    try:
        yield
    except KeyboardInterrupt:
        unless_busy(cfg, f"mlc {command} (publishing)", lambda: publish(cfg))
        raise
    unless_busy(cfg, f"mlc {command} (publishing)", lambda: publish(cfg))


def pull_for_takedown(cfg: Config, named: dict) -> None:
    """`mlc remove` on an object-store root, after its catalog fetch: the files of the photos it names
    (their corner and mirror hashes are read from them), not every file and version (the verify20
    audit: a takedown from a fresh cache fetched the whole store); `versions_holding` reads the store's
    manifests for the versions that list them."""
    store = store_of(cfg)
    with store_errors(store), open_catalog(cfg) as catalog:
        rels = {catalog.stored_path(r["file_path"]) for r in catalog.removal_targets(**named) if r["file_path"]}
    with store_errors(store):
        pull_files(store, cfg, only=rels)


def versions_holding(cfg: Config, photos: set[tuple[str, str]]) -> dict[str, list[str]]:
    "The store's published versions that list some of `photos`: version -> their photo ids."
    store = store_of(cfg)
    with store_errors(store):
        return remote_versions_with(store, cfg, photos)


def pull_for_reading(cfg: Config, version: str | None, html: bool = False) -> None:
    """`mlc inspect` and `mlc export` on an object-store data root: fetch the catalog and the version
    into the cache, unless a writer on this machine holds the cache (it publishes when done; the cache
    is read as is). `html` (`mlc inspect --html`): also the latest model, the last run's records and
    its rounds' bundles, which the page's model section shows (a fresh cache's page said "No model
    yet" of a store holding several)."""
    if cfg.data_url:
        fetch_unless_busy(cfg, "mlc inspect", lambda: pull(cfg, "inspect-html" if html else "inspect", version))


def registry_of(cfg: Config | None, command: str, wanted: list[str] | None, compared: bool = False) -> Path:
    """The models folder of `mlc models` and `mlc predict` (-c CONFIG's, else ./data/models); on an
    object-store data root the store's LATEST and the bundles `wanted` names fetched into it first, as
    `pull_for_reading` does (storemodels.pull_registry); None (the listing): every published bundle's
    bundle.json and metrics.json alone (storemodels.pull_listing); `compared` (`--compare`): those of
    the bundles `wanted` names alone (storemodels.pull_compared)."""
    if cfg is None:
        return Path("data") / "models"
    store = store_of(cfg)
    if store is not None:
        def step() -> None:
            with store_errors(store):
                store.check()
                if wanted is None:
                    pull_listing(store, cfg)
                elif compared:
                    pull_compared(store, cfg, wanted)
                else:
                    pull_registry(store, cfg, wanted)
        fetch_unless_busy(cfg, command, step)
    return cfg.layout.models


def fetch_unless_busy(cfg: Config, command: str, step) -> None:
    try:
        with data_root_lock(cfg.data_dir, f"{command} (fetching)", wait=False):
            step()
    except DataRootBusy as exc:
        log.warning("not fetching from %s: %s", cfg.data_url, exc)


def unless_busy(cfg: Config, command: str, step) -> None:
    try:
        with data_root_lock(cfg.data_dir, command, wait=False):
            step()
    except DataRootBusy as exc:
        log.warning("%s skipped: %s; it publishes this cache when done", command, str(exc).split(";")[0])
