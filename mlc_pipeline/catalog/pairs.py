"""Near-duplicate pair scores kept between curates. A mixin of `Catalog` (store.py), whose
connection (`self.db`) and helpers it uses; statements in SQLite's dialect as store.py's.

A score (curate/similarity.py) is a pure function of the two files' bytes and of the scoring
method, so it is kept by the two sha256 digests (the smaller first) and the method's name; a
nightly curate decides every image again, and without these it scored the same candidate pairs
every night. A curate keeps two methods: the images' own scores and those of one image's mirror image
against the other (curate/decide.py, `MirroredSimilarity`). `mlc catalog migrate` copies them with the
rest; `prune_pair_scores` drops those of another method, or of a pair no longer between the files a
curate decides.

A review pair (`review_partners`) is two images a curate confirmed as the same picture (score >= 0.92)
and kept both of, their labels differing: each row's reason names the other
(`review_note`: `review:label-conflict:with=<id>:d=<bits>:s=<score>`, written by curate/decide.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from .schema import REVIEW_NOTED_ID, REVIEW_NOTES, REVIEW_PAIR

BATCH = 1000
REVIEW_NOTE = re.compile(re.escape(REVIEW_PAIR) + r"(\d+):d=(\d+):s=([0-9.]+)")


def review_note(other: int, bits: int, score: float) -> str:
    "The reason curate gives an image of a review pair: the other image's id, their phash bits and score."
    return f"{REVIEW_PAIR}{other}:d={bits}:s={score:.2f}"


def review_partner(reason: str | None) -> tuple[int, int, float] | None:
    "(the other member's id, phash bits, score) of a review pair's reason; None for any other reason."
    found = REVIEW_NOTE.fullmatch(reason or "")
    return (int(found[1]), int(found[2]), float(found[3])) if found else None


class PairScoreQueries:
    def review_partners(self, ids: Iterable[int]) -> dict[int, dict[int, float]]:
        """id -> {the other member's id: score} of the review pairs each of `ids` is in, or was in: as the
        rows' reasons say now, and as their events recorded them (a photo taken down has lost its reason,
        and the next curate drops the note of its partner; a row names one pair, the first its curate
        found, so both sides are read)."""
        wanted, out, rows = set(ids), {}, []
        ordered = sorted(wanted)
        for k in range(0, len(ordered), BATCH // 2):
            part = ordered[k:k + BATCH // 2]
            marks = ",".join("?" * len(part))
            # Each row read is a note of one of `ids` (by id, the events' candidate_id index) or one naming
            # it (the partial indexes on REVIEW_NOTED_ID, catalog/schema.py): no scan of the events, which
            # grow with every run (review29 #10: this read them all on each `mlc remove`).
            rows += self.db.execute(
                f"SELECT id AS cid, reason FROM candidates WHERE id IN ({marks}) AND {REVIEW_NOTES} UNION ALL "
                f"SELECT candidate_id AS cid, reason FROM events WHERE candidate_id IN ({marks}) AND {REVIEW_NOTES} "
                f"UNION ALL SELECT id AS cid, reason FROM candidates WHERE {REVIEW_NOTES} AND {REVIEW_NOTED_ID} "
                f"IN ({marks}) UNION ALL SELECT candidate_id AS cid, reason FROM events WHERE {REVIEW_NOTES} "
                f"AND {REVIEW_NOTED_ID} IN ({marks})", (*part, *part, *map(str, part), *map(str, part))).fetchall()
        for r in rows:
            if (pair := review_partner(r["reason"])) is None:
                continue
            for me, other in ((r["cid"], pair[0]), (pair[0], r["cid"])):
                if me in wanted and other != me:
                    out.setdefault(me, {})[other] = max(pair[2], out.get(me, {}).get(other, 0.0))
        return out

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
