"""Reading candidate rows by what they are, not by SQL: `catalog.candidates(status="accepted",
purpose="train")`. The stages, the report and the review app ask this way, so every SQL statement
stays in the catalog package. A mixin of `Catalog` (store.py), whose connection (`self.db`) and row
helper (`_row`: paths made usable) it uses.

A filter's value is one value (`column = ?`) or a tuple, list or set of them (`column IN (...)`);
`reason_prefix` matches reasons that start with it (`transient:` finds `transient:timeout`).
"""

from __future__ import annotations

# The columns a caller may filter on (a misspelt one is a TypeError, not an empty answer).
FILTER_COLUMNS = ("status", "purpose", "source", "label", "curated_label", "reason", "photo_id", "duplicate_of",
                  "url", "mined_round", "sha256")


def where_of(filters: dict) -> tuple[str, tuple]:
    """(SQL condition, parameters) for keyword filters."""
    prefix = filters.pop("reason_prefix", None)
    unknown = sorted(set(filters) - set(FILTER_COLUMNS))
    if unknown:
        raise TypeError(f"candidates() cannot filter on {', '.join(unknown)}; it filters on "
                        f"{', '.join(FILTER_COLUMNS)} and reason_prefix")
    parts, params = [], []
    for column, value in filters.items():
        if isinstance(value, (tuple, list, set, frozenset)):
            values = sorted(value, key=str)
            parts.append(f"{column} IN ({','.join('?' * len(values))})" if values else "1=0")
            params += values
        else:
            parts.append(f"{column}=?")
            params.append(value)
    if prefix is not None:
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        parts.append("reason LIKE ? ESCAPE '\\'")
        params.append(escaped + "%")
    return " AND ".join(parts) or "1=1", tuple(params)


class RowQueries:
    def candidates(self, where: str | None = None, params: tuple = (), **filters) -> list[dict]:
        """Candidate rows in id order: those matching keyword `filters` (see the module doc). `where`
        (an SQL condition with `?` parameters) is for the catalog's own tests and the benches' checks;
        the library filters by keywords (tests/test_architecture.py)."""
        if where is not None and filters:
            raise TypeError("candidates(): give an SQL condition or keyword filters, not both")
        if where is None:
            where, params = where_of(filters)
        return [self._row(r) for r in self.db.execute(f"SELECT * FROM candidates WHERE {where} ORDER BY id", params)]

    def get(self, cid: int) -> dict | None:
        row = self.db.execute("SELECT * FROM candidates WHERE id=?", (cid,)).fetchone()
        return self._row(row) if row else None

    def get_by_photo(self, source: str, photo_id: str) -> dict | None:
        row = self.db.execute("SELECT * FROM candidates WHERE source=? AND photo_id=?", (source, photo_id)).fetchone()
        return self._row(row) if row else None

    def events(self, cid: int) -> list[dict]:
        return [dict(r) for r in self.db.execute("SELECT * FROM events WHERE candidate_id=? ORDER BY id", (cid,))]
