"""Near-duplicate pair scores kept between curates. A mixin of `Catalog` (store.py), whose
connection (`self.db`) and helpers it uses; statements in SQLite's dialect as store.py's.

A score (curate/similarity.py) is a pure function of the two files' bytes and of the scoring
method, so it is kept by the two sha256 digests (the smaller first) and the method's name; a
nightly curate decides every image again, and without these it scored the same candidate pairs
every night. `mlc catalog migrate` copies them with the rest; `prune_pair_scores` drops those of
another method or of a file no candidate has any more.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

BATCH = 1000


class PairScoreQueries:
    def pair_scores(self, method: str, digests: Iterable[str]) -> dict[tuple[str, str], float]:
        """(smaller sha256, larger sha256) -> score, for the pairs of `method` between `digests`."""
        wanted = set(digests)
        rows = self.db.execute("SELECT sha_a, sha_b, score FROM pair_scores WHERE method=?", (method,))
        out = {}
        while batch := rows.fetchmany(BATCH):
            out.update(((r["sha_a"], r["sha_b"]), r["score"]) for r in batch
                       if r["sha_a"] in wanted and r["sha_b"] in wanted)
        return out

    def save_pair_scores(self, method: str, scores: Mapping[tuple[str, str], float]) -> None:
        """Keep `scores` ((smaller sha256, larger sha256) -> score); a pair kept before is overwritten."""
        rows = [(a, b, method, float(s)) for (a, b), s in scores.items()]
        if any(a >= b for a, b, _, _ in rows):
            raise ValueError("pair scores are keyed by two different digests, the smaller first")
        with self._atomic():              # in the caller's transaction, or one of its own
            for k in range(0, len(rows), BATCH):
                self.db.executemany("INSERT INTO pair_scores (sha_a, sha_b, method, score) VALUES (?, ?, ?, ?) "
                                    "ON CONFLICT (method, sha_a, sha_b) DO UPDATE SET score=excluded.score",
                                    rows[k:k + BATCH])

    def prune_pair_scores(self, method: str) -> int:
        """Drop the scores of another method, or of a file no candidate holds; how many went."""
        held = "SELECT sha256 FROM candidates WHERE sha256 IS NOT NULL"
        with self._atomic():
            cur = self.db.execute(f"DELETE FROM pair_scores WHERE method<>? OR sha_a NOT IN ({held}) "
                                  f"OR sha_b NOT IN ({held})", (method,))
            return max(cur.rowcount, 0)
