"""Verify + hash throughput: our `inspect_files` vs imagededup PHash encoding + fastai verify_images.

The file set is the 398 fixture photos (<= 400 px) plus large JPEGs made by upscaling fixtures to
2000-4000 px (written to a temp dir, outside the project). Both sides see the same files from a
warm page cache. Ours verifies (whole-file decode, size/mode rules), sha256s and phashes every file
in one pass; the baseline needs two passes for less: imagededup's `encode_images` (full decode,
phash) plus fastai's `verify_images` (open + draft + load).

    .venv/bin/python bench/bench_curate.py            # 398 fixtures + 150 large JPEGs
    .venv/bin/python bench/bench_curate.py --quick    # 398 fixtures + 30 large JPEGs
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mlc_pipeline.curate.hashing import hamming, inspect_files  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[2] / "shared/fixtures/hymenoptera"


def build_file_set(out_dir: Path, n_large: int, seed: int = 0) -> list[Path]:
    "Symlink the fixtures and write `n_large` upscaled JPEGs, all into one flat directory."
    rng = np.random.default_rng(seed)
    photos = sorted(FIXTURES.rglob("*.jpg"))
    paths = []
    for photo in photos:
        link = out_dir / f"{photo.parent.name}_{photo.name}"
        link.symlink_to(photo.resolve())
        paths.append(link)
    for k, photo in enumerate(rng.choice(photos, n_large, replace=False)):
        im = Image.open(photo).convert("RGB")
        scale = rng.integers(2000, 4001) / max(im.size)
        big = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.BICUBIC)
        path = out_dir / f"large_{k:04d}.jpg"
        big.save(path, quality=90)
        paths.append(path)
    return paths


def run_ours(paths):
    start = time.perf_counter()
    records = inspect_files(paths)
    return time.perf_counter() - start, records


def run_baseline(image_dir: Path, paths):
    from fastai.vision.utils import verify_images
    from imagededup.methods import PHash

    start = time.perf_counter()
    encodings = PHash(verbose=False).encode_images(image_dir=str(image_dir))
    encode_s = time.perf_counter() - start
    failed = verify_images(paths)
    return time.perf_counter() - start, encode_s, encodings, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large", type=int, default=150, help="number of 2000-4000 px JPEGs to add")
    parser.add_argument("--quick", action="store_true", help="only 30 large JPEGs")
    parser.add_argument("--repeat", type=int, default=2, help="runs per side; the best is reported")
    args = parser.parse_args()
    n_large = 30 if args.quick else args.large
    import imagededup.methods.hashing  # noqa: F401 -- creates its INFO-level logger, silenced next
    logging.getLogger("imagededup.methods.hashing").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)

    with tempfile.TemporaryDirectory() as tmp:
        image_dir = Path(tmp)
        paths = build_file_set(image_dir, n_large)
        total_mb = sum(p.stat().st_size for p in paths) / 2**20
        for p in paths:  # warm the page cache for both sides
            p.read_bytes()
        print(f"{len(paths)} files ({len(paths) - n_large} fixtures <= 400 px, {n_large} JPEGs 2000-4000 px), "
              f"{total_mb:.0f} MiB, {os.cpu_count()} CPUs")
        ours_runs, base_runs = [], []
        for _ in range(args.repeat):  # interleave, so background load hits both sides alike
            ours_runs.append(run_ours(paths))
            base_runs.append(run_baseline(image_dir, paths))
        ours_s, records = min(ours_runs, key=lambda r: r[0])
        base_s, encode_s, encodings, failed = min(base_runs, key=lambda r: r[0])
        # Fidelity of our draft-decoded hash: bits that differ from imagehash.phash on a full decode.
        full = [str(imagehash.phash(Image.open(p).convert("RGB"))) for p in paths]
        draft_bits = np.array([hamming(r.phash, h) for r, h in zip(records, full)])

    ok = sum(r.ok for r in records)
    by_name = {Path(r.path).name: r.phash for r in records}
    diffs = np.array([hamming(by_name[name], h) for name, h in encodings.items() if by_name.get(name)])
    print(f"ours      inspect_files (verify+sha256+phash): {ours_s:6.2f} s  {len(paths) / ours_s:6.1f} img/s  "
          f"({ok} ok, {len(paths) - ok} rejected)")
    print(f"baseline  imagededup encode_images + fastai verify_images: {base_s:6.2f} s  "
          f"{len(paths) / base_s:6.1f} img/s  (encode {encode_s:.2f} s + verify {base_s - encode_s:.2f} s; "
          f"{len(encodings)} hashed, {len(failed)} failed)")
    print(f"ratio     baseline / ours = {base_s / ours_s:.2f}x")
    print(f"hash agreement with imagededup PHash: mean {diffs.mean():.2f} bits, "
          f"95th pct {np.percentile(diffs, 95):.0f}, max {diffs.max()} (different resize pipelines)")
    for name, part in (("fixtures", draft_bits[: len(paths) - n_large]), ("large", draft_bits[len(paths) - n_large:])):
        if len(part):
            print(f"draft-decode hash vs full-decode imagehash.phash, {name}: mean {part.mean():.2f} bits, "
                  f"max {part.max()}, identical {np.mean(part == 0):.0%}")


if __name__ == "__main__":
    main()
