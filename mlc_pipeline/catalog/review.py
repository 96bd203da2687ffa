"""The review app's own queries, on a Catalog's connection (the catalog is the only place that speaks
SQL; this module is its review app's part and works on `catalog.db`): the pages' lists and filters
(`browse`, `neighbours`, `facets`, `duplicate_pairs`), the log of recent actions, and the index of
published versions that the version filters join (`index_version`). What a review decides, and what
the build, mining, the report and takedowns read of it, is the override store: catalog/overrides.py
(its tables, actions and undo).

Both backends, one text: SQLite's dialect, otherwise standard SQL, results read by column name.
"""

from __future__ import annotations

import json
import time

from mlc_pipeline.catalog.store import Catalog


def recent_actions(catalog: Catalog, limit: int = 50) -> list[dict]:
    rows = catalog.db.execute("SELECT a.*, c.photo_id FROM review_actions a JOIN candidates c ON c.id = a.candidate_id "
                              "ORDER BY a.id DESC LIMIT ?", (limit,))
    return [{**dict(r), "detail": json.loads(r["detail"] or "{}")} for r in rows]


# --- browsing ------------------------------------------------------------------------------------
BROWSE_COLUMNS = ("c.id, c.source, c.photo_id, c.purpose, c.label, c.curated_label, c.status, c.reason, c.title, "
                  "c.sha256, c.license_id, c.mined_round, c.mined_score, o.labels AS review_labels, "
                  "o.include AS review_include")
FILTERS = ("set", "label", "status", "reason", "licence", "round", "version", "split", "reviewed", "sort")


def like_literal(text: str) -> str:
    """`text` for a LIKE pattern with ESCAPE '!': its wildcards match only themselves."""
    return text.replace("!", "!!").replace("%", "!%").replace("_", "!_")


def _where(filters: dict, dataset: str) -> tuple[str, list]:
    """A WHERE clause for the browse filters (every value a bound parameter)."""
    sql, params = ["1=1"], []
    for key, clause, cast in (("set", "c.purpose = ?", str), ("status", "c.status = ?", str),
                              ("licence", "c.license_id = ?", int), ("round", "c.mined_round = ?", int)):
        if filters.get(key) not in (None, ""):
            sql.append(clause)
            params.append(cast(filters[key]))
    if filters.get("label"):
        # one whole label among the space-delimited ones: % and _ in the name are matched as themselves
        sql.append("(' ' || COALESCE(o.labels, c.curated_label, c.label) || ' ') LIKE ? ESCAPE '!'")
        params.append(f"% {like_literal(filters['label'])} %")
    if filters.get("reason"):
        sql.append("(c.reason = ? OR c.reason LIKE ?)")
        params += [filters["reason"], filters["reason"] + ":%"]
    if filters.get("reviewed") == "0":      # no decision in force: a queue that empties as the reviewer works
        sql.append("o.candidate_id IS NULL")
    elif filters.get("reviewed"):         # a decision in force, as the badge and the build's diff count it
        sql.append("o.candidate_id IS NOT NULL AND c.status <> 'removed'")
    if filters.get("version"):
        inner = "SELECT candidate_id FROM review_version_rows WHERE dataset = ? AND version = ?"
        params += [dataset, filters["version"]]
        if filters.get("split"):
            inner += " AND split = ?"
            params.append(filters["split"])
        sql.append(f"c.id IN ({inner})")
    return " AND ".join(sql), params


# Each order as a key of plain numbers (no score: last), so that an image page can step to its
# neighbours in the same order with one row-value comparison (SQLite >= 3.15 and PostgreSQL).
ORDERS = {"id": ("c.id",),
          "score": ("CASE WHEN c.mined_score IS NULL THEN 1 ELSE 0 END", "-COALESCE(c.mined_score, 0)", "c.id")}
LISTED = "FROM candidates c LEFT JOIN review_overrides o ON o.candidate_id = c.id WHERE"


def browse(catalog: Catalog, filters: dict, dataset: str, limit: int, offset: int,
           order: str = "id") -> tuple[list[dict], int]:
    """One page of candidates matching `filters`, by id (or mining score, highest first), and how many
    match in all."""
    where, params = _where(filters, dataset)
    total = catalog.db.execute(f"SELECT COUNT(*) AS n {LISTED} {where}", params).fetchone()["n"]
    keys = ", ".join(ORDERS.get(order, ORDERS["id"]))
    rows = catalog.db.execute(f"SELECT {BROWSE_COLUMNS} {LISTED} {where} ORDER BY {keys} LIMIT ? OFFSET ?",
                              (*params, limit, offset)).fetchall()
    return [dict(r) for r in rows], total


