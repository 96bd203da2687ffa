"""Plain data shared by the offline Flickr server: the world spec, photo records, Flickr's size table."""

from __future__ import annotations

from dataclasses import dataclass, field

# Flickr's standard sizes: extras label -> (long side in px, square?, URL suffix).
# url_l (1024, suffix _b) exists only in folder mode, where big source files can offer it.
SIZE_TABLE: dict[str, tuple[int, bool, str]] = {
    "sq": (75, True, "_s"),
    "t": (100, False, "_t"),
    "q": (150, True, "_q"),
    "s": (240, False, "_m"),
    "n": (320, False, "_n"),
    "m": (500, False, ""),
    "z": (640, False, "_z"),
    "c": (800, False, "_c"),
    "l": (1024, False, "_b"),
}
SUFFIX_TO_SIZE: dict[str, str] = {suffix: key for key, (_, _, suffix) in SIZE_TABLE.items()}

# Real responses mix types: these sizes report height/width as ints, the others as strings.
INT_DIMENSION_SIZES = frozenset({"sq", "t", "q", "s"})

# The current licence list (flickr.photos.licenses.getInfo), ids 0-16.
LICENSES: list[tuple[int, str, str]] = [
    (0, "All Rights Reserved", ""),
    (1, "CC BY-NC-SA 2.0", "https://creativecommons.org/licenses/by-nc-sa/2.0/"),
    (2, "CC BY-NC 2.0", "https://creativecommons.org/licenses/by-nc/2.0/"),
    (3, "CC BY-NC-ND 2.0", "https://creativecommons.org/licenses/by-nc-nd/2.0/"),
    (4, "CC BY 2.0", "https://creativecommons.org/licenses/by/2.0/"),
    (5, "CC BY-SA 2.0", "https://creativecommons.org/licenses/by-sa/2.0/"),
    (6, "CC BY-ND 2.0", "https://creativecommons.org/licenses/by-nd/2.0/"),
    (7, "No known copyright restrictions", "https://www.flickr.com/commons/usage/"),
    (8, "United States Government Work", "http://www.usa.gov/copyright.shtml"),
    (9, "CC0 1.0", "https://creativecommons.org/publicdomain/zero/1.0/"),
    (10, "Public Domain Mark 1.0", "https://creativecommons.org/publicdomain/mark/1.0/"),
    (11, "CC BY 4.0", "https://creativecommons.org/licenses/by/4.0/"),
    (12, "CC BY-SA 4.0", "https://creativecommons.org/licenses/by-sa/4.0/"),
    (13, "CC BY-ND 4.0", "https://creativecommons.org/licenses/by-nd/4.0/"),
    (14, "CC BY-NC 4.0", "https://creativecommons.org/licenses/by-nc/4.0/"),
    (15, "CC BY-NC-SA 4.0", "https://creativecommons.org/licenses/by-nc-sa/4.0/"),
    (16, "CC BY-NC-ND 4.0", "https://creativecommons.org/licenses/by-nc-nd/4.0/"),
]


@dataclass
class WorldSpec:
    """What world the server holds. kind='default' draws pictures; kind='folder' serves image files."""

    kind: str = "default"
    seed: int = 0
    scale: float = 1.0  # multiplies every photo count of the default world
    folder: str | None = None
    query_map: dict[str, str] = field(default_factory=dict)  # folder mode: query text -> subfolder
    result_cap: int = 4000  # Flickr returns at most this many results per query
    api_key: str | None = None  # if set, only this key is accepted; otherwise any non-empty key
    # folder mode: a larger file is not served but listed as unreadable, with its size (collect sets
    # source.max_image_bytes: the downloader would refuse it anyway); None: any size is served
    max_file_bytes: int | None = None


@dataclass
class Photo:
    """One photo as the server knows it: the API metadata plus how to produce its pixels."""

    id: str
    secret: str
    server: str
    farm: int
    owner: str
    ownername: str
    title: str
    tags: list[str]
    license: int
    dateupload: int
    datetaken: str
    kind: str  # what the picture really shows: 'balloon', 'balloon+kite', 'scene', 'distractor', ...
    sizes: dict[str, tuple[int, int]]  # size label ('sq', 'm', ...) -> (width, height)
    o_width: int
    o_height: int
    render_seed: int = 0  # default world: every random choice of the picture derives from this
    source_path: str | None = None  # folder mode: the file served for every size
    source_file: str | None = None  # folder mode: that file's path relative to the folder (extras=source_file)
    dup_of: str | None = None
    dup_kind: str | None = None  # 'exact' | 'near' | None


def size_dimensions(long_side: int, square: bool, aspect_w: int, aspect_h: int) -> tuple[int, int]:
    """Width and height of a Flickr size for a picture of the given aspect ratio."""
    if square:
        return long_side, long_side
    if aspect_w >= aspect_h:
        return long_side, max(1, round(long_side * aspect_h / aspect_w))
    return max(1, round(long_side * aspect_w / aspect_h)), long_side


def normalize_size_key(size_key: str) -> str:
    """Accept 'm', 'url_m' or a URL suffix like '_b' and return the size label."""
    key = size_key[4:] if size_key.startswith("url_") else size_key
    if key in SIZE_TABLE:
        return key
    if key in SUFFIX_TO_SIZE:
        return SUFFIX_TO_SIZE[key]
    raise KeyError(f"unknown size {size_key!r}")
