"""Catalog writes on SQLite and on PostgreSQL, one writer and two at once, and the copy between them.

    .venv/bin/python bench/catalog_backends.py [--candidates 20000] [--json out.json]

Starts a throw-away PostgreSQL server with the tests' helper (tests/pgserver.py: initdb in a temp
dir, as user mlc-pg when root, fsync off: the figures are the catalog's own cost, not a disk's).
For each backend: `upsert_found` of N new search results in batches of 100 (as collect records
them), one `set_status` per candidate (as downloads are recorded, each its own transaction), a
full `candidates()` read; then two processes recording the same N/2 results and statuses at once
(the rows must come out N/2, each with one search event); then `mlc catalog migrate` of the SQLite
catalog into an empty database.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from mlc_pipeline.catalog import Catalog, Found, PostgresCatalog  # noqa: E402
from mlc_pipeline.catalog.copy import copy_catalog  # noqa: E402


def results(n: int, start: int = 0) -> list[Found]:
    return [Found("flickr", str(i), "train", "a" if i % 2 else "b", f"q{i % 7}", f"http://h/{i}.jpg", "url_m", 500,
                  375, 4, "CC BY", f"o{i % 50}", "Owner", "title", "2020-01-01", 1577872800, "t1 t2")
            for i in range(start, start + n)]


def record(where, n: int, start: int = 0) -> dict:
    out = {}
    with Catalog(where) as c:
        run = c.start_run("bench")
        batch = results(n, start)
        t = time.perf_counter()
        for i in range(0, n, 100):
            c.upsert_found(batch[i:i + 100], run)
        out["upsert_per_s"] = n / (time.perf_counter() - t)
        ids = [r["id"] for r in c.candidates(source="flickr")][:n]
        t = time.perf_counter()
        for cid in ids:
            c.set_status(cid, "downloaded", None, run, "download", bytes=1000, sha256="ab" * 32)
        out["set_status_per_s"] = len(ids) / (time.perf_counter() - t)
        t = time.perf_counter()
        rows = c.candidates()
        out["read_rows_per_s"] = len(rows) / (time.perf_counter() - t)
    return out


def worker(where, n, q) -> None:
    q.put(record(where, n))


def concurrent(where, n: int) -> dict:
    q = mp.get_context("spawn").Queue()
    procs = [mp.get_context("spawn").Process(target=worker, args=(where, n, q)) for _ in range(2)]
    t = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    wall = time.perf_counter() - t
    assert all(p.exitcode == 0 for p in procs)
    with Catalog(where, readonly=True) as c:
        rows = len(c.candidates())
        searched = c.event_counts().get("search", 0)
    return {"wall_s": wall, "rows": rows, "search_events": searched, "per_process": [q.get(), q.get()]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--candidates", type=int, default=20000)
    ap.add_argument("--json")
    args = ap.parse_args()
    from pgserver import PostgresServer
    server = PostgresServer().start()
    os.environ["PGPASSWORD"] = server.password
    report: dict = {"candidates": args.candidates}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            backends = {"sqlite": tmp / "one" / "catalog.sqlite",
                        "postgresql": PostgresCatalog(server.create_database("one"), tmp / "one-pg")}
            for name, where in backends.items():
                report[name] = record(where, args.candidates)
            two = {"sqlite": tmp / "two" / "catalog.sqlite",
                   "postgresql": PostgresCatalog(server.create_database("two"), tmp / "two-pg")}
            for name, where in two.items():
                report[f"{name}_two_writers"] = concurrent(where, args.candidates // 2)
            t = time.perf_counter()
            copied = copy_catalog(backends["sqlite"], PostgresCatalog(server.create_database("copy"), tmp / "one"))
            report["migrate"] = {"s": time.perf_counter() - t, "rows": copied.rows}
    finally:
        server.stop()
    text = json.dumps(report, indent=1, default=lambda x: round(x, 1))
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
