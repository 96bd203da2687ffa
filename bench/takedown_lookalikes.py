"""How close the perceptual hashes of a photo taken down and a later copy of it are, against those
of different pictures: the measurement behind `curate.lookalikes.LOOKALIKE_BITS`.

A removed photo's file is gone, so a copy collected later is judged by hashes alone (every view's
phash against every view's, as `hold_lookalikes_of_removed` and curate's candidate search do, and
the copy's whole-image phash against the removed photo's four corner windows and its mirror image's
views, which the takedown keeps; `--no-mirror`: the corner windows only; `--no-corners`: neither;
`--before`: the rule for an image accepted before the takedown, its whole-image phash against the
corner windows and the mirror image's views alone, which curate's search and pixel check never
compared (`--mirror-only`: the mirror's views alone, that rule until 2026-12-07's export26 fix)). Not a
benchmark against a baseline: it prints the share of edited copies within T bits of their original
(recall) and the number of pairs of different pictures within T bits (false holds).

- copies: every 8th fixture photo (pets and hymenoptera) edited five ways, each saved as JPEG 60;
- different real pictures: every pair of fixture photos (either one the photo taken down);
- different generated pictures (`--catalog`): every pair of accepted images of a catalog, which
  curate kept apart (the default offline world: `mlc run -c configs/offline.yaml`).

    .venv/bin/python bench/takedown_lookalikes.py --catalog data/catalog.sqlite      # ~1 min (--no-corners: ~10 s)
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mlc_pipeline.catalog import Catalog  # noqa: E402
from mlc_pipeline.curate.hashing import (corner_greys, hamming_uint64, hex_to_uint64, takedown_greys,  # noqa: E402
                                         view_greys, view_phashes)
from mlc_pipeline.curate.phash import phash_many  # noqa: E402
from mlc_pipeline.curate.lookalikes import CORNER_WINDOWS, hash_matrix  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
BITS = (2, 4, 6, 8, 10, 12)
EDITS = {
    "re-encode (quality 60)": lambda im: im,
    "half size": lambda im: im.resize((im.width // 2, im.height // 2)),
    "centre crop 5 % per side": lambda im: im.crop((im.width // 20, im.height // 20, im.width - im.width // 20,
                                                    im.height - im.height // 20)),
    "centre crop 8 % per side, upscaled 2x": lambda im: im.crop(
        (im.width * 8 // 100, im.height * 8 // 100, im.width * 92 // 100, im.height * 92 // 100)).resize(
        (im.width * 2 * 84 // 100, im.height * 2 * 84 // 100)),
    "corner crop 5 %": lambda im: im.crop((im.width // 20, im.height // 20, im.width, im.height)),
    "corner crop 10 %": lambda im: im.crop((0, 0, im.width * 9 // 10, im.height * 9 // 10)),
    "one side 8 %": lambda im: im.crop((im.width * 8 // 100, 0, im.width, im.height)),
    "brightness +15 %": lambda im: ImageEnhance.Brightness(im).enhance(1.15),
    "mirrored": ImageOps.mirror,
    "mirrored, centre crop 5 % per side": lambda im: ImageOps.mirror(im).crop(
        (im.width // 20, im.height // 20, im.width - im.width // 20, im.height - im.height // 20)),
}
MIRROR = True       # --no-mirror: the corner windows only (before 2026-12-06)
KEPT_ONLY: slice | None = None   # --before / --mirror-only: the kept hashes alone (an image accepted before)


def rows_of(hashes: list[list[str]]) -> list[dict]:
    return [{"phash": h[0], "view_hashes": ",".join(h[1:])} for h in hashes]


def corners_of(im: Image.Image) -> np.ndarray:
    """What a takedown keeps of the removed photo (hashing.corner_phashes, from an image in memory): its
    four corner windows' phashes, then its mirror image's views' (not with --no-mirror)."""
    grey = view_greys(im)[0]
    return hex_to_uint64(phash_many(takedown_greys(grey) if MIRROR else corner_greys(grey)))


