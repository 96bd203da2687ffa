"""Near-duplicate quality on real photos: recall per edit, and false pairs among distinct photos.

Originals: the fixture photos (hymenoptera, 398, <= 400 px; pets, 1,200, 180 px). Edited copies of
every `--every`-th photo: resized to 50 %, JPEG quality 50, centre crops of 5 % and 10 % per side,
corner crops (5 % and 10 % off the left and top edges), 8 % off the left edge alone, rotated 3 degrees, and a watermark (a 60 %-opaque white label with text in the bottom-right
corner); and the larger crops: 15 % and 20 % per side, centred (crop15, crop20), at a corner (off the
left and top, corner15, corner20) and off one edge (left15, left20). `--edits` picks some of them.
All files go through the production `inspect_files`.

Methods, on the same files in the same run:
- `phash<=T`: the full-image phash within T bits (what curation used alone before issue 13).
- `ours`: any view (full, 5 % and 10 % centre crops) within T bits, confirmed by
  `similarity.FileSimilarity` >= CONFIRM (what curation drops now).
T is `--threshold`, by default the product's `curate.hamming_threshold` (12 since 2026-12-06; the
figures recorded before that day were taken at 10).
- imagededup's PHash / DHash / WHash / AHash `find_duplicates` at their default thresholds, when
  imagededup is installed (`pip install -e .[bench]`).

A pair counts for recall when the copy is paired with its own original. A false pair joins two
different originals (must be 0), or a copy with an original it was not made from. `--catalog`
adds the same count on a catalog's images (the default offline world serves no duplicates at all
with faults off, so every pair found there is false).

    .venv/bin/python bench/bench_dedup_quality.py                      # ~1-2 min on 2 cores
    .venv/bin/python bench/bench_dedup_quality.py --catalog data/catalog.sqlite
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mlc_pipeline.catalog import Catalog  # noqa: E402
from mlc_pipeline.config import CurateSettings  # noqa: E402
from mlc_pipeline.curate.hashing import hamming, hex_to_uint64, inspect_files  # noqa: E402
from mlc_pipeline.curate.neardup import find_pairs  # noqa: E402
from mlc_pipeline.curate.similarity import CONFIRM, FileSimilarity  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
THRESHOLD = CurateSettings().hamming_threshold
EDITS = ("resize50", "jpeg50", "crop5", "crop10", "corner5", "corner10", "left8", "rotate3", "watermark",
         "crop15", "crop20", "corner15", "corner20", "left15", "left20")


def edit(im: Image.Image, name: str) -> tuple[Image.Image, int]:
    "The edited copy and the JPEG quality to save it at."
    w, h = im.size
    if name == "resize50":
        return im.resize((w // 2, h // 2), Image.Resampling.LANCZOS), 90
    if name == "jpeg50":
        return im, 50
    if name.startswith("crop"):
        c = int(name[4:]) / 100
        return im.crop((round(w * c), round(h * c), w - round(w * c), h - round(h * c))), 90
    if name.startswith("corner"):          # cut off two adjacent edges (left and top)
        c = int(name[6:]) / 100
        return im.crop((round(w * c), round(h * c), w, h)), 90
    if name.startswith("left"):            # cut off one edge
        c = int(name[4:]) / 100
        return im.crop((round(w * c), 0, w, h)), 90
    if name == "rotate3":
        return im.rotate(3, resample=Image.Resampling.BICUBIC), 90
    if name == "watermark":
        layer = Image.new("RGBA", im.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        draw.rectangle((w * 0.70, h * 0.88, w * 0.97, h * 0.97), fill=(255, 255, 255, 153))
        draw.text((w * 0.72, h * 0.89), "(c) stock", fill=(0, 0, 0, 230))
        return Image.alpha_composite(im.convert("RGBA"), layer).convert("RGB"), 90
    raise ValueError(name)


def make_set(out: Path, every: int) -> tuple[list[Path], list[tuple[int, str, Path]]]:
    originals = sorted((FIXTURES / "hymenoptera").rglob("*.jpg")) + sorted((FIXTURES / "pets").rglob("*.jpg"))
    copies = []
    for k in range(0, len(originals), every):
        im = Image.open(originals[k]).convert("RGB")
        for name in EDITS:
            copy, quality = edit(im, name)
            path = out / f"copy_{k:05d}_{name}.jpg"
            copy.save(path, quality=quality)
            copies.append((k, name, path))
    return originals, copies


def pair_set(pairs: np.ndarray, owner: np.ndarray) -> set[tuple[int, int]]:
    a, b = owner[pairs[:, 0]], owner[pairs[:, 1]]
    return {(min(i, j), max(i, j)) for i, j in zip(a.tolist(), b.tolist()) if i != j}


def ours(records, paths) -> tuple[set, set, float]:
    "(phash<=THRESHOLD pairs, confirmed pairs, seconds to confirm); indices into records."
    full = pair_set(find_pairs(hex_to_uint64([r.phash for r in records]), THRESHOLD), np.arange(len(records)))
    views = [(k, h) for k, r in enumerate(records) for h in [r.phash, *r.view_hashes.split(",")]]
    owner = np.array([k for k, _ in views])
    candidates = pair_set(find_pairs(hex_to_uint64([h for _, h in views]), THRESHOLD), owner)
    start = time.perf_counter()
    sim = FileSimilarity(dict(enumerate(paths)))
    scores = {p: sim(*p) for p in candidates}
    confirmed = {p for p, s in scores.items() if s is not None and s >= CONFIRM}
    ours.scores = scores
    return full, confirmed, candidates, time.perf_counter() - start


def imagededup_sets(paths) -> dict[str, set]:
    try:
        import imagededup.methods.hashing  # noqa: F401 -- creates its INFO logger, silenced next
        from imagededup.methods import AHash, DHash, PHash, WHash
    except ImportError:
        print("imagededup is not installed: its rows are skipped (pip install -e .[bench])")
        return {}
    logging.getLogger("imagededup.methods.hashing").setLevel(logging.WARNING)
    logging.getLogger("imagededup.handlers.search.retrieval").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    index = {p.name: k for k, p in enumerate(paths)}
    image_dir = paths[0].parent
    out = {}
    for method in (PHash, DHash, WHash, AHash):
        found = method(verbose=False).find_duplicates(image_dir=str(image_dir))   # its default threshold
        out[f"imagededup {method.__name__}"] = {(min(index[a], index[b]), max(index[a], index[b]))
                                                for a, dups in found.items() for b in dups}
    return out


def report(name, found, n_orig, copies, origin):
    recall = {e: np.mean([(k, n_orig + c) in found for c, (k, e2, _) in enumerate(copies) if e2 == e]) for e in EDITS}
    distinct = sum(1 for i, j in found if j < n_orig)
    cross = sum(1 for i, j in found if origin[i] != origin[j])
    print(f"| {name} | " + " | ".join(f"{recall[e]:.2f}" for e in EDITS) + f" | {distinct} | {cross} |")


def catalog_pairs(path: Path, passes: int = 1) -> None:
    with Catalog(path, readonly=True) as catalog:
        rows = [r for r in catalog.candidates() if r["phash"] is not None and r["file_path"] is not None]
    # Paths as the catalog gives them (under its data root); hashed again with today's code, so a
    # catalog from an older version measures the current pipeline.
    paths = [r["file_path"] for r in rows]
    records = inspect_files(paths)
    full, confirmed, candidates, seconds = ours(records, paths)
    again = [ours(records, paths)[3] for _ in range(passes - 1)]    # later curates in one process
    if again:
        print(f"later confirmation passes in this process: {', '.join(f'{x:.1f} s' for x in again)}")
    v = np.array([x for x in ours.scores.values() if x is not None])
    if len(v):
        print(f"similarity of the catalog's candidates: max {v.max():.3f}, p99 {np.percentile(v, 99):.3f}, "
              f">= CONFIRM: {(v >= CONFIRM).sum()}")
    print(f"{path}: {len(rows)} images; phash<={THRESHOLD} pairs {len(full)}, view candidates {len(candidates)}, "
          f"confirmed {len(confirmed)} ({seconds:.1f} s to confirm)")


def main() -> None:
    global THRESHOLD, EDITS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--every", type=int, default=4, help="edit every n-th original")
    parser.add_argument("--catalog", type=Path, help="also count pairs among a catalog's images")
    parser.add_argument("--passes", type=int, default=1, help="with --catalog: confirm its pairs this many "
                        "times in one process (as `mlc run` curates after each collect round)")
    parser.add_argument("--threshold", type=int, default=THRESHOLD, help="phash bits a candidate may differ by "
                        "(curate.hamming_threshold; default %(default)s)")
    parser.add_argument("--no-imagededup", action="store_true", help="only our methods")
    parser.add_argument("--edits", nargs="+", choices=EDITS, default=EDITS, help="the edits to make (default: all)")
    args = parser.parse_args()
    THRESHOLD, EDITS = args.threshold, tuple(args.edits)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        originals, copies = make_set(out, args.every)
        links = []
        for k, p in enumerate(originals):          # one flat directory, for imagededup
            link = out / f"orig_{k:05d}{p.suffix}"
            link.symlink_to(p)
            links.append(link)
        paths = links + [p for _, _, p in copies]
        origin = list(range(len(originals))) + [k for k, _, _ in copies]
        start = time.perf_counter()
        records = inspect_files(paths)
        print(f"{len(originals)} originals, {len(copies)} copies ({len(copies) // len(EDITS)} photos x "
              f"{len(EDITS)} edits); inspect_files {time.perf_counter() - start:.1f} s")
        assert all(r.ok for r in records), [r.reason for r in records if not r.ok][:3]
        full, confirmed, candidates, seconds = ours(records, paths)
        print(f"view candidates {len(candidates)}, confirmed {len(confirmed)} in {seconds:.1f} s; "
              f"distances of the copies: " + ", ".join(
                  f"{e} p50 {np.median([hamming(records[k].phash, records[len(originals) + c].phash) for c, (k, e2, _) in enumerate(copies) if e2 == e]):.0f}"
                  for e in EDITS))
        scores = ours.scores
        for e in EDITS:
            v = [scores.get((k, len(originals) + c)) for c, (k, e2, _) in enumerate(copies) if e2 == e]
            v = np.array([x for x in v if x is not None])
            print(f"similarity of {e} copies found as candidates: n {len(v)}" +
                  (f", min {v.min():.3f}, p5 {np.percentile(v, 5):.3f}" if len(v) else ""))
        false = np.array([s for (i, j), s in scores.items() if origin[i] != origin[j] and s is not None])
        if len(false):
            print(f"similarity of cross-photo candidates: n {len(false)}, max {false.max():.3f}, "
                  f"p99 {np.percentile(false, 99):.3f}")
        print("\n| method | " + " | ".join(EDITS) + " | false pairs, distinct originals | all cross-photo pairs |")
        print("|---|" + "---|" * (len(EDITS) + 2))
        report(f"phash <= {THRESHOLD} (before)", full, len(originals), copies, origin)
        report(f"views <= {THRESHOLD}, unconfirmed candidates", candidates, len(originals), copies, origin)
        report(f"ours: views <= {THRESHOLD} + similarity >= {CONFIRM}", confirmed, len(originals), copies, origin)
        for name, found in ({} if args.no_imagededup else imagededup_sets(paths)).items():
            report(name, found, len(originals), copies, origin)
    if args.catalog:
        catalog_pairs(args.catalog, args.passes)


if __name__ == "__main__":
    main()
