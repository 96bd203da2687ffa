"""Opening an image as a viewer shows it, and what Pillow raises on a bad file.

`load_rgb` is how every stage reads pixels after curation accepted a file: the build's checks, the
review app's thumbnails, training's and prediction's inputs. It sits below the stage packages so
that none of them imports another's for it (curate/verify.py decides which files are usable; this
only loads them).
"""

from __future__ import annotations

import os
import struct

import numpy as np
from PIL import Image, ImageOps

# What Pillow raises on hostile data varies by plugin; these are the types seen in practice. The
# exception's name is kept in the reason code, so nothing is swallowed.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError,
                 struct.error, ZeroDivisionError, MemoryError, Image.DecompressionBombError)


def to_rgb(im: Image.Image) -> Image.Image:
    "Convert any supported mode to 8-bit RGB; transparency is composited on white."
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I"):  # 16-bit (or 32-bit int holding 16-bit data): keep the top 8 bits
        a = np.asarray(im).astype(np.int64)
        return Image.fromarray((np.clip(a, 0, 65535) >> 8).astype(np.uint8), "L").convert("RGB")
    if (im.mode == "P" and "transparency" in im.info) or im.mode in ("LA", "PA", "RGBa"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im).convert("RGB")
    return im.convert("RGB")  # 1, L, P, RGBX, CMYK, YCbCr


def load_rgb(path: str | os.PathLike, max_side: int | None = None) -> Image.Image:
    """Open `path` as RGB as a viewer would show it (EXIF orientation, first frame, white background),
    optionally downscaled so the longer side is at most `max_side`.

    Meant for files that passed `curate.verify.check_image`; Pillow's own decompression-bomb guard
    still applies.
    """
    with Image.open(path) as im:
        if max_side is not None and im.format == "JPEG":
            # Draft decoding (1/2, 1/4, 1/8 scale inside libjpeg) is much faster on big photos; ask for
            # a size whose longer side is still >= max_side so the final resize only shrinks.
            scale = max_side / max(im.size)
            if scale < 0.5:
                im.draft("RGB", (max(1, round(im.width * scale)), max(1, round(im.height * scale))))
        im.load()
        out = to_rgb(ImageOps.exif_transpose(im))
    if max_side is not None and max(out.size) > max_side:
        out.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return out
