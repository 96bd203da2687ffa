"""The embedded SQLite catalog (catalog/sqlite.py): how a new catalog file comes into being."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

from mlc_pipeline.catalog import Catalog, CatalogError


def open_at_once(path: str, readonly: bool, start, out) -> None:
    start.wait()
    try:
        with Catalog(Path(path), readonly=readonly) as catalog:
            out.put(("ok", catalog.status_counts()))
    except CatalogError as exc:
        out.put(("error", str(exc)))


def test_processes_starting_together_on_a_new_data_root_all_open_its_catalog(tmp_path):
    """sqlite3.connect makes the file empty first and writes the schema later, so a second process
    starting at that moment found a 0-byte catalog.sqlite and refused it as truncated ("restore it
    from a backup"): two commands started together on a fresh data root, one failed (seen in 2 of 3
    runs of bench/catalog_backends.py's two writers). A new catalog now appears whole."""
    ctx = mp.get_context("spawn")
    failures = []
    for attempt in range(8):
        path = tmp_path / str(attempt) / "catalog.sqlite"
        path.parent.mkdir()
        start, out = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=open_at_once, args=(str(path), readonly, start, out))
                 for readonly in (False, False, False, True)]
        for p in procs:
            p.start()
        results = [out.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        failures += [text for kind, text in results if kind == "error"]
        assert all(kind == "ok" for kind, _ in results) or failures
        with Catalog(path) as catalog:                   # one catalog, with its schema, nothing left beside it
            assert catalog.status_counts() == {}
        assert sorted(p.name for p in path.parent.iterdir() if not p.name.startswith("catalog.sqlite")) == []
    assert not failures, failures
