"""Near-duplicate pair scores kept between curates. A mixin of `Catalog` (store.py), whose
connection (`self.db`) and helpers it uses; statements in SQLite's dialect as store.py's.

A score (curate/similarity.py) is a pure function of the two files' bytes and of the scoring
method, so it is kept by the two sha256 digests (the smaller first) and the method's name; a
nightly curate decides every image again, and without these it scored the same candidate pairs
every night. A curate keeps two methods: the images' own scores and those of one image's mirror image
against the other (curate/decide.py, `MirroredSimilarity`). `mlc catalog migrate` copies them with the
rest; `prune_pair_scores` drops those of another method, or of a pair no longer between the files a
curate decides.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

BATCH = 1000


class PairScoreQueries:
    def pair_scores(self, method: str, digests: Iterable[str],
                    others: list[tuple[str, str]] | None = None) -> dict[tuple[str, str], float]:
        """(smaller sha256, larger sha256) -> score, for the pairs of `method` between `digests`; the
        method's other pairs are appended to `others` (what `prune_pair_scores` drops: one read)."""
        wanted = set(digests)
        rows = self.db.execute("SELECT sha_a, sha_b, score FROM pair_scores WHERE method=?", (method,))
        out = {}
        while batch := rows.fetchmany(BATCH):
            for r in batch:
                if r["sha_a"] in wanted and r["sha_b"] in wanted:
                    out[(r["sha_a"], r["sha_b"])] = r["score"]
                elif others is not None:
                    others.append((r["sha_a"], r["sha_b"]))
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

    def prune_pair_scores(self, stale: Mapping[str, Iterable[tuple[str, str]]]) -> int:
        """Drop the scores of every method not in `stale`, and of each method's pairs there (those
        `pair_scores` left in `others`: not between the files a curate decides; a file taken down,
        changed or rejected since has no use for its scores); how many went. Deleted by key: `NOT IN
        (SELECT ... FROM candidates)` becomes a scan of candidates per row in PostgreSQL once the
        digests outgrow its work_mem, and candidates has no index on sha256."""
        rows = [(method, a, b) for method, pairs in stale.items() for a, b in pairs]
        methods = sorted(stale)
        with self._atomic():
            other = max(self.db.execute(f"DELETE FROM pair_scores WHERE method NOT IN ({','.join('?' * len(methods))})",
                                        methods).rowcount, 0) if methods else 0
            for k in range(0, len(rows), BATCH):
                self.db.executemany("DELETE FROM pair_scores WHERE method=? AND sha_a=? AND sha_b=?", rows[k:k + BATCH])
        return other + len(rows)
