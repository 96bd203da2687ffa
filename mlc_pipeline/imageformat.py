"""The image formats the pipeline accepts, told by their leading bytes (download names files by it;
verify tells a broken image from a file that is not an image at all; the review app serves a file as
the type its bytes show, never as a type a remote server declared), the formats curation decodes and
the size rules an image meets to train (curation's; `mlc predict` applies the same to what it scores,
without importing curation), and the photo formats named but not decoded here (HEIC: a download says
`unsupported-format:heic`, never `not-an-image`)."""

from __future__ import annotations

import functools
import re
from pathlib import Path

MAGIC = (  # (prefix, offset, extension); WebP is RIFF....WEBP; AVIF is told by its ftyp brands (below)
    (b"\xff\xd8\xff", 0, "jpg"), (b"\x89PNG\r\n\x1a\n", 0, "png"), (b"GIF87a", 0, "gif"),
    (b"GIF89a", 0, "gif"), (b"WEBP", 8, "webp"), (b"BM", 0, "bmp"), (b"II*\x00", 0, "tif"),
    (b"MM\x00*", 0, "tif"),
)
MEDIA_TYPES = {"jpg": "image/jpeg", "png": "image/png", "gif": "image/gif", "webp": "image/webp", "bmp": "image/bmp",
               "tif": "image/tiff", "avif": "image/avif"}
HEAD_BYTES = 64                 # enough for every prefix above, and an ftyp box's first brands
# Formats curation decodes (Pillow's names; JPEG includes MPO). Everything else (EPS runs Ghostscript,
# PSD, ICO, AVIF, ...) is refused as `unsupported-format:<FMT>`; `mlc predict` refuses what curation does.
DECODED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
# ISO base media files (HEIF, AVIF) by the brands of their ftyp box: the major brand, then the compatible ones
# (an iPhone's `mif1` file lists `heic` among them)
HEIF_BRANDS = {b"avif": "AVIF", b"avis": "AVIF", b"heic": "HEIC", b"heix": "HEIC", b"heim": "HEIC",
               b"heis": "HEIC", b"hevc": "HEIC", b"hevx": "HEIC", b"mif1": "HEIF", b"msf1": "HEIF"}
# One media type as RFC 9110 writes it: token/token (lower-cased here), bounded.
TOKEN = r"[a-z0-9!#$%&'*^_`|~.+-]{1,127}"
ONE_TYPE = re.compile(rf"{TOKEN}/{TOKEN}")


def image_extension(head: bytes) -> str | None:
    """The file extension for bytes that start like an accepted image format, else None. AVIF is one
    where this Pillow decodes it (curation judges it then: `unsupported-format:AVIF`, a format it
    does not train on), else `unsupported_format` names it."""
    for prefix, offset, ext in MAGIC:
        if head[offset:offset + len(prefix)] == prefix and (ext != "webp" or head[:4] == b"RIFF"):
            return ext
    if heif_format(head) == "AVIF" and avif_decodes():
        return "avif"
    return None


def heif_format(head: bytes) -> str | None:
    """AVIF, HEIC or HEIF for an ISO base media file whose ftyp box names such a brand, else None."""
    if head[4:8] != b"ftyp":
        return None
    size = int.from_bytes(head[:4], "big")
    brands = [head[8:12]] + [head[i:i + 4] for i in range(16, min(size, len(head)) - 3, 4)]
    named = [HEIF_BRANDS[b] for b in brands if b in HEIF_BRANDS]
    return next((f for f in named if f != "HEIF"), named[0] if named else None)


def unsupported_format(head: bytes) -> str | None:
    """The name of a photo format these bytes start like that is not accepted here (HEIC, HEIF, AVIF
    where Pillow cannot decode it), else None: such a file is a photo, not "not an image"."""
    found = heif_format(head)
    return None if found is None or (found == "AVIF" and avif_decodes()) else found


@functools.cache
def avif_decodes() -> bool:
    """Whether this Pillow decodes AVIF (its plugin and libavif: Pillow 11.2 and later, as built)."""
    try:
        from PIL import features
        return bool(features.check_module("avif"))
    except (ImportError, ValueError):       # ValueError: a Pillow that knows no such module
        return False


def file_media_type(path: str | Path) -> str | None:
    """The media type of the image format `path`'s leading bytes show (image/jpeg, ...), else None."""
    with open(path, "rb") as f:
        ext = image_extension(f.read(HEAD_BYTES))
    return MEDIA_TYPES[ext] if ext else None


def size_reason(width: int, height: int, limits) -> str | None:
    """Curation's rules on an image's size (orientation-free: width and height may come either way
    round), under `limits` (anything with max_pixels, min_side and max_aspect: curation's
    VerifyLimits, the config's curate settings): decompression-bomb, too-small, extreme-aspect."""
    if width * height > limits.max_pixels:
        return "decompression-bomb"
    if min(width, height) < limits.min_side:
        return "too-small"
    if max(width, height) > limits.max_aspect * min(width, height):
        return "extreme-aspect"
    return None


def declared_type(header: str) -> tuple[str, str | None]:
    """(the one media type a Content-Type header names, lower-cased, without its parameters: '' for
    none; why it names none, or None). A comma list is refused, and so are two Content-Type headers,
    which requests joins into one with a comma: a browser takes the *last* type of such a list, so a
    file sent as `image/gif, text/html` is HTML to it (the security26 audit). So is anything that is
    not token/token (control characters, spaces: the reason, which is printed, never holds them)."""
    if "," in header:
        return "", "several-types"
    ctype = header.split(";")[0].strip().lower()
    if ctype and not ONE_TYPE.fullmatch(ctype):
        return "", "malformed"
    return ctype, None
