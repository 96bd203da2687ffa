"""Scoring a curate's candidate pairs on a process pool, before they are decided.

`dedup.resolve_duplicates` asks `similarity.FileSimilarity` for one pair at a time, in the order it
decides them; each score is a pure function of the two files. On thumbnails that confirmation was
half of a curate and ran in the main process while the hashing pool sat idle (bench_curate_stage,
docs/benchmarks.md). So the pairs are scored first, on both cores, into the process-wide memo
(`similarity.PAIR_SCORES`) that FileSimilarity reads; whatever the pool could not score is scored
as before, one at a time in this process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Sequence
from concurrent.futures.process import BrokenProcessPool

from mlc_pipeline.curate.hashing import new_pool
from mlc_pipeline.curate.phash import one_blas_thread
from mlc_pipeline.curate import similarity
from mlc_pipeline.curate.similarity import FileSimilarity

log = logging.getLogger(__name__)

# Below this many unscored pairs, starting the pool costs more than it saves.
MIN_PAIRS = 24
PAIRS_PER_CHUNK = 16


def prefetch_scores(confirm: FileSimilarity, pairs: Sequence[tuple[Hashable, Hashable]],
                    workers: int | None = None) -> int:
    """Score on a pool the `pairs` (of `confirm`'s keys) it has not scored yet; returns how many."""
    workers = workers or os.cpu_count() or 1
    todo, seen = [], set()
    for a, b in pairs:
        fa, fb = confirm.file_of(a), confirm.file_of(b)
        if fa is None or fb is None:
            continue
        key = tuple(sorted((fa, fb)))
        if key not in seen and confirm.kept_score(a, b) is None:
            seen.add(key)
            todo.append(key)
    if workers <= 1 or len(todo) < MIN_PAIRS:
        return 0
    todo.sort()         # pairs sharing a file side by side, so a chunk decodes it once
    chunks = [todo[i:i + PAIRS_PER_CHUNK] for i in range(0, len(todo), PAIRS_PER_CHUNK)]
    done = 0
    try:
        with one_blas_thread(), new_pool(workers) as pool:
            for chunk, scores in zip(chunks, pool.map(score_chunk, chunks)):
                for key, (score, read_a, read_b) in zip(chunk, scores):
                    if score is not None:
                        similarity.PAIR_SCORES.put(key, score)
                        for file, read in zip(key, (read_a, read_b)):     # what the worker scored
                            similarity.READ_DIGESTS.put(file, read)
                        done += 1
    except (BrokenProcessPool, OSError) as exc:
        # Each file was decoded by verification already; whatever is left is scored in this process.
        log.warning("scoring near-duplicate candidates on a pool failed (%s): %d of %d scored there, "
                    "the rest one at a time", exc, done, len(todo))
    return done


def score_chunk(keys: list[tuple[tuple, tuple]]) -> list[tuple[float | None, str | None, str | None]]:
    """In a pool worker: the score of each pair of (path, size, mtime) file identities, with the
    sha256 of each file's bytes as read to score it (the caller keeps a score only under those)."""
    paths = {f: f[0] for key in keys for f in key}
    sim = FileSimilarity(paths)
    scores = [sim(a, b) for a, b in keys]
    read = similarity.READ_DIGESTS.get
    return [(s, read(sim.file_of(a)), read(sim.file_of(b))) for s, (a, b) in zip(scores, keys)]
