"""The review app's state: its two catalog connections (the pages' and the actions', a lock each; opened
again after a lost connection), the published versions indexed for the pages, the filter menus."""

from __future__ import annotations

import csv
import logging
import threading
import time
from pathlib import Path

from mlc_pipeline.catalog import overrides as co
from mlc_pipeline.catalog import review as cr
from mlc_pipeline.catalog import Catalog, CatalogBusy, PostgresCatalog
from mlc_pipeline.catalog.sqlite import refuse_moved
from mlc_pipeline.config import Config
from mlc_pipeline.curate.verify import check_image
from mlc_pipeline.manifest import read_manifest, recorded_fingerprint, versions

log = logging.getLogger(__name__)
FACETS_TTL_S = 30.0
# Verification reasons of policy, not of a broken file: a reviewer may put such an image back.
POLICY_REASONS = ("too-small", "extreme-aspect")


class Review:
    """The app's state: the config, the pages' catalog connection and the actions' (each with its
    lock), cached filter menus."""

    def __init__(self, cfg: Config, action_wait_s: float, page_wait_s: float):
        self.cfg, self.action_wait_s, self.page_wait_s = cfg, action_wait_s, page_wait_s
        self.catalog, self.lock = Catalog(cfg.catalog_path), threading.Lock()          # the pages' reads
        self.writer, self.write_lock = Catalog(cfg.catalog_path), threading.Lock()     # the actions
        with self.write_lock:
            co.ensure_schema(self.writer)         # at startup the batch commands' wait, then the app's
        self.writer.set_lock_timeout(action_wait_s)
        self.catalog.set_lock_timeout(page_wait_s)
        self.classes = list(cfg.classes)
        self.dataset = cfg.build.name
        self.root = cfg.layout.datasets
        self._facets: tuple[float, dict | None] = (0.0, None)
        self.broken = False                      # the connections were lost and not opened again yet
        self.unreadable: set[str] = set()        # versions whose manifest could not be indexed (warned once)

    def close(self) -> None:
        self.catalog.close()
        self.writer.close()

    def reconnect(self) -> None:
        """After CatalogLost (PostgreSQL restarted, the network dropped): both connections opened afresh,
        so the app recovers by itself (the secrets21 audit: every page answered 500 until the app was
        restarted). A server still down raises CatalogError here and leaves `broken` set: the next
        request reconnects before it runs (`ensure_connected`), rather than finding a closed one."""
        with self.lock, self.write_lock:
            for lost in (self.catalog, self.writer):
                try:
                    lost.close()
                except Exception as exc:        # psycopg on a dead socket: nothing left to close
                    log.info("review: closing the lost catalog connection: %s", exc)
            self.broken = True
            self.catalog = Catalog(self.cfg.catalog_path)
            self.catalog.set_lock_timeout(self.page_wait_s)
            self.writer = Catalog(self.cfg.catalog_path)
            self.writer.set_lock_timeout(self.action_wait_s)
            self.broken = False
        log.warning("review: the catalog's connection was lost; reconnected to %s", self.catalog.where)

    def refuse_moved(self) -> None:
        """CatalogMoved once `mlc catalog migrate` moved this app's SQLite catalog: asked before each request,
        as its connections were opened before (their write transactions check it too: sqlite.begin)."""
        if not isinstance(self.cfg.catalog_path, PostgresCatalog):
            refuse_moved(Path(self.cfg.catalog_path))

    def ensure_connected(self) -> None:
        "Before a request: reconnect if the last try failed (CatalogError while the server is still down)."
        if self.broken:
            self.reconnect()

    def refresh_versions(self) -> list[str]:
        """Index any version published since (manifests are immutable: each is read once)."""
        published = [v for v in versions(self.root) if (self.root / v / "dataset.json").is_file()]
        known = cr.indexed_versions(self.catalog, self.dataset)
        for v in published:
            fp = recorded_fingerprint(self.root / v)
            if (v not in known or known[v] != fp) and v not in self.unreadable:
                try:
                    rows = read_manifest(self.root / v / "manifest.csv")
                    cr.index_version(self.catalog, self.dataset, v, fp, rows)
                except CatalogBusy:         # a writer at work: indexed on a later page, not an error page now
                    log.info("dataset %s %s: not indexed yet, the catalog is busy", self.dataset, v)
                except (OSError, ValueError, KeyError, TypeError, csv.Error) as exc:
                    # a damaged version (`mlc inspect` says what): the pages work without its labels
                    log.warning("dataset %s %s: manifest not readable (%s); its labels are not shown", self.dataset,
                                v, exc)
                    self.unreadable.add(v)
        return published

    def facets(self) -> dict:
        at, cached = self._facets
        if cached is None or time.monotonic() - at > FACETS_TTL_S:
            cached = cr.facets(self.catalog)
            self._facets = (time.monotonic(), cached)
        return cached

    def check_file(self, path: str | None) -> str | None:
        if not path or not Path(path).is_file():
            return "the file is gone"
        from mlc_pipeline.curate.stage import limits_of
        res = check_image(path, limits_of(self.cfg))
        return None if res.ok or (res.reason or "").startswith(POLICY_REASONS) else res.reason
