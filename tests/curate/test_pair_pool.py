import os

import pytest
from PIL import Image

from badfiles import fixture_photos
from mlc_pipeline.curate import pair_pool, similarity
from mlc_pipeline.curate.similarity import FileSimilarity

pytestmark = pytest.mark.skipif(not fixture_photos(), reason="fixture photos missing (../shared/fixtures)")


def copies(tmp_path, n=14):
    "n fixture photos, each with a corner crop and a half-size re-encode: 2n pairs, keys (k, kind)."
    paths = {}
    for k, photo in enumerate(fixture_photos()[::25][:n]):
        im = Image.open(photo).convert("RGB")
        w, h = im.size
        paths[(k, "original")] = photo
        paths[(k, "corner")] = tmp_path / f"{k}_corner.jpg"
        im.crop((round(w * 0.05), round(h * 0.05), w, h)).save(paths[(k, "corner")], quality=90)
        paths[(k, "half")] = tmp_path / f"{k}_half.jpg"
        im.resize((w // 2, h // 2)).save(paths[(k, "half")], quality=60)
    pairs = [((k, "original"), (k, cut)) for k in range(n) for cut in ("corner", "half")]
    pairs += [((k, "original"), ((k + 1) % n, "corner")) for k in range(n)]       # distinct photos
    return paths, pairs


def forget_scores(monkeypatch):
    monkeypatch.setattr(similarity, "PAIR_SCORES", similarity.PairScores(10_000))


def test_pairs_scored_on_the_pool_are_the_scores_this_process_would_compute(tmp_path, monkeypatch):
    paths, pairs = copies(tmp_path)
    forget_scores(monkeypatch)
    alone = [FileSimilarity(paths)(a, b) for a, b in pairs]
    forget_scores(monkeypatch)
    confirm = FileSimilarity(paths)
    assert pair_pool.prefetch_scores(confirm, pairs, workers=2) == len(pairs)

    def no_decoding(path, side=128):
        raise AssertionError(f"{path} decoded in this process")
    monkeypatch.setattr(similarity, "load_grey", no_decoding)
    assert [confirm(a, b) for a, b in pairs] == alone
    copies_found = sum(score >= similarity.CONFIRM for score in alone[:2 * 14])
    assert copies_found >= 24 and max(alone[2 * 14:]) < similarity.CONFIRM


def dying_chunk(keys):
    os._exit(1)      # a decoder crash in a pool worker


def test_a_pool_that_dies_leaves_the_pairs_to_be_scored_here(tmp_path, monkeypatch, caplog):
    paths, pairs = copies(tmp_path)
    forget_scores(monkeypatch)
    alone = [FileSimilarity(paths)(a, b) for a, b in pairs]
    forget_scores(monkeypatch)
    monkeypatch.setattr(pair_pool, "score_chunk", dying_chunk)
    confirm = FileSimilarity(paths)
    assert pair_pool.prefetch_scores(confirm, pairs, workers=2) == 0
    assert "the rest one at a time" in caplog.text
    assert [confirm(a, b) for a, b in pairs] == alone


def test_few_pairs_are_scored_here_without_a_pool(tmp_path, monkeypatch):
    paths, pairs = copies(tmp_path, n=4)
    forget_scores(monkeypatch)
    assert pair_pool.prefetch_scores(FileSimilarity(paths), pairs, workers=2) == 0
