"""Measure phash distances of true near-duplicates vs distinct photos, to choose the dedup threshold.

For every fixture photo we write edited copies (JPEG re-encodes, downscales, slight crops,
brightening, a PNG copy) to a temp dir and hash everything with the production path
(`inspect_files`). True pairs = (original, its copy); distinct pairs = every pair of different
fixture photos. Prints recall per edit and false-positive pairs per threshold.

    .venv/bin/python bench/calibrate_threshold.py [--fixtures ../shared/fixtures/hymenoptera]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mlc_pipeline.curate.hashing import hex_to_uint64, inspect_files, popcount64  # noqa: E402
from mlc_pipeline.curate.verify import VerifyLimits  # noqa: E402
from mlc_pipeline.images import load_rgb  # noqa: E402


def crop(im: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    w, h = im.size
    return im.crop((round(w * left), round(h * top), round(w * (1 - right)), round(h * (1 - bottom))))


def resize(im: Image.Image, scale: float) -> Image.Image:
    return im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)


# name -> (edit, save format, save options)
EDITS = {
    "jpeg-q50": (lambda im: im, "JPEG", dict(quality=50)),
    "jpeg-q70": (lambda im: im, "JPEG", dict(quality=70)),
    "jpeg-q95": (lambda im: im, "JPEG", dict(quality=95)),
    "png": (lambda im: im, "PNG", {}),
    "resize-50%": (lambda im: resize(im, 0.5), "JPEG", dict(quality=90)),
    "resize-70%": (lambda im: resize(im, 0.7), "JPEG", dict(quality=90)),
    "resize-90%": (lambda im: resize(im, 0.9), "JPEG", dict(quality=90)),
    "crop-2%-centre": (lambda im: crop(im, 0.01, 0.01, 0.01, 0.01), "JPEG", dict(quality=90)),
    "crop-5%-centre": (lambda im: crop(im, 0.025, 0.025, 0.025, 0.025), "JPEG", dict(quality=90)),
    "crop-5%-corner": (lambda im: crop(im, 0.05, 0.05, 0, 0), "JPEG", dict(quality=90)),
    "bright+15%": (lambda im: ImageEnhance.Brightness(im).enhance(1.15), "JPEG", dict(quality=90)),
    "bright+30%": (lambda im: ImageEnhance.Brightness(im).enhance(1.30), "JPEG", dict(quality=90)),
}


def write_copies(originals: list[Path], out_dir: Path) -> dict[str, list[Path]]:
    copies = {name: [] for name in EDITS}
    for k, path in enumerate(originals):
        im = load_rgb(path)
        for name, (edit, fmt, options) in EDITS.items():
            out = out_dir / f"{k:04d}_{name.replace('%', 'pc').replace('+', 'p')}.{fmt.lower()}"
            edit(im).save(out, fmt, **options)
            copies[name].append(out)
    return copies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fixtures", default=str(Path(__file__).resolve().parents[2] / "shared/fixtures/hymenoptera"))
    parser.add_argument("--max-threshold", type=int, default=16)
    args = parser.parse_args()

    originals = sorted(Path(args.fixtures).rglob("*.jpg"))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        copies = write_copies(originals, Path(tmp))
        # Size rules are not under test here (a 50% copy of a 400x117 photo is 'too-small').
        records = inspect_files(originals + [p for name in EDITS for p in copies[name]],
                                VerifyLimits(min_side=1, max_aspect=100))
        print(f"{len(originals)} photos x {len(EDITS)} edits written and hashed in {time.perf_counter() - t0:.1f} s")
    bad = [r for r in records if not r.ok]
    assert not bad, f"unexpected failures: {bad[:3]}"
    hashes = hex_to_uint64([r.phash for r in records])
    n = len(originals)
    orig = hashes[:n]
    true_dist = {name: popcount64(orig ^ hashes[n * (1 + k): n * (2 + k)]) for k, name in enumerate(EDITS)}
    i, j = np.triu_indices(n, k=1)
    distinct = popcount64(orig[i] ^ orig[j])

    print("\ndistance of each edited copy to its original (percentiles 50/90/99/max):")
    for name, d in true_dist.items():
        p50, p90, p99 = np.percentile(d, [50, 90, 99])
        print(f"  {name:15s} {p50:4.0f} {p90:4.0f} {p99:4.0f} {d.max():4d}")
    print(f"distinct photo pairs: {len(distinct)}; smallest distances: {np.sort(distinct)[:10].tolist()}")
    close = np.flatnonzero(distinct <= 12)
    for k in close:
        print(f"  close distinct pair d={distinct[k]}: {originals[i[k]].name} ~ {originals[j[k]].name}")

    # More distinct-photo pairs for the tail: every item (original or copy) against every item derived
    # from a *different* photo (~13M pairs; correlated, but it probes rates far below 1/79,003).
    photo = np.tile(np.arange(n), 1 + len(EDITS))
    cross_hist = np.zeros(65, np.int64)
    for a in range(0, len(hashes), 256):
        d = popcount64(hashes[a:a + 256, None] ^ hashes[None, :])
        rows = np.arange(a, a + len(d))[:, None]
        other = (photo[rows] != photo[None, :]) & (rows < np.arange(len(hashes))[None, :])
        cross_hist += np.bincount(d[other], minlength=65)
    cross_cum = np.cumsum(cross_hist)
    print(f"cross-photo pairs incl. copies: {cross_cum[-1]}; distance percentiles of distinct originals "
          f"1/5/50: {np.percentile(distinct, [1, 5, 50]).tolist()}")

    all_true = np.concatenate(list(true_dist.values()))
    no_crop = np.concatenate([d for name, d in true_dist.items() if not name.startswith("crop")])
    print("\nthreshold | recall all edits | recall w/o crops | crop-5% recall | "
          "distinct pairs <= t (rate) | cross-photo pairs <= t (rate)")
    for t in range(0, args.max_threshold + 1):
        fp = int((distinct <= t).sum())
        crop5 = np.concatenate([true_dist["crop-5%-centre"], true_dist["crop-5%-corner"]])
        print(f"{t:9d} | {np.mean(all_true <= t):16.3f} | {np.mean(no_crop <= t):16.3f} | "
              f"{np.mean(crop5 <= t):14.3f} | {fp} ({fp / len(distinct):.2e}) | "
              f"{cross_cum[t]} ({cross_cum[t] / cross_cum[-1]:.2e})")


if __name__ == "__main__":
    main()