def neighbours(catalog: Catalog, filters: dict, dataset: str, cid: int,
               order: str = "id") -> tuple[int | None, int | None, int]:
    """The previous and next candidate ids under the same filters and order (keys j/k on an image
    page), and how many listed candidates come before this one (the list page it is on)."""
    keys = ORDERS.get(order, ORDERS["id"])
    here = catalog.db.execute(f"SELECT {', '.join(f'{k} AS k{i}' for i, k in enumerate(keys))} FROM candidates c "
                              "WHERE c.id = ?", (cid,)).fetchone()
    if here is None:
        return None, None, 0
    where, params = _where(filters, dataset)
    at = (*params, *(here[f"k{i}"] for i in range(len(keys))))
    row, marks = f"({', '.join(keys)})", f"({', '.join('?' * len(keys))})"
    prev = catalog.db.execute(f"SELECT c.id {LISTED} {where} AND {row} < {marks} ORDER BY "
                              f"{', '.join(k + ' DESC' for k in keys)} LIMIT 1", at).fetchone()
    nxt = catalog.db.execute(f"SELECT c.id {LISTED} {where} AND {row} > {marks} ORDER BY {', '.join(keys)} LIMIT 1",
                             at).fetchone()
    before = catalog.db.execute(f"SELECT COUNT(*) AS n {LISTED} {where} AND {row} < {marks}", at).fetchone()["n"]
    return prev["id"] if prev else None, nxt["id"] if nxt else None, before


def facets(catalog: Catalog) -> dict:
    """The values the filter menus offer."""
    db = catalog.db
    reasons = sorted({r["reason"].split(":")[0] for r in db.execute("SELECT DISTINCT reason FROM candidates "
                                                                     "WHERE reason IS NOT NULL")})
    return {"status": [r["status"] for r in db.execute("SELECT DISTINCT status FROM candidates ORDER BY status")],
            "reason": [r for r in reasons if r],
            "licence": [(r["id"], r["name"]) for r in db.execute("SELECT id, name FROM licenses ORDER BY id")],
            "round": [r["mined_round"] for r in db.execute("SELECT DISTINCT mined_round FROM candidates "
                                                           "WHERE mined_round IS NOT NULL ORDER BY mined_round")]}


def duplicate_pairs(catalog: Catalog, limit: int, offset: int) -> tuple[list[dict], int]:
    """Duplicates next to the image kept in their place, closest first (reasons end in ':d=<bits>')."""
    total = catalog.db.execute("SELECT COUNT(*) AS n FROM candidates WHERE status = 'duplicate'").fetchone()["n"]
    rows = catalog.db.execute(
        "SELECT d.id, d.photo_id, d.reason, d.label, d.sha256, k.id AS kept_id, k.photo_id AS kept_photo_id, "
        "k.status AS kept_status, COALESCE(k.curated_label, k.label) AS kept_label, k.sha256 AS kept_sha256, "
        "o.include AS review_include FROM candidates d LEFT JOIN candidates k ON k.id = d.duplicate_of "
        "LEFT JOIN review_overrides o ON o.candidate_id = d.id WHERE d.status = 'duplicate' "
        "ORDER BY d.duplicate_of, d.id LIMIT ? OFFSET ?", (limit, offset)).fetchall()
    return [dict(r) for r in rows], total


# --- published versions --------------------------------------------------------------------------
def indexed_versions(catalog: Catalog, dataset: str) -> dict[str, str | None]:
    rows = catalog.db.execute("SELECT version, fingerprint FROM review_versions WHERE dataset = ?", (dataset,))
    return {r["version"]: r["fingerprint"] for r in rows}


def index_version(catalog: Catalog, dataset: str, version: str, fingerprint: str | None, rows: list[dict]) -> None:
    """Record a published version's manifest rows (versions are immutable: done once per version)."""
    with catalog.transaction():
        catalog.db.execute("DELETE FROM review_version_rows WHERE dataset = ? AND version = ?", (dataset, version))
        catalog.db.executemany(
            "INSERT INTO review_version_rows (dataset, version, candidate_id, split, labels) VALUES (?,?,?,?,?)",
            [(dataset, version, int(r["candidate_id"]), r["split"], r["labels"]) for r in rows])
        catalog.db.execute("DELETE FROM review_versions WHERE dataset = ? AND version = ?", (dataset, version))
        catalog.db.execute("INSERT INTO review_versions (dataset, version, fingerprint, indexed_at) VALUES (?,?,?,?)",
                           (dataset, version, fingerprint, time.time()))


def labels_per_version(catalog: Catalog, dataset: str, cid: int) -> list[dict]:
    rows = catalog.db.execute("SELECT version, split, labels FROM review_version_rows WHERE dataset = ? AND "
                              "candidate_id = ?", (dataset, cid))
    return sorted((dict(r) for r in rows), key=lambda r: int(r["version"][1:]))
