"""How close the perceptual hashes of a photo taken down and a later copy of it are, against those
of different pictures: the measurement behind `curate.takedown.LOOKALIKE_BITS`.

A removed photo's file is gone, so a copy collected later is judged by hashes alone (every view's
phash against every view's, as `hold_lookalikes_of_removed` and curate's candidate search do). Not a
benchmark against a baseline: it prints the share of edited copies within T bits of their original
(recall) and the number of pairs of different pictures within T bits (false holds).

- copies: every 8th fixture photo (pets and hymenoptera) edited five ways, each saved as JPEG 60;
- different real pictures: every pair of fixture photos;
- different generated pictures (`--catalog`): every pair of accepted images of a catalog, which
  curate kept apart (the default offline world: `mlc run -c configs/offline.yaml`).

    .venv/bin/python bench/takedown_lookalikes.py --catalog data/catalog.sqlite      # ~10 s
"""

from __future__ import annotations

import argparse
import io
import sqlite3
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mlc_pipeline.curate.hashing import hamming_uint64, view_phashes  # noqa: E402
from mlc_pipeline.curate.takedown import hash_matrix  # noqa: E402

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
    "corner crop 10 %": lambda im: im.crop((0, 0, im.width * 9 // 10, im.height * 9 // 10)),
    "brightness +15 %": lambda im: ImageEnhance.Brightness(im).enhance(1.15),
}


def rows_of(hashes: list[list[str]]) -> list[dict]:
    return [{"phash": h[0], "view_hashes": ",".join(h[1:])} for h in hashes]


def rule_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The rule's distance of every row of `a` to every row of `b` (len(a) x len(b)): the least over
    every view of one against every view of the other, as curate's candidate search."""
    out = np.full((len(a), len(b)), 64, dtype=np.int64)
    for j in range(len(b)):
        out[:, j] = hamming_uint64(a[:, :, None], b[None, j, None, :]).min(axis=(1, 2))
    return out


def pairs_within(m: np.ndarray) -> dict[int, int]:
    d = rule_bits(m, m)
    upper = d[np.triu_indices(len(m), 1)]
    return {t: int((upper <= t).sum()) for t in BITS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--catalog", type=Path, help="a SQLite catalog whose accepted images are all different")
    args = ap.parse_args()
    files = sorted(FIXTURES.rglob("*.jpg"))
    originals = []
    for f in files:
        with Image.open(f) as im:
            originals.append(view_phashes(im.convert("RGB")))
    m = hash_matrix(rows_of(originals))
    print(f"{len(files)} fixture photos; pairs of different pictures within T bits, then recall of copies")
    print("T:", BITS)
    print(f"different real pictures ({len(m) * (len(m) - 1) // 2:,} pairs):", pairs_within(m))
    for name, edit in EDITS.items():
        bits = []
        for i in range(0, len(files), 8):
            with Image.open(files[i]) as im:
                buf = io.BytesIO()
                edit(im.convert("RGB")).save(buf, "JPEG", quality=60)
            copy = hash_matrix(rows_of([view_phashes(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))]))
            bits.append(int(rule_bits(copy, m[i:i + 1])[0, 0]))
        print(f"{name} ({len(bits)} copies):", {t: round(float(np.mean(np.array(bits) <= t)), 3) for t in BITS})
    if args.catalog:
        db = sqlite3.connect(f"file:{args.catalog}?mode=ro", uri=True)
        db.row_factory = sqlite3.Row
        rows = [dict(r) for r in db.execute("SELECT phash, view_hashes FROM candidates WHERE status='accepted' "
                                            "AND phash IS NOT NULL")]
        print(f"different generated pictures ({len(rows) * (len(rows) - 1) // 2:,} pairs):", pairs_within(hash_matrix(rows)))


if __name__ == "__main__":
    main()
