"""Folder mode: image files under mapped subfolders become photos, served byte for byte."""

from __future__ import annotations

import hashlib
import logging
import random
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .catalog import LICENSE_WEIGHTS, YEAR_2005, YEAR_2026, format_time
from .model import SIZE_TABLE, Photo

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp"}


def folder_photos(folder: str | Path, query_map: dict[str, str], seed: int) -> list[Photo]:
    """One photo per image file under each mapped subfolder, tagged with the query's words.

    A file reached by several queries is one photo carrying all their words. Titles are neutral
    ('IMG_1234') so that free-text search finds exactly the mapped files.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"folder mode: {root} is not a directory")
    by_path: dict[str, Photo] = {}
    used_ids: set[str] = set()
    for query, subfolder in query_map.items():
        base = (root / subfolder).resolve()
        if not base.is_relative_to(root.resolve()) or not base.is_dir():
            raise FileNotFoundError(f"folder mode: subfolder {subfolder!r} for query {query!r} is not under {root}")
        words = [w.lower() for w in query.split() if w.strip()]
        for path in sorted(p for p in base.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
            relative = path.relative_to(root.resolve()).as_posix()
            if relative in by_path:
                by_path[relative].tags = list(dict.fromkeys(by_path[relative].tags + words))
                continue
            photo = _photo_for_file(path, relative, subfolder, words, seed, used_ids)
            if photo is not None:
                by_path[relative] = photo
    return list(by_path.values())


def photo_id_for(relative_path: str) -> str:
    """A stable 11-digit id derived from the file's path relative to the folder."""
    number = int(hashlib.sha1(relative_path.encode("utf-8")).hexdigest()[:15], 16)
    return str(10_000_000_000 + number % 89_999_999_999)


def _photo_for_file(path: Path, relative: str, kind: str, words: list[str], seed: int, used_ids: set[str]) -> Photo | None:
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError) as error:
        log.warning("folder mode: skipping %s, not a readable image (%s)", path, error)
        return None
    photo_id = photo_id_for(relative)
    while photo_id in used_ids:  # a hash collision: move to the next free number, deterministically
        photo_id = str(int(photo_id) + 1)
    used_ids.add(photo_id)
    rng = random.Random(f"{seed}:{relative}")
    dateupload = rng.randint(YEAR_2005, YEAR_2026)
    return Photo(
        id=photo_id, secret=f"{rng.getrandbits(40):010x}", server=str(rng.randint(1000, 65535)),
        farm=rng.choice([1, 2, 3, 4, 5, 66]), owner=f"{rng.randint(10_000_000, 199_999_999)}@N0{rng.randint(0, 8)}",
        ownername=f"folder_user{rng.randint(1, 50)}", title=f"IMG_{photo_id[-4:]}", tags=list(words),
        license=rng.choices(list(LICENSE_WEIGHTS), list(LICENSE_WEIGHTS.values()))[0],
        dateupload=dateupload, datetaken=format_time(dateupload - rng.randint(0, 400 * 86400)),
        kind=kind, sizes=fitting_sizes(width, height), o_width=width, o_height=height,
        source_path=str(path),
    )


def fitting_sizes(width: int, height: int) -> dict[str, tuple[int, int]]:
    """Every standard size the file is big enough for. They all serve the original file, so each
    advertises the file's real dimensions. The smallest size is always offered."""
    sizes = {}
    for key, (side, square, _suffix) in SIZE_TABLE.items():
        if (min(width, height) if square else max(width, height)) >= side:
            sizes[key] = (width, height)
    if not sizes:
        sizes["sq"] = (width, height)
    return sizes
