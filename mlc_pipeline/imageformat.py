"""The image formats the pipeline accepts, told by their leading bytes (download names files by it;
verify tells a broken image from a file that is not an image at all)."""

from __future__ import annotations

MAGIC = (  # (prefix, offset, extension); WebP is RIFF....WEBP
    (b"\xff\xd8\xff", 0, "jpg"), (b"\x89PNG\r\n\x1a\n", 0, "png"), (b"GIF87a", 0, "gif"),
    (b"GIF89a", 0, "gif"), (b"WEBP", 8, "webp"), (b"BM", 0, "bmp"), (b"II*\x00", 0, "tif"),
    (b"MM\x00*", 0, "tif"),
)


def image_extension(head: bytes) -> str | None:
    """The file extension for bytes that start like an accepted image format, else None."""
    for prefix, offset, ext in MAGIC:
        if head[offset:offset + len(prefix)] == prefix and (ext != "webp" or head[:4] == b"RIFF"):
            return ext
    return None
