"""Opening an image as a viewer shows it, and what Pillow raises on a bad file; the other format a
file curation's formats do not open is in (`other_format`: curation's reason and `mlc predict`'s).

`load_rgb` is how every stage reads pixels after curation accepted a file: the build's checks, the
review app's thumbnails, training's and prediction's inputs. It sits below the stage packages so
that none of them imports another's for it (curate/verify.py decides which files are usable; this
only loads them).

Colour: a file with an embedded ICC profile (Adobe RGB from a camera, Display P3 from a phone, a
CMYK or grey profile) is converted to sRGB from it (`to_srgb`), as every browser and photo viewer
shows it; a file without one is taken as sRGB, as they take it. `to_rgb` alone keeps the numbers as
stored: hashing's greyscale views use it (a structure hash, blind to colour, and JPEGs are hashed
from libjpeg's luma, where no profile applies either).
"""

from __future__ import annotations

import io
import logging
import os
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

# Files verification refused for their size or format are never decoded for a thumbnail (the review
# app's, the HTML report's) either. Nor is one that killed a decoder process during curation: a
# viewer would go down with it.
NOT_DECODED = ("decompression-bomb", "too-many-frames", "file-too-large", "unsupported-format", "not-an-image",
               "corrupt-header", "empty-file", "decode-error:WorkerCrashed")

# What Pillow raises on hostile data varies by plugin; these are the types seen in practice. The
# exception's name is kept in the reason code, so nothing is swallowed.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError,
                 struct.error, ZeroDivisionError, MemoryError, Image.DecompressionBombError)


def other_format(fp) -> str | None:
    """The format Pillow names from the header of a file (a path, or a binary file) that curation's
    formats do not open: AVIF, PSD, EPS, ... (read, never decoded); None when no plugin takes it as an
    image. Curation's reason (`unsupported-format:<FMT>`) and `mlc predict`'s line, each in its words."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(fp) as im:
                return im.format
        except (UnidentifiedImageError, *DECODE_ERRORS, ArithmeticError):
            return None


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any supported mode to 8-bit RGB; transparency is composited on white, a PNG's colour key
    (tRNS on an RGB or grey image: one colour that means "transparent") too, as a viewer shows it."""
    if im.mode in ("RGB", "L") and "transparency" in im.info:
        im = im.convert("RGBA")
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


# Where a profile's numbers must be before its transform: an RGB profile takes every mode `to_rgb`
# makes RGB (grey as R=G=B, transparency on white first: white is white in every profile), a grey one
# the grey modes, a CMYK one CMYK. Any other pairing is not applied (`to_srgb`'s reason).
GREY_MODES = ("1", "L", "LA", "P", "PA", "I", "I;16", "I;16B", "I;16L", "I;16N")
NOT_APPLIED = "icc_not_applied"     # info key of an image whose embedded profile could not be applied: why


def to_srgb(im: Image.Image, name: object = "an image") -> Image.Image:
    """`to_rgb`, with the embedded ICC profile (if any) applied: the picture in sRGB, as a colour-managed
    viewer shows it. A profile that cannot be read or applied is logged (naming `name`) and the numbers
    are taken as sRGB, as before; the reason is kept in the result's `info[NOT_APPLIED]`."""
    icc = im.info.get("icc_profile")
    if not icc:
        return to_rgb(im)
    from PIL import ImageCms

    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    except (OSError, ImageCms.PyCMSError) as exc:
        return _not_applied(im, name, f"unreadable profile ({exc})")
    space = profile.profile.xcolor_space.strip()
    if space == "RGB" and im.mode != "CMYK":
        flat = to_rgb(im)
    elif space == "CMYK" and im.mode == "CMYK":
        flat = im
    elif space == "GRAY" and im.mode in GREY_MODES:
        flat = to_rgb(im).convert("L")      # exact: to_rgb makes grey R=G=B
    else:
        return _not_applied(im, name, f"a {space or 'blank'} profile on a {im.mode} image")
    try:
        # Perceptual: the intent a profile's header defaults to, and Pillow's. For the matrix/TRC profiles
        # of cameras and phones (Adobe RGB, Display P3) it gives exactly relative colorimetric's pixels
        # (tested); only a LUT profile (most CMYK ones) has a perceptual table of its own, the one its
        # maker built for photographs: out-of-gamut colours compressed, not clipped flat.
        return ImageCms.profileToProfile(flat, profile, ImageCms.createProfile("sRGB"),
                                         renderingIntent=ImageCms.Intent.PERCEPTUAL, outputMode="RGB")
    except (OSError, ValueError, ImageCms.PyCMSError) as exc:   # a profile LittleCMS cannot transform from
        return _not_applied(im, name, f"LittleCMS cannot use it ({exc})")


def _not_applied(im: Image.Image, name: object, reason: str) -> Image.Image:
    "`to_rgb(im)`, the numbers taken as sRGB, with `reason` logged and kept in its `info[NOT_APPLIED]`."
    log.warning("%s: its embedded colour profile is not applied: %s; its numbers are read as sRGB", name, reason)
    out = to_rgb(im)
    out = out.copy() if out is im else out
    out.info.pop("icc_profile", None)       # these numbers are not in that profile's space
    out.info[NOT_APPLIED] = reason
    return out


def load_rgb(path: str | os.PathLike, max_side: int | None = None) -> Image.Image:
    """Open `path` as RGB as a viewer would show it (EXIF orientation, first frame, white background,
    colours in sRGB from an embedded ICC profile: `to_srgb`), optionally downscaled so the longer side
    is at most `max_side`.

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
        out = to_srgb(ImageOps.exif_transpose(im), path)
    if max_side is not None and max(out.size) > max_side:
        out.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return out
