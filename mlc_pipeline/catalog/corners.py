"""The corner hashes of published test files kept between curates. A mixin of `Catalog` (store.py),
whose connection (`self.db`) and helpers it uses; statements in SQLite's dialect as store.py's.

Curate compares every training image's phash with the corner windows and mirror views of every
published test image (curate/decide.py, docs/curation.md "Test images of earlier versions never
train"). Those hashes (curate.hashing.corner_phashes) are a pure function of a file's bytes and of
how they are hashed, and a published file never changes, so they are kept by the file's sha256 and
the hashing's name (`hashing.CORNER_METHOD`): each file is hashed once, not at every curate.
`keep_corner_hashes` drops those of another method and of files no longer published (a version
withdrawn). A photo taken down keeps its own in its candidate row (`corner_hashes`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

BATCH = 1000


class KeptCornerQueries:
    def kept_corner_hashes(self, method: str) -> dict[str, str]:
        """sha256 -> the corner hashes kept for that file under `method` (one row per published test file)."""
        return {r["sha256"]: r["hashes"] for r in self.db.execute(
            "SELECT sha256, hashes FROM kept_corners WHERE method=?", (method,))}

    def keep_corner_hashes(self, method: str, hashes: Mapping[str, str], published: Iterable[str]) -> int:
        """Keep `hashes` (sha256 -> corner hashes, made by `method`), and drop those of another method
        and of a file not in `published` (the digests of the test files published now); how many went."""
        published = set(published) | set(hashes)
        with self._atomic():              # in the caller's transaction, or one of its own
            gone = [(method, r["sha256"]) for r in self.db.execute(
                "SELECT sha256 FROM kept_corners WHERE method=?", (method,)) if r["sha256"] not in published]
            other = max(self.db.execute("DELETE FROM kept_corners WHERE method<>?", (method,)).rowcount, 0)
            for k in range(0, len(gone), BATCH):
                self.db.executemany("DELETE FROM kept_corners WHERE method=? AND sha256=?", gone[k:k + BATCH])
            rows = [(sha, method, h) for sha, h in hashes.items()]
            for k in range(0, len(rows), BATCH):
                self.db.executemany("INSERT INTO kept_corners (sha256, method, hashes) VALUES (?, ?, ?) "
                                    "ON CONFLICT (method, sha256) DO UPDATE SET hashes=excluded.hashes",
                                    rows[k:k + BATCH])
        return other + len(gone)
