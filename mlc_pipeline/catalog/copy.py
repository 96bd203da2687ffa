"""`mlc catalog migrate`: an existing SQLite catalog copied into a PostgreSQL one.

Every row keeps its id, so events, duplicate_of, removals and the review app's tables still point at
the right candidates, and file paths stay relative to the same data root.

What the target may already hold: only rows of this very catalog. Each row the target holds is looked
up in the source by its key (id; meta's key, runs' run_id, the review tables' keys) and must be there
with every column the same; then copying the rest makes the target exactly the source. That is an
empty database (opening it writes only meta's schema_version, the same on both sides) or an earlier
copy of this catalog that nothing changed since on either side, whose rerun copies 0 rows. Anything
else (a live catalog's own runs or candidates, or an older copy whose rows the SQLite catalog has
updated since) is refused before anything is written, naming what the target holds (TargetNotEmpty).
There is no catalog id to tell catalogs apart by: the rows themselves are the test, and two catalogs
never share a run_id (a timestamp and a random suffix) or a candidate's every column. Left out of the
test and of the row counts: meta's `migrated_to_N`, each catalog's record of its own migrations. Both
are opened writable, so each is migrated on its own, at its own time (the review30 audit: an empty
catalog 0.2.0 created, and the rerun into a copy 0.2.0 made, were refused for them); the target keeps
its own record and gets the source's only where it has none, marked told (a migration of another
catalog is no news for the target's summary: review31).

The check, the copy and the verification are one transaction under the catalog's writer lock: no
writer changes the target between them, and a failed or killed copy leaves the target as it was (a
rerun then starts from nothing). The SQLite catalog's write lock is held from before the copy until
the caller's `mark_moved` has written `catalog.moved`: every later write transaction on that file,
also on a connection opened before (a running review app), is refused (the concurrency28 audit). The verification: the same number of rows in each table, and the
same (id, source, photo_id) for every candidate, or a CatalogError says what differs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import overrides, postgres
from mlc_pipeline.catalog_address import PostgresCatalog
from .migrate import RECORDS
from .schema import GENERATED_IDS, TABLES, CatalogError
from .store import Catalog

log = logging.getLogger(__name__)
BATCH = 2000
KEYS = {"meta": "key", "runs": "run_id", "pair_scores": "method, sha_a, sha_b", "kept_corners": "method, sha256",
        **overrides.TABLES}   # others: id


class TargetNotEmpty(CatalogError):
    """The target holds rows that are not the source's: refused before anything is written."""


@dataclass
class CopyResult:
    source: str
    target: str
    rows: dict[str, int] = field(default_factory=dict)      # per table, in both catalogs after the copy
    copied: dict[str, int] = field(default_factory=dict)    # per table, new in the target


# The rows of a table the copy compares and counts: all but each catalog's own migration records.
COMPARED = {"meta": f" WHERE NOT ({RECORDS})"}


def count(catalog: Catalog, table: str) -> int:
    return catalog.db.execute(f"SELECT COUNT(*) AS n FROM {table}{COMPARED.get(table, '')}").fetchone()["n"]


def columns(catalog: Catalog, table: str) -> list[str]:
    return [r["name"] for r in catalog.db.execute(f"PRAGMA table_info({table})")]


def copy_catalog(source: Path, target: PostgresCatalog, mark_moved: Callable[[], None] | None = None) -> CopyResult:
    """`mark_moved`: called once the copy is committed, while the SQLite catalog's write lock is still held."""
    if not source.is_file():
        raise CatalogError(f"{source}: no SQLite catalog to copy (run `mlc collect` with the SQLite catalog "
                           f"first, or check data_dir / --from)")
    result = CopyResult(str(source), str(target))
    # Opening them brings both to the current schema; the source even when marked moved (a rerun).
    with Catalog(source, moved_ok=True) as src, Catalog(target) as dst:
        tables, generated = list(TABLES), list(GENERATED_IDS)
        if overrides.has_review_tables(src):                 # the review app's actions and overrides
            tables += overrides.TABLES
            generated.append("review_actions")
        refuse_other_rows(src, dst, result)                  # before creating the review tables in it
        if overrides.has_review_tables(src):
            overrides.ensure_schema(dst)
        # SQLite's write lock from before the copy until the marker is written: a writer on a connection
        # opened before (a running `mlc review`) either commits before the copy, so it is copied, or
        # begins after the marker, which refuses it (sqlite.begin); none writes to the file unseen.
        with src.transaction():
            with dst.transaction():
                refuse_other_rows(src, dst, result)          # again under the writer lock: nobody wrote since
                copy_rows(src, dst, tables, generated, result)
            if mark_moved is not None:                       # the copy is committed in PostgreSQL
                mark_moved()
    log.info("catalog %s copied into %s: %s", source, target, result.copied)
    return result


