"""Folder mode: image files under mapped subfolders become photos, served byte for byte."""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import warnings
from collections import Counter
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .catalog import LICENSE_WEIGHTS, YEAR_2005, YEAR_2026, format_time
from .model import SIZE_TABLE, Photo
from .search import words_of

log = logging.getLogger(__name__)


def _avif_decodes() -> bool:
    try:
        from PIL import AvifImagePlugin       # Pillow 11.2 and later; SUPPORTED: built with libavif
    except ImportError:
        return False
    return bool(getattr(AvifImagePlugin, "SUPPORTED", False))


# Served: the formats of these names that this Pillow decodes (AVIF where it is built with libavif)
SERVED_SUFFIXES = {".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".jfif": "JPEG", ".png": "PNG", ".gif": "GIF",
                   ".bmp": "BMP", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF",
                   **({".avif": "AVIF"} if _avif_decodes() else {})}
SERVED_FORMATS = tuple(dict.fromkeys(SERVED_SUFFIXES.values()))
IMAGE_SUFFIXES = set(SERVED_SUFFIXES)
# Photo formats left out, named and counted (never silently): a file of one of these names is opened
# first if it may be one served under another name (an AVIF named .heic), by a file name otherwise.
NOT_SERVED = {".heic": "HEIC", ".heif": "HEIF", ".hif": "HEIF", ".avif": "AVIF", ".jxl": "JPEG XL", ".svg": "SVG",
              ".svgz": "SVG", ".psd": "PSD", ".jp2": "JPEG 2000", ".dng": "camera raw (DNG)",
              **{s: f"camera raw ({s[1:].upper()})" for s in (".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2", ".raf")}}
SNIFFED = {"", ".heic", ".heif", ".hif", ".avif"}


class FolderModeError(ValueError):
    """The folder or a mapped subfolder cannot be served; one line naming it."""


def folder_photos(folder: str | Path, query_map: dict[str, str], seed: int,
                  unreadable: dict[str, str] | None = None, max_bytes: int | None = None) -> list[Photo]:
    """One photo per image file under each mapped subfolder, tagged with the query's words.

    A file reached by several queries is one photo carrying all their words. Titles are neutral
    ('IMG_1234') so that free-text search finds exactly the mapped files. Symbolic links to folders
    and files are followed (a folder tree assembled from links is a common way to pick images);
    each photo records its path relative to `folder` as `source_file`. A file with an image name
    that is no readable image (empty, an HTML page named .jpg, a link to nothing or to a device), or
    is larger than `max_bytes` (the downloader would refuse it: never read), or larger than Pillow
    opens (a decompression bomb), is not served: it is logged, and added to `unreadable` (path
    relative to `folder` -> why), which collect's summary counts and `mlc inspect` shows. Not served
    rather than failed at download: the day the user replaces it with an image, the next collect
    finds it as a new photo. So is a photo in a format not served here (HEIC, SVG, camera raw; AVIF
    where Pillow cannot decode it; a file without an extension that is no image served): one warning
    counts them by format, and `-v` names each. Other files (notes.txt) are not images: not listed.
    """
    unreadable = {} if unreadable is None else unreadable
    root = check_folder(folder, query_map)
    by_path: dict[str, Photo] = {}
    used_ids: set[str] = set()
    for query, subfolder in query_map.items():
        base = mapped_subfolder(root, subfolder, query)
        # Tagged with the words search splits a query into: "hot-air" as one tag ("hotair") was
        # never found by a search for "hot-air balloon" (words "hot", "air", "balloon").
        words = words_of(query)
        for path in image_files(base):
            relative = Path(os.path.relpath(path, root)).as_posix()
            if relative in by_path:
                by_path[relative].tags = list(dict.fromkeys(by_path[relative].tags + words))
                continue
            if relative in unreadable:
                continue
            photo = _photo_for_file(path, relative, subfolder, words, seed, used_ids, max_bytes)
            if isinstance(photo, str):
                unreadable[relative] = photo
            else:
                by_path[relative] = photo
    _warn_unserved(unreadable)
    return list(by_path.values())


def _warn_unserved(unreadable: dict[str, str]) -> None:
    """One warning counting the files left out for their format, by format, naming three."""
    left = sorted(path for path, why in unreadable.items() if why.startswith(UNSERVED))
    if not left:
        return
    formats = Counter(re.sub(r"^.*?\((.*?)\).*$", r"\1", unreadable[path]) for path in left)
    log.warning("folder mode: %d file(s) left out, in a format not served here (%s): %s%s", len(left),
                ", ".join(f"{name} {n}" for name, n in formats.most_common()), ", ".join(left[:3]),
                f", and {len(left) - 3} more (-v names each)" if len(left) > 3 else "")


def check_folder(folder: str | Path, query_map: dict[str, str]) -> Path:
    """The folder, after checking that it and each mapped subfolder exist (FolderModeError if not),
    without reading a file: collect checks this before it creates a data root."""
    root = Path(folder)
    if not root.exists():
        raise FolderModeError(f"folder mode: {root} does not exist")
    if not root.is_dir():
        raise FolderModeError(f"folder mode: {root} is not a folder")
    if not query_map:
        raise FolderModeError("folder mode needs at least one query mapped to a subfolder "
                              "(source.local.query_map, or serve-flickr --map QUERY=SUBFOLDER)")
    for query, subfolder in query_map.items():
        mapped_subfolder(root, subfolder, query)
    return root


