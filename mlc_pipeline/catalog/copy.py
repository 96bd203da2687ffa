"""`mlc catalog migrate`: an existing SQLite catalog copied into a PostgreSQL one.

Every row keeps its id, so events, duplicate_of, removals and the review app's tables still point at
the right candidates, and file paths stay relative to the same data root. A row already in the
target (same key) is left as it is, so an interrupted or repeated copy just completes; the copy is
one transaction, so a failed one leaves the target as it was. Afterwards the tables are compared:
the same number of rows in each, and the same (id, source, photo_id) for every candidate, or a
CatalogError says what differs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from . import postgres, review
from .address import PostgresCatalog
from .schema import GENERATED_IDS, TABLES, CatalogError
from .store import Catalog

log = logging.getLogger(__name__)
BATCH = 2000
KEYS = {"meta": "key", "runs": "run_id", **review.TABLES}       # other tables: id


@dataclass
class CopyResult:
    source: str
    target: str
    rows: dict[str, int] = field(default_factory=dict)      # per table, in both catalogs after the copy
    copied: dict[str, int] = field(default_factory=dict)    # per table, new in the target


def count(catalog: Catalog, table: str) -> int:
    return catalog.db.execute(f"SELECT COUNT(*) AS n FROM {table}").fetchone()["n"]


def copy_catalog(source: Path, target: PostgresCatalog) -> CopyResult:
    if not source.is_file():
        raise CatalogError(f"{source}: no SQLite catalog to copy (run `mlc collect` with the SQLite catalog "
                           f"first, or check data_dir / --from)")
    result = CopyResult(str(source), str(target))
    with Catalog(source) as src, Catalog(target) as dst:     # opening them brings both to the current schema
        tables, generated = list(TABLES), list(GENERATED_IDS)
        if review.has_review_tables(src):                    # the review app's actions and overrides
            review.ensure_schema(dst)
            tables += review.TABLES
            generated.append("review_actions")
        before = {t: count(dst, t) for t in tables}
        with dst.transaction():
            for table in tables:
                cols = [r["name"] for r in src.db.execute(f"PRAGMA table_info({table})")]
                insert = (f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
                          f"ON CONFLICT DO NOTHING")
                rows = src.db.execute(f"SELECT {', '.join(cols)} FROM {table} ORDER BY {KEYS.get(table, 'id')}")
                while batch := rows.fetchmany(BATCH):
                    dst.db.executemany(insert, [tuple(r) for r in batch])
            postgres.reset_identities(dst.db, generated)
        for table in tables:
            result.rows[table] = count(src, table)
            result.copied[table] = count(dst, table) - before[table]
        verify(src, dst, result)
    log.info("catalog %s copied into %s: %s", source, target, result.copied)
    return result


def verify(src: Catalog, dst: Catalog, result: CopyResult) -> None:
    wrong = {t: (n, count(dst, t)) for t, n in result.rows.items() if count(dst, t) != n}
    if wrong:
        raise CatalogError(f"{result.target}: after the copy the row counts differ from {result.source}: " + ", ".join(
            f"{t} {a} in SQLite, {b} in PostgreSQL" for t, (a, b) in wrong.items()) +
            ". The PostgreSQL catalog held other rows before: copy into an empty database")
    ident = "SELECT id, source, photo_id FROM candidates ORDER BY id"
    a = [tuple(r) for r in src.db.execute(ident)]
    b = [(r["id"], r["source"], r["photo_id"]) for r in dst.db.execute(ident)]
    if a != b:
        first = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
        raise CatalogError(f"{result.target}: candidate {a[first][0]} is {a[first][1:]} in {result.source} but "
                           f"{b[first][1:]} in PostgreSQL: the database held another catalog; copy into an empty one")