def rule_bits(a: np.ndarray, b: np.ndarray, b_corners: np.ndarray | None) -> np.ndarray:
    """The rule's distance of every row of `a` (copies) to every row of `b` (photos taken down),
    len(a) x len(b): the least over every view of one against every view of the other, as curate's
    candidate search, and of `a`'s whole image against `b`'s corner windows (len(b) x 4)."""
    out = np.full((len(a), len(b)), 64, dtype=np.int64)
    for j in range(len(b)):
        if KEPT_ONLY is not None:
            out[:, j] = hamming_uint64(a[:, :1], b_corners[None, j, KEPT_ONLY]).min(axis=1)
            continue
        out[:, j] = hamming_uint64(a[:, :, None], b[None, j, None, :]).min(axis=(1, 2))
        if b_corners is not None:
            out[:, j] = np.minimum(out[:, j], hamming_uint64(a[:, :1], b_corners[None, j]).min(axis=1))
    return out


def pairs_within(m: np.ndarray, corners: np.ndarray | None) -> dict[int, int]:
    d = rule_bits(m, m, corners)
    d = np.minimum(d, d.T)                 # either picture may be the one taken down
    upper = d[np.triu_indices(len(m), 1)]
    return {t: int((upper <= t).sum()) for t in BITS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--catalog", type=Path, help="a SQLite catalog whose accepted images are all different")
    ap.add_argument("--no-corners", action="store_true", help="the rule without the corner windows nor the mirror")
    ap.add_argument("--no-mirror", action="store_true", help="the corner windows without the mirror image's views")
    ap.add_argument("--before", action="store_true", help="an image accepted before the takedown: its whole "
                    "image against the corner windows and the mirror's views alone")
    ap.add_argument("--mirror-only", action="store_true",
                    help="--before until 2026-12-07: its whole image against the mirror's views alone")
    args = ap.parse_args()
    global MIRROR, KEPT_ONLY
    MIRROR = not args.no_mirror
    KEPT_ONLY = slice(None) if args.before else slice(CORNER_WINDOWS, None) if args.mirror_only else None
    if KEPT_ONLY is not None and (args.no_mirror or args.no_corners or args.before == args.mirror_only):
        ap.error("--before or --mirror-only (one) needs the mirror's views (not with --no-mirror or --no-corners)")
    files = sorted(FIXTURES.rglob("*.jpg"))
    originals, corners = [], []
    for f in files:
        with Image.open(f) as im:
            originals.append(view_phashes(im.convert("RGB")))
            corners.append(corners_of(im.convert("RGB")))
    m, corners = hash_matrix(rows_of(originals)), None if args.no_corners else np.stack(corners)
    print(f"{len(files)} fixture photos; pairs of different pictures within T bits, then recall of copies"
          f"{' (no corner windows)' if args.no_corners else ''}{' (mirror views only)' if args.mirror_only else ''}{' (kept hashes only)' if args.before else ''}")
    print("T:", BITS)
    print(f"different real pictures ({len(m) * (len(m) - 1) // 2:,} pairs):", pairs_within(m, corners))
    for name, edit in EDITS.items():
        bits = []
        for i in range(0, len(files), 8):
            with Image.open(files[i]) as im:
                buf = io.BytesIO()
                edit(im.convert("RGB")).save(buf, "JPEG", quality=60)
            copy = hash_matrix(rows_of([view_phashes(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))]))
            bits.append(int(rule_bits(copy, m[i:i + 1], None if corners is None else corners[i:i + 1])[0, 0]))
        print(f"{name} ({len(bits)} copies):", {t: round(float(np.mean(np.array(bits) <= t)), 3) for t in BITS})
    if args.catalog:
        with Catalog(args.catalog, readonly=True) as catalog:
            rows = [r for r in catalog.candidates() if r["status"] == "accepted" and r["phash"] is not None]
        gen_corners = None
        if not args.no_corners:         # from the files (a catalog keeps corner windows only for takedowns)
            gen_corners = []
            for r in rows:
                with Image.open(r["file_path"]) as im:      # under the catalog's data root
                    gen_corners.append(corners_of(im.convert("RGB")))
            gen_corners = np.stack(gen_corners)
        print(f"different generated pictures ({len(rows) * (len(rows) - 1) // 2:,} pairs):",
              pairs_within(hash_matrix(rows), gen_corners))


if __name__ == "__main__":
    main()
