import numpy as np
import pytest
from PIL import Image, ImageEnhance

from badfiles import fixture_photos
from mlc_pipeline.curate.dedup import DEFAULT_THRESHOLD
from mlc_pipeline.curate.hashing import hex_to_uint64, inspect_files
from mlc_pipeline.curate.neardup import (find_pairs, find_pairs_bruteforce, group_hashes, group_pairs,
                                  plan_chunks)


def flip_bits(value: int, n_bits: int, rng) -> int:
    for bit in rng.choice(64, n_bits, replace=False):
        value ^= 1 << int(bit)
    return value


def random_with_planted(n: int, threshold: int, seed: int = 0) -> np.ndarray:
    "Uniform random hashes, plus copies at distances 0..threshold+1 and some exact duplicates."
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    for src, dst in zip(rng.integers(0, n, n // 10), rng.integers(0, n, n // 10)):
        hashes[dst] = flip_bits(int(hashes[src]), int(rng.integers(0, threshold + 2)), rng)
    hashes[:5] = hashes[5]
    return hashes


@pytest.mark.parametrize("n,threshold", [(3000, 0), (3000, 3), (5000, 8), (20000, 8), (4000, 12), (500, 20)])
def test_equals_brute_force(n, threshold):
    hashes = random_with_planted(n, threshold, seed=n + threshold)
    pairs = find_pairs(hashes, threshold, method="index")  # the compiled multi-index search, forced
    assert np.array_equal(pairs, find_pairs_bruteforce(hashes, threshold))
    assert np.array_equal(pairs, find_pairs(hashes, threshold))  # whatever the planner picks
    assert len(pairs) > n // 20  # the planted pairs are in there
    assert np.all(pairs[:, 0] < pairs[:, 1])


def test_skewed_buckets():
    # Real phashes cluster: thousands of near-identical hashes share chunk values, so the kernel's
    # pair buffer must grow many times over.
    rng = np.random.default_rng(1)
    base = int(rng.integers(0, 2**63))
    cluster = [flip_bits(base, int(rng.integers(0, 4)), rng) for _ in range(1500)]
    hashes = np.concatenate([np.array(cluster, dtype=np.uint64),
                             rng.integers(0, 2**63, 1500, dtype=np.uint64)])
    pairs = find_pairs(hashes, 8, method="index")
    assert np.array_equal(pairs, find_pairs_bruteforce(hashes, 8))
    assert len(pairs) > 1_000_000  # the cluster is one big clique


def test_plans_are_exact_by_pigeonhole():
    for n in (10, 1000, 100_000, 1_000_000, 10_000_000):
        for threshold in range(0, 24):
            plan = plan_chunks(n, threshold)
            if plan is not None:
                assert sum(plan.bits) == 64
                assert sum(r + 1 for r in plan.radii) >= threshold + 1
    assert plan_chunks(1_000_000, 8).bits == (22, 21, 21)
    assert plan_chunks(2_000, 10) is None            # small inputs: brute force, no kernel to load
    assert plan_chunks(2_000, 10, force_index=True) is not None


def test_a_bad_method_is_refused():
    with pytest.raises(ValueError, match="auto, index or brute"):
        find_pairs(np.arange(10, dtype=np.uint64), 4, method="fast")


def test_grouping_is_transitive():
    a = 0
    b = a ^ 0b1111          # 4 bits from a
    c = b ^ (0b1111 << 8)   # 4 bits from b, 8 from a
    far = 2**64 - 1
    hashes = np.array([a, far, c, b, a], dtype=np.uint64)
    assert find_pairs(hashes, 4).tolist() == [[0, 3], [0, 4], [2, 3], [3, 4]]
    labels = group_hashes(hashes, 4)
    assert labels.tolist() == [0, 1, 0, 0, 0]
    assert np.array_equal(labels, group_pairs(5, find_pairs(hashes, 4)))
    assert group_pairs(3, np.zeros((0, 2), int)).tolist() == [0, 1, 2]
    assert len(find_pairs(np.zeros(0, np.uint64), 8)) == 0


def test_many_exact_copies_group_without_listing_pairs():
    hashes = np.full(200_000, 12345, dtype=np.uint64)
    assert group_hashes(hashes, 8).max() == 0  # O(n): no 2e10 pair list


# ---------------------------------------------------------------------------------------------
# Real photos


@pytest.mark.skipif(not fixture_photos(), reason="fixture photos missing (../shared/fixtures)")
def test_edited_copies_are_near_duplicates_and_distinct_photos_are_not(tmp_path):
    photos = fixture_photos()
    copies = []
    for k, path in enumerate(photos[::10]):  # 40 photos x 4 edits
        im = Image.open(path).convert("RGB")
        w, h = im.size
        im.save(tmp_path / f"{k}_q60.jpg", quality=60)
        im.resize((w * 7 // 10, h * 7 // 10), Image.Resampling.LANCZOS).save(tmp_path / f"{k}_70pc.jpg", quality=90)
        im.crop((w // 100, h // 100, w - w // 100, h - h // 100)).save(tmp_path / f"{k}_crop.jpg", quality=90)
        ImageEnhance.Brightness(im).enhance(1.15).save(tmp_path / f"{k}_bright.jpg", quality=90)
        copies += [(k, tmp_path / f"{k}_{e}.jpg") for e in ("q60", "70pc", "crop", "bright")]
    records = inspect_files(photos + [p for _, p in copies])
    hashes = hex_to_uint64([r.phash for r in records])
    pairs = find_pairs(hashes, DEFAULT_THRESHOLD)
    n = len(photos)
    photo_of = np.array(list(range(n)) + [k * 10 for k, _ in copies])
    found = {tuple(p) for p in pairs.tolist()}
    assert {(k * 10, n + c) for c, (k, _) in enumerate(copies)} <= found  # every copy found
    assert np.all(photo_of[pairs[:, 0]] == photo_of[pairs[:, 1]])          # nothing across photos
