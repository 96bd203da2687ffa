"""curate/lookalikes.py's `window_bits`: the one comparison of whole images with a photo's corner
windows and mirror views (takedown holds, and curate's published test images), searched with
neardup.find_pairs; here against every pair, counted one by one."""

import numpy as np

from mlc_pipeline.curate.hashing import hamming, uint64_to_hex
from mlc_pipeline.curate.lookalikes import CORNER_WINDOWS, LOOKALIKE_BITS, MIRROR_VIEWS, lookalike_bits, window_bits


def test_window_bits_finds_every_pair_a_full_comparison_finds():
    rng = np.random.default_rng(5)
    photos = []
    for k in range(40):
        # a photo taken down keeps 4 corner windows and 3 mirror views (or the corners alone, as some
        # tests do); a published test image 18 crop windows more (hashing.corner_phashes, crop_windows)
        windows = rng.integers(0, 2**63, size=25, dtype=np.uint64) | (np.uint64(k % 2) << np.uint64(63))
        photos.append({"phash": uint64_to_hex(windows[:1])[0], "view_hashes": None,
                       "corner_hashes": ",".join(uint64_to_hex(windows[:(7, CORNER_WINDOWS, 25)[k % 3]]))})
    photos.append({"phash": photos[0]["phash"], "view_hashes": None, "corner_hashes": None})     # none kept
    rows = []
    for k in range(300):       # copies of a window, each a few bits off, and random images
        if k % 3:
            hashes = photos[k % 40]["corner_hashes"].split(",")
            base = int(hashes[k % len(hashes)], 16)
            flips = rng.choice(64, size=int(rng.integers(0, 12)), replace=False)
            rows.append({"phash": f"{base ^ int(sum(1 << int(b) for b in flips)):016x}", "view_hashes": None})
        else:
            rows.append({"phash": uint64_to_hex(rng.integers(0, 2**63, size=1, dtype=np.uint64))[0], "view_hashes": None})
    expected = {}
    for i, r in enumerate(rows):
        for j, p in enumerate(photos):
            kept = [hamming(r["phash"], w) for w in (p["corner_hashes"] or "").split(",") if w]
            mirrors = CORNER_WINDOWS + MIRROR_VIEWS
            least = [min(kept[:CORNER_WINDOWS], default=64), min(kept[CORNER_WINDOWS:mirrors], default=64),
                     min(kept[mirrors:], default=64)]
            least = tuple(x if x <= LOOKALIKE_BITS else 64 for x in least)
            if min(least) <= LOOKALIKE_BITS:
                expected[(i, j)] = least
    found = window_bits(rows, photos, LOOKALIKE_BITS)
    assert found == expected
    assert all(any(bits[kind] < 64 for bits in found.values()) for kind in range(3))
    assert window_bits(rows, photos, -1) == {} and window_bits([], photos, 8) == {}
    # the takedown's matrices are the same pairs (64 beyond LOOKALIKE_BITS; a crop window counts as a corner)
    _, corners, flipped = lookalike_bits(rows, photos)
    assert {(i, j): (int(corners[i, j]), int(flipped[i, j])) for i, j in zip(*np.nonzero(
        np.minimum(corners, flipped) <= LOOKALIKE_BITS))} == {
        pair: (min(corner, crop), mirror) for pair, (corner, mirror, crop) in expected.items()}
