"""Copies of published test images: which ones curate keeps out of training, and which other pictures it
drops as such copies (docs/curation.md, "Test images of earlier versions never train").

Test images: every `--every`-th fixture photo (hymenoptera + pets), published as the build publishes it
(`load_rgb(max_side=256)`, JPEG quality 90), hashed as `stage.published_test_images` hashes it (its views,
and its kept windows: `hashing.corner_phashes`). Copies: cut from each original photo (not from the
published file), saved at JPEG quality 85: centre crops (cropN, N % off every side), corner crops
(cornerN, off the left and top), one-sided crops (leftN, off the left), and the mirror image. A copy
counts when curate's two steps against published test images drop it as a copy of its own test image:
`decide.cross_duplicates` (every view within the threshold, confirmed by pixels) and then
`decide.window_copies` (the whole image within LOOKALIKE_BITS of a window or mirror view, confirmed).

False pairs: every fixture original (1,598) against every test image but its own; with `--world`, every
image of a generated world's catalog against the test images of its published v1 (all distinct
pictures: every pair found there is false), hashed again with today's code. Runs on older code too
(the before figures: run this file from a checkout of the older commit).

    .venv/bin/python bench/bench_test_copies.py --every 8 --world /tmp/gw28/data     # ~1-2 min on 2 cores
"""

from __future__ import annotations

import argparse
import inspect
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mlc_pipeline.catalog import Catalog  # noqa: E402
from mlc_pipeline.config import CurateSettings  # noqa: E402
from mlc_pipeline.curate import decide  # noqa: E402
from mlc_pipeline.curate.hashing import corner_phashes, inspect_files  # noqa: E402
from mlc_pipeline.curate.lookalikes import LOOKALIKE_BITS, window_bits  # noqa: E402
from mlc_pipeline.curate.similarity import FileSimilarity  # noqa: E402
from mlc_pipeline.curate.verify import VerifyLimits  # noqa: E402
from mlc_pipeline.images import load_rgb  # noqa: E402
from mlc_pipeline.manifest import read_manifest  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
THRESHOLD = CurateSettings().hamming_threshold
EDITS = ("corner5", "corner7.5", "corner10", "left8", "mirror", "crop15", "crop20", "corner15", "corner20",
         "left15", "left20")
LIMITS = VerifyLimits(min_side=1, max_aspect=float("inf"))
# A published test image's kept windows: with the crop windows where this code has them (since 2026-12-07).
WINDOW_OPTIONS = {"crop_windows": True} if "crop_windows" in inspect.signature(corner_phashes).parameters else {}


def edit(im: Image.Image, name: str) -> Image.Image:
    w, h = im.size
    if name == "mirror":
        return ImageOps.mirror(im)
    kind, c = name.rstrip("0123456789."), float(name.lstrip("cropnerlft")) / 100
    dx, dy = round(w * c), round(h * c)
    return im.crop({"crop": (dx, dy, w - dx, h - dy), "corner": (dx, dy, w, h), "left": (dx, 0, w, h)}[kind])


class Recorded(FileSimilarity):
    "FileSimilarity that keeps every score it gives, by pair of keys."

    def __call__(self, a, b):
        score = super().__call__(a, b)
        Recorded.scores[(a, b)] = score
        return score


def rows_of(paths: list, first_id: int = 0) -> list[dict]:
    records = inspect_files(paths, LIMITS)
    assert all(r.ok for r in records), [r.reason for r in records if not r.ok][:3]
    return [{"id": first_id + k, "phash": r.phash, "view_hashes": r.view_hashes, "sha256": r.sha256,
             "label": "other", "img_width": r.width, "img_height": r.height, "first_seen_at": 0.0,
             "bytes": r.n_bytes, "file_path": str(r.path)} for k, r in enumerate(records)]


def tests_of(paths: list) -> list[dict]:
    tests = rows_of(paths)
    for k, t in enumerate(tests):
        t.update(id=("test", k), corner_hashes=corner_phashes(t["file_path"], LIMITS, **WINDOW_OPTIONS))
    return tests


def copies_of_tests(tests: list[dict], rows: list[dict]) -> dict:
    "What curate drops: row id -> (test id, bits, kind), as `decide.resolve` finds them."
    Recorded.scores = {}
    confirm = Recorded({r["id"]: r["file_path"] for r in tests + rows})
    confirm.memo = type(confirm.memo)(1_000_000)           # this run's own: no score of another run
    mirrored = decide.MirroredSimilarity(confirm.paths)
    mirrored.memo = type(mirrored.memo)(1_000_000)
    found = decide.cross_duplicates(tests, rows, THRESHOLD, confirm)
    found.update(decide.window_copies(tests, [r for r in rows if r["id"] not in found], confirm, mirrored))
    return found


