"""The image formats the pipeline accepts, told by their leading bytes (download names files by it;
verify tells a broken image from a file that is not an image at all; the review app serves a file as
the type its bytes show, never as a type a remote server declared)."""

from __future__ import annotations

import re
from pathlib import Path

MAGIC = (  # (prefix, offset, extension); WebP is RIFF....WEBP
    (b"\xff\xd8\xff", 0, "jpg"), (b"\x89PNG\r\n\x1a\n", 0, "png"), (b"GIF87a", 0, "gif"),
    (b"GIF89a", 0, "gif"), (b"WEBP", 8, "webp"), (b"BM", 0, "bmp"), (b"II*\x00", 0, "tif"),
    (b"MM\x00*", 0, "tif"),
)
MEDIA_TYPES = {"jpg": "image/jpeg", "png": "image/png", "gif": "image/gif", "webp": "image/webp", "bmp": "image/bmp",
               "tif": "image/tiff"}
HEAD_BYTES = 16                 # enough for every prefix above
# One media type as RFC 9110 writes it: token/token (lower-cased here), bounded.
TOKEN = r"[a-z0-9!#$%&'*^_`|~.+-]{1,127}"
ONE_TYPE = re.compile(rf"{TOKEN}/{TOKEN}")


def image_extension(head: bytes) -> str | None:
    """The file extension for bytes that start like an accepted image format, else None."""
    for prefix, offset, ext in MAGIC:
        if head[offset:offset + len(prefix)] == prefix and (ext != "webp" or head[:4] == b"RIFF"):
            return ext
    return None


def file_media_type(path: str | Path) -> str | None:
    """The media type of the image format `path`'s leading bytes show (image/jpeg, ...), else None."""
    with open(path, "rb") as f:
        ext = image_extension(f.read(HEAD_BYTES))
    return MEDIA_TYPES[ext] if ext else None


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
