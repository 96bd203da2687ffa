"""Thumbnails for the review app: made once per file content and cached under the data root.

The cache key is the file's sha256 (the catalog has it), so a thumbnail never goes stale and two
candidates with the same bytes share one. Writes are atomic: a half-written thumbnail is never served.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from mlc_pipeline.images import NOT_DECODED, load_rgb
from mlc_pipeline.layout import DataLayout

log = logging.getLogger(__name__)
SIDE = 160
# The browser asks every page for one: without it, a 404 in the console on each page.
FAVICON = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" '
           'fill="#2a6"/><text x="8" y="12" font-size="10" text-anchor="middle" fill="#fff">r</text></svg>')
# The card of a file with no thumbnail. A truncated one says so: its page shows what the browser decodes of
# it, while the thumbnailer refuses it (Pillow's LOAD_TRUNCATED_IMAGES is process-wide: the verifier's too).
PLACEHOLDER = ('<svg xmlns="http://www.w3.org/2000/svg" width="160" height="160"><rect width="160" height="160" '
               'fill="#eee"/><text x="80" y="85" font-size="13" text-anchor="middle" fill="#888">{}</text></svg>')
QUALITY = 80


def cache_dir(data_dir: Path) -> Path:
    return DataLayout(Path(data_dir)).thumbnails


def thumbnail(data_dir: Path, sha256: str | None, source: str | None, verify_reason: str | None = None) -> Path | None:
    """The cached thumbnail of `source` (made now if missing), or None when there is no decodable file."""
    if not sha256 or not source or not all(ch in "0123456789abcdef" for ch in sha256):
        return None
    if verify_reason and verify_reason.startswith(NOT_DECODED):
        return None
    dest = cache_dir(data_dir) / sha256[:2] / f"{sha256}-{SIDE}.jpg"
    if dest.is_file():
        return dest
    try:
        im = load_rgb(source, max_side=SIDE * 2)
        im.thumbnail((SIDE, SIDE))
    except FileNotFoundError:
        return None
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        log.info("no thumbnail for %s: %s", source, exc)     # a quarantined file may well be undecodable
        return None
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
    im.save(tmp, "JPEG", quality=QUALITY)
    os.replace(tmp, dest)
    return dest