def false_pairs(name: str, tests: list[dict], rows: list[dict], own: dict) -> None:
    "Rows dropped as a copy of a test image they are not a copy of (`own`: row id -> its test id)."
    start = time.perf_counter()
    windows = window_bits(rows, tests, LOOKALIKE_BITS)
    found = copies_of_tests(tests, rows)
    false = {rid: f for rid, f in found.items() if own.get(rid) != f[0]}
    scores = [s for (a, b), s in Recorded.scores.items() if s is not None and own.get(b) != a]
    print(f"{name}: {len(rows)} images x {len(tests)} test images; within {LOOKALIKE_BITS} bits of a window "
          f"or mirror view: {sum(1 for (i, j) in windows if own.get(rows[i]['id']) != tests[j]['id'])} pairs; "
          f"scored pairs of different pictures: {len(scores)}, best {max(scores, default=0):.3f}; "
          f"dropped as a copy of another picture: {len(false)} {sorted(false.items())[:5]} "
          f"({time.perf_counter() - start:.1f} s)")


def world_pairs(root: Path) -> None:
    manifest = read_manifest(root / "datasets" / "default" / "v1" / "manifest.csv")
    published = [r for r in manifest if r["split"] == "test"]
    tests = tests_of([root / "datasets" / "default" / "v1" / r["path"] for r in published])
    own_ids = {int(r["candidate_id"]) for r in published}
    with Catalog(root / "catalog.sqlite", readonly=True) as catalog:
        paths = [r["file_path"] for r in catalog.candidates() if r["phash"] and r["file_path"]
                 and r["id"] not in own_ids]
    false_pairs(f"generated world {root}", tests, rows_of([root / p for p in paths], 10**6), {})


def main() -> None:
    global THRESHOLD
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--every", type=int, default=8, help="publish every n-th fixture photo as a test image")
    parser.add_argument("--world", type=Path, help="a generated world's data root with a published v1")
    parser.add_argument("--threshold", type=int, default=THRESHOLD, help="curate.hamming_threshold")
    parser.add_argument("--edits", nargs="+", default=EDITS)
    parser.add_argument("--no-false", action="store_true", help="skip the fixtures' false pairs")
    parser.add_argument("--fixtures", type=Path, default=FIXTURES, help="default: %(default)s")
    args = parser.parse_args()
    THRESHOLD = args.threshold
    originals = sorted((args.fixtures / "hymenoptera").rglob("*.jpg")) + sorted((args.fixtures / "pets").rglob("*.jpg"))
    assert originals, f"no fixture photos under {args.fixtures}"
    chosen = list(range(0, len(originals), args.every))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        published, copies = [], []
        for n, k in enumerate(chosen):
            published.append(out / f"test_{k:05d}.jpg")
            load_rgb(originals[k], max_side=256).save(published[-1], "JPEG", quality=90, subsampling="4:2:0")
            with Image.open(originals[k]) as im:
                im = im.convert("RGB")
            for name in args.edits:
                copies.append((n, name, out / f"copy_{k:05d}_{name}.jpg"))
                edit(im, name).save(copies[-1][2], quality=85)
        start = time.perf_counter()
        tests = tests_of(published)
        rows = rows_of([p for _, _, p in copies])
        found = copies_of_tests(tests, rows)
        print(f"{len(tests)} test images (options {WINDOW_OPTIONS}), {len(rows)} copies, threshold {THRESHOLD}: "
              f"{time.perf_counter() - start:.1f} s")
        print("| copy of a published test image | " + " | ".join(args.edits) + " |")
        print("|---|" + "---|" * len(args.edits))
        kinds = {}
        for (n, name, _), r in zip(copies, rows):
            hit = found.get(r["id"])
            kinds.setdefault(name, []).append(hit[2] if hit and hit[0] == ("test", n) else None)
        print("| kept out of training | " + " | ".join(
            f"{np.mean([k is not None for k in kinds[e]]):.3f}" for e in args.edits) + " |")
        print("| ... by (near / corner / mirror / crop) | " + " | ".join(
            "/".join(str(sum(k == kind for k in kinds[e])) for kind in ("near", "corner", "mirror", "crop"))
            for e in args.edits) + " |")
        if not args.no_false:
            own = {k: ("test", n) for n, k in enumerate(chosen)}
            false_pairs("fixture originals", tests, rows_of(originals, 0), own)
    if args.world:
        world_pairs(args.world)


if __name__ == "__main__":
    main()