def copy_rows(src: Catalog, dst: Catalog, tables: list[str], generated: list[str], result: CopyResult) -> None:
    """Every row of `tables`, in the callers' transactions, then verified (a mismatch rolls the copy back)."""
    before = {t: count(dst, t) for t in tables}
    for table in tables:
        cols = columns(src, table)
        insert = (f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
                  f"ON CONFLICT DO NOTHING")       # the target's rows are the source's, unchanged
        rows = src.db.execute(f"SELECT {', '.join(cols)} FROM {table} ORDER BY {KEYS.get(table, 'id')}")
        while batch := rows.fetchmany(BATCH):
            dst.db.executemany(insert, [told_copy(table, tuple(r)) for r in batch])
    postgres.reset_identities(dst.db, generated)
    for table in tables:
        result.rows[table] = count(src, table)
        result.copied[table] = count(dst, table) - before[table]
    verify(src, dst, result)


def told_copy(table: str, row: tuple) -> tuple:
    """A row as the target gets it: a migration record of the source's arrives told (review31: the
    target's next summary said the source's migration as its own, though it happened elsewhere)."""
    if table != "meta" or not str(row[0]).startswith("migrated_to_"):
        return row
    try:
        record = json.loads(row[1])
    except ValueError:          # not a record this code wrote: copied as it is, as every other row
        return row
    return (row[0], json.dumps({**record, "told": True}), *row[2:]) if isinstance(record, dict) else row


def refuse_other_rows(src: Catalog, dst: Catalog, result: CopyResult) -> None:
    """TargetNotEmpty unless every row the target holds is the source's row with the same key, every
    column the same (the module's docstring says why that is the rule)."""
    other = {}
    for table in [*TABLES, *overrides.TABLES]:
        if not dst.has_table(table) or count(dst, table) == 0:
            continue
        key = [k.strip() for k in KEYS.get(table, "id").split(",")]
        in_source = src.has_table(table)
        cols = columns(src, table) if in_source else key
        lookup = f"SELECT {', '.join(cols)} FROM {table} WHERE " + " AND ".join(f"{k}=?" for k in key)
        rows = dst.db.execute(f"SELECT {', '.join(cols)} FROM {table}{COMPARED.get(table, '')} "
                              f"ORDER BY {', '.join(key)}")
        n, first = 0, None
        while batch := rows.fetchmany(BATCH):
            for row in batch:
                ours = src.db.execute(lookup, [row[k] for k in key]).fetchone() if in_source else None
                if ours is None or tuple(ours) != tuple(row[c] for c in cols):
                    n, first = n + 1, first or ", ".join(f"{k} {row[k]}" for k in key)
        if n:
            other[table] = f"{n} {table} row(s) (first: {first})"
    if other:
        raise TargetNotEmpty(
            f"{result.target} already holds rows that are not in {result.source} as they are there: "
            f"{'; '.join(other.values())}. Nothing was copied: copy into an empty database (a rerun into "
            f"an earlier copy of this catalog is fine only while neither side changed since)")


def verify(src: Catalog, dst: Catalog, result: CopyResult) -> None:
    wrong = {t: (n, count(dst, t)) for t, n in result.rows.items() if count(dst, t) != n}
    if wrong:
        raise CatalogError(f"{result.target}: after the copy the row counts differ from {result.source}: " + ", ".join(
            f"{t} {a} in SQLite, {b} in PostgreSQL" for t, (a, b) in wrong.items()) +
            ". Nothing was copied (rolled back)")
    ident = "SELECT id, source, photo_id FROM candidates ORDER BY id"
    a = [tuple(r) for r in src.db.execute(ident)]
    b = [(r["id"], r["source"], r["photo_id"]) for r in dst.db.execute(ident)]
    if a != b:
        first = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
        raise CatalogError(f"{result.target}: candidate {a[first][0]} is {a[first][1:]} in {result.source} but "
                           f"{b[first][1:]} in PostgreSQL after the copy. Nothing was copied (rolled back)")