def mapped_subfolder(root: Path, subfolder: str, query: str) -> Path:
    """`root/subfolder`, which must stay inside `root` as written (no '..' out of it, no absolute
    path); the subfolder itself may be a symbolic link to a folder elsewhere."""
    base = Path(os.path.normpath(root / subfolder))
    if Path(subfolder).is_absolute() or not base.is_relative_to(Path(os.path.normpath(root))):
        raise FolderModeError(f"folder mode: subfolder {subfolder!r} for query {query!r} is outside {root}; "
                              f"give a path relative to the folder")
    if not base.exists():
        raise FolderModeError(f"folder mode: subfolder {subfolder!r} for query {query!r} does not exist in {root}")
    if not base.is_dir():
        raise FolderModeError(f"folder mode: {base} (query {query!r}) is not a folder")
    return base


def image_files(base: Path) -> list[Path]:
    """Image files under `base` (by their names), following links to folders; a link loop is walked
    once: those served, photo files of a format not served (HEIC, ...), and files without an extension
    (hidden ones never: .DS_Store)."""
    wanted = IMAGE_SUFFIXES | set(NOT_SERVED) | SNIFFED
    seen: set[str] = set()
    out = []
    for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames.clear()
            continue
        seen.add(real)
        dirnames.sort()
        out += [Path(dirpath, name) for name in sorted(filenames)
                if Path(name).suffix.lower() in wanted and not name.startswith(".")]
    return out


def photo_id_for(relative_path: str) -> str:
    """A stable 11-digit id derived from the file's path relative to the folder."""
    number = int(hashlib.sha1(relative_path.encode("utf-8")).hexdigest()[:15], 16)
    return str(10_000_000_000 + number % 89_999_999_999)


def _photo_for_file(path: Path, relative: str, kind: str, words: list[str], seed: int, used_ids: set[str],
                    max_bytes: int | None) -> Photo | str:
    """The file's photo, or why it is none (logged: at -v only for a format not served, which
    `_warn_unserved` counts)."""
    why = unreadable_why(path, max_bytes)
    if why is None:
        why, size = _image_size(path)
    if why is not None:
        log.log(logging.DEBUG if why.startswith(UNSERVED) else logging.WARNING, "folder mode: skipping %s, %s",
                path, why)
        return why
    width, height = size
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
        source_path=str(path), source_file=relative,
    )


UNSERVED = "unsupported format"


def _image_size(path: Path) -> tuple[str | None, tuple[int, int]]:
    """(None, the image's size), or (why it is not served, (0, 0)), from its header. A file named as a
    format not served is opened only if it may be one served under another name (an AVIF named .heic).
    Pillow's own warning on a large image (over 89 MP) is not printed: our line says curation judges it."""
    suffix = path.suffix.lower()
    if suffix in NOT_SERVED and suffix not in SNIFFED:
        return f"{UNSERVED} ({NOT_SERVED[suffix]}): not served", (0, 0)
    served = None if suffix in SERVED_SUFFIXES else SERVED_FORMATS     # by its name, or by its bytes alone
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=served) as image:
                width, height = image.size
    except Image.DecompressionBombError as error:     # over twice Pillow's limit: it refuses the header
        pixels = re.search(r"\((\d+) pixels\)", str(error))
        mp = f"{int(pixels.group(1)) / 1e6:.0f} MP" if pixels else "too many pixels"
        return (f"too large to open (decompression-bomb): {mp} in {path.stat().st_size} bytes, over the "
                f"{2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} MP Pillow opens"), (0, 0)
    except UnidentifiedImageError:
        named = NOT_SERVED.get(suffix) if served else None
        named = named or _heif_brand(path)       # an iPhone photo named .jpg, or with no extension
        if named:
            return f"{UNSERVED} ({named}): not served", (0, 0)
        return ("not an image" if served is None else
                f"{UNSERVED} (no extension): not a {', '.join(served)} image"), (0, 0)
    except OSError as error:
        return f"unreadable ({type(error).__name__})", (0, 0)
    if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
        log.info("folder mode: %s has %.0f MP (%dx%d): served; curation refuses an image over curate.max_pixels "
                 "(decompression-bomb)", path, width * height / 1e6, width, height)
    return None, (width, height)


def _heif_brand(path: Path) -> str | None:
    """'HEIF, brand heic' for a file that starts as an ISO media file (HEIC, AVIF), else None."""
    with open(path, "rb") as f:
        head = f.read(12)
    return f"HEIF, brand {head[8:12].decode('ascii', 'replace')}" if head[4:8] == b"ftyp" else None


def unreadable_why(path: Path, max_bytes: int | None = None) -> str | None:
    """Why a file listed is not served, from a stat: a link to nothing or to something that is no
    file (a device such as /dev/zero, a FIFO), an empty file, one over `max_bytes`; None otherwise."""
    if not path.is_file():
        if not path.is_symlink():
            return "not a file"
        return "a link to something that is not a regular file" if path.exists() else "a link to nothing"
    size = path.stat().st_size
    if size == 0:
        return "empty file"
    if max_bytes is not None and size > max_bytes:
        return f"too large: {size} bytes, over source.max_image_bytes {max_bytes}"
    return None


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
