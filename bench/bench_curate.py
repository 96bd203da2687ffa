"""Verify + hash throughput: our `inspect_files` vs imagededup PHash encoding + fastai verify_images.

The file set is the 398 fixture photos (<= 400 px) plus large JPEGs made by upscaling fixtures to
2000-4000 px (written to a temp dir, outside the project). Both sides see the same files from a
warm page cache. Ours verifies (whole-file decode, size/mode rules), sha256s and phashes every file
in one pass; the baseline needs two passes for less: imagededup's `encode_images` (full decode,
phash) plus fastai's `verify_images` (open + draft + load).

    .venv/bin/python bench/bench_curate.py            # 398 fixtures + 150 large JPEGs
    .venv/bin/python bench/bench_curate.py --quick    # 398 fixtures + 30 large JPEGs
    .venv/bin/python bench/bench_curate.py --large 0  # the 398 fixtures alone (thumbnails, <= 400 px)
    .venv/bin/python bench/bench_curate.py --large 0 --fixtures pets   # 1,200 photos of 180 x 180

Each run of each side is a fresh Python process, as each tool's users run it: `mlc curate` does not
import torch, while fastai's verify_images needs it. (Run in one process that had imported fastai for
the baseline, ours paid for forking a 850 MB process: +0.6 ms per thumbnail.) The clock starts after
the imports, so neither side is charged for its start-up (fastai's import alone costs seconds).
Besides wall time, each side's CPU time (the process + its reaped worker processes, from getrusage)
is printed: on a machine shared with other jobs, wall time mostly measures the others.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import os
import resource
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

FIXTURES = Path(__file__).resolve().parents[2] / "shared/fixtures"
SETS = {"hymenoptera": ("hymenoptera",), "pets": ("pets",), "all": ("hymenoptera", "pets")}


def build_file_set(out_dir: Path, n_large: int, fixture_set: str = "hymenoptera", seed: int = 0) -> list[Path]:
    "Symlink the fixtures and write `n_large` upscaled JPEGs, all into one flat directory."
    rng = np.random.default_rng(seed)
    photos = sorted(p for name in SETS[fixture_set] for p in (FIXTURES / name).rglob("*.jpg"))
    paths = []
    for photo in photos:
        link = out_dir / f"{photo.parent.parent.name}_{photo.parent.name}_{photo.name}"
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


def cpu_seconds() -> float:
    "CPU time of this process and of its finished (reaped) children: both sides' pools are joined."
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_ours(paths):
    start, cpu = time.perf_counter(), cpu_seconds()
    records = inspect_files(paths)
    return time.perf_counter() - start, records, cpu_seconds() - cpu


def run_baseline(image_dir: Path, paths):
    from fastai.vision.utils import verify_images
    from imagededup.methods import PHash

    start, cpu = time.perf_counter(), cpu_seconds()
    encodings = PHash(verbose=False).encode_images(image_dir=str(image_dir))
    encode_s = time.perf_counter() - start
    failed = verify_images(paths)
    return time.perf_counter() - start, encode_s, encodings, failed, cpu_seconds() - cpu


def one_side(side: str, image_dir: Path, result: Path) -> None:
    "Child process: run one side once on the files of `image_dir`; write its figures to `result`."
    paths = sorted(p for p in image_dir.iterdir() if p.suffix == ".jpg")
    if side == "ours":
        seconds, records, cpu = run_ours(paths)
        out = dict(seconds=seconds, cpu=cpu, records=[[r.path, r.ok, r.phash] for r in records])
    else:
        import imagededup.methods.hashing  # noqa: F401 -- creates its INFO-level logger, silenced next
        logging.getLogger("imagededup.methods.hashing").setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", category=FutureWarning)
        from fastai.vision.utils import verify_images  # noqa: F401 -- imported before the clock starts
        seconds, encode_s, encodings, failed, cpu = run_baseline(image_dir, paths)
        out = dict(seconds=seconds, cpu=cpu, encode_s=encode_s, encodings=encodings, failed=len(failed))
    result.write_text(json.dumps(out))


def in_fresh_process(side: str, image_dir: Path) -> dict:
    result = image_dir.parent / f"{side}.json"
    subprocess.run([sys.executable, __file__, "--side", side, "--dir", str(image_dir), "--result", str(result)],
                   check=True)
    return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large", type=int, default=150, help="number of 2000-4000 px JPEGs to add")
    parser.add_argument("--quick", action="store_true", help="only 30 large JPEGs")
    parser.add_argument("--repeat", type=int, default=2, help="runs per side; the best is reported")
    parser.add_argument("--fixtures", choices=SETS, default="hymenoptera",
                        help="the thumbnails: hymenoptera (398 photos <= 400 px, the default), pets (1,200 "
                             "photos of 180 x 180) or all")
    parser.add_argument("--side", choices=("ours", "baseline"), help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        one_side(args.side, args.dir, args.result)
        return
    n_large = 30 if args.quick else args.large
    with tempfile.TemporaryDirectory() as tmp:
        image_dir = Path(tmp) / "files"
        image_dir.mkdir()
        paths = build_file_set(image_dir, n_large, args.fixtures)
        total_mb = sum(p.stat().st_size for p in paths) / 2**20
        for p in paths:  # warm the page cache for both sides
            p.read_bytes()
        print(f"{len(paths)} files ({len(paths) - n_large} {args.fixtures} fixtures <= 400 px, {n_large} JPEGs 2000-4000 px), "
              f"{total_mb:.0f} MiB, {os.cpu_count()} CPUs")
        ours_runs, base_runs = [], []
        for _ in range(args.repeat):  # interleave, so background load hits both sides alike
            ours_runs.append(in_fresh_process("ours", image_dir))
            base_runs.append(in_fresh_process("baseline", image_dir))
        ours_s, base_s = min(r["seconds"] for r in ours_runs), min(r["seconds"] for r in base_runs)
        ours_cpu, base_cpu = min(r["cpu"] for r in ours_runs), min(r["cpu"] for r in base_runs)
        records, encodings = ours_runs[0]["records"], base_runs[0]["encodings"]
        # the encode share of the fastest baseline run itself: minima of different runs do not add up
        encode_s = min(base_runs, key=lambda r: r["seconds"])["encode_s"]
        failed = base_runs[0]["failed"]
        # Fidelity of our draft-decoded hash: bits that differ from imagehash.phash on a full decode.
        full = {Path(p).name: str(imagehash.phash(Image.open(p).convert("RGB"))) for p in paths}
        draft_bits = np.array([hamming(h, full[Path(p).name]) for p, _, h in records])
        is_large = np.array([Path(p).name.startswith("large_") for p, _, _ in records])

    ok = sum(r_ok for _, r_ok, _ in records)
    by_name = {Path(p).name: h for p, _, h in records}
    diffs = np.array([hamming(by_name[name], h) for name, h in encodings.items() if by_name.get(name)])
    print(f"ours      inspect_files (verify+sha256+phash): {ours_s:6.2f} s  {len(paths) / ours_s:6.1f} img/s  "
          f"({ok} ok, {len(paths) - ok} rejected)")
    print(f"baseline  imagededup encode_images + fastai verify_images: {base_s:6.2f} s  "
          f"{len(paths) / base_s:6.1f} img/s  (encode {encode_s:.2f} s + verify {base_s - encode_s:.2f} s; "
          f"{len(encodings)} hashed, {failed} failed)")
    print(f"ratio     baseline / ours = {base_s / ours_s:.2f}x")
    print(f"cpu       ours {ours_cpu:.2f} s ({ours_cpu / len(paths) * 1e3:.2f} ms/img), baseline {base_cpu:.2f} s "
          f"({base_cpu / len(paths) * 1e3:.2f} ms/img): baseline / ours = {base_cpu / ours_cpu:.2f}x "
          f"(best of {args.repeat} fresh processes each; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    print(f"hash agreement with imagededup PHash: mean {diffs.mean():.2f} bits, "
          f"95th pct {np.percentile(diffs, 95):.0f}, max {diffs.max()} (different resize pipelines)")
    for name, part in (("fixtures", draft_bits[~is_large]), ("large", draft_bits[is_large])):
        if len(part):
            print(f"draft-decode hash vs full-decode imagehash.phash, {name}: mean {part.mean():.2f} bits, "
                  f"max {part.max()}, identical {np.mean(part == 0):.0%}")


if __name__ == "__main__":
    main()
