"""The catalog's image files (raw/, quarantine/) on an object-store data root, and its cache's copies.

sync.py decides when; this module moves the files: fetch the ones the cache lacks, publish the ones
the store lacks, delete the objects the catalog no longer names, and drop from the cache the files of
photos taken down (`mlc remove` on another machine deletes only its own cache's copy and, at its
publish, the object: every other cache drops its copy at its next fetch or publish).

Several machines publish into one store at once (a PostgreSQL catalog): an object listed a moment
ago may be gone when it is downloaded (another machine's curate moved it to quarantine/, or a
takedown deleted it). Such a file is skipped, not an error: the catalog now names it elsewhere or
not at all, and curate judges a file that is in neither the cache nor the store (curate/unpublished.py).
"""

from __future__ import annotations

import logging
import os

from mlc_pipeline.catalog import Catalog
from mlc_pipeline.config import Config
from mlc_pipeline.objectstore import ObjectStoreError, Store, same

log = logging.getLogger(__name__)

FILE_DIRS = ("raw", "quarantine")
FETCH_TRIES = 3          # listings made when objects keep vanishing between a listing and its download


def open_catalog(cfg: Config) -> Catalog:
    """The catalog, read-only (the one place to change when the catalog is opened another way)."""
    return Catalog(cfg.catalog_path, readonly=True)


def named_files(cfg: Config) -> set[str]:
    """The catalog's files inside the data root (relative paths under raw/ and quarantine/)."""
    with open_catalog(cfg) as catalog:
        paths = catalog.stored_file_paths()
    return {p for p in paths if not os.path.isabs(p) and p.split("/")[0] in FILE_DIRS}


def file_listing(store: Store) -> dict[str, dict]:
    return {k: v for d in FILE_DIRS for k, v in store.listing(d).items()}


def pull_files(store: Store, cfg: Config, only: set[str] | None = None) -> int:
    """Fetch the catalog's files the cache lacks (a fresh cache, or one another machine added to);
    `only`: of those, these paths (relative to the data root) alone.
    An object that vanishes between the listing and its download (another machine publishing at the
    same time) is skipped after listing again; curate judges the files that are in neither place."""
    want = sorted(p for p in named_files(cfg) if not (cfg.data_dir / p).exists() and (only is None or p in only))
    if not want:
        return 0
    held = file_listing(store)
    lost = [p for p in want if p not in held]
    if lost:
        log.warning("%d file(s) the catalog names are in neither the cache nor %s (e.g. %s): curate keeps them "
                    "while another machine may still publish them, else marks them for re-download",
                    len(lost), store.url, lost[0])
    todo = [p for p in want if p in held]
    for attempt in range(1, FETCH_TRIES + 1):
        try:
            return store.download([(p, cfg.data_dir / p) for p in todo])
        except FileNotFoundError as exc:
            held = file_listing(store)
            vanished = [p for p in todo if p not in held]
            if not vanished:        # not a vanished object: say which fetch failed, and how
                raise ObjectStoreError(f"object store {store.url}: fetching {len(todo)} file(s) into {cfg.data_dir} "
                                       f"(e.g. {todo[0]}) failed: {type(exc).__name__}: {exc}") from exc
            if attempt == FETCH_TRIES:
                raise ObjectStoreError(
                    f"object store {store.url}: {vanished[0]} (and {len(vanished) - 1} more) vanished while being "
                    f"fetched, {FETCH_TRIES} times: another machine is publishing into the store; rerun when it "
                    f"is done") from exc
            log.info("%d file(s) left %s between its listing and their download (e.g. %s: another machine "
                     "published meanwhile); fetching the rest", len(vanished), store.url, vanished[0])
            todo = [p for p in todo if p in held]
    return 0    # not reached: the last try returns or raises


def push_files(store: Store, cfg: Config) -> int:
    """Upload the catalog's files the store lacks: before the catalog that names them is published."""
    held = file_listing(store)
    return store.upload([(cfg.data_dir / p, p) for p in sorted(named_files(cfg))
                         if (cfg.data_dir / p).is_file() and not same(cfg.data_dir / p, held.get(p))])


def delete_unnamed_files(store: Store, cfg: Config) -> int:
    """Delete the objects the catalog no longer names (quarantine moves, takedowns): after it is published."""
    held = file_listing(store)              # listed before the catalog is read (see sync.py's doc)
    named = named_files(cfg)
    stale = sorted(set(held) - named)
    if stale and not named:
        log.warning("the catalog names no file but %s holds %d under raw/ and quarantine/: not deleting them",
                    store.url, len(stale))
        return 0
    return store.delete(stale)


def drop_taken_down(cfg: Config) -> list[str]:
    """Delete this cache's files (and review thumbnails) of the photos the catalog records as taken
    down: a takedown on one machine reaches every cache at its next fetch, and no publish from here
    can bring the file back. The paths deleted."""
    deleted: list[str] = []
    with open_catalog(cfg) as catalog:
        for row in catalog.candidates(status="removed"):
            for path in cfg.layout.photo_files(row["source"], row["photo_id"]):
                path.unlink(missing_ok=True)
                deleted.append(str(path))
            thumbs = cfg.layout.thumbnails_of(row["sha256"])
            if thumbs and not catalog.holds_sha256(row["sha256"]):
                for thumb in thumbs:
                    thumb.unlink(missing_ok=True)
                    deleted.append(str(thumb))
    if deleted:
        log.info("removed %d cached file(s) of photos taken down (e.g. %s)", len(deleted), deleted[0])
    return deleted
