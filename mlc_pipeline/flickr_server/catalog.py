"""The default world's photo records: who, when, which licence, which tags, which sizes.

Everything derives from one random.Random(seed), so a seed always gives the same catalogue.
"""

from __future__ import annotations

import itertools
import random
from datetime import datetime, timezone

from .model import SIZE_TABLE, Photo, size_dimensions
from .scenes import background_tags

CLASS_NAMES = ("balloon", "kite", "sailboat")
UNKNOWN_KINDS = ("house", "flower", "fish")  # searchable only by their own names: the unknown probe set
MULTI_PAIRS = (("balloon", "kite"), ("balloon", "sailboat"), ("kite", "sailboat"))

# Photo counts at scale 1.0.
BASE_COUNTS = {"balloon": 600, "kite": 600, "sailboat": 600, "multi": 150, "scene": 2000,
               "distractor": 800, "house": 200, "flower": 200, "fish": 200}

# Extra words per kind. They never include another kind's name or a scene/distractor word, so a query
# for one of those never returns these photos.
KIND_WORDS = {
    "balloon": ["balloons", "party", "birthday", "celebration", "helium"],
    "kite": ["kites", "wind", "flying", "kitefestival"],
    "sailboat": ["sailing", "boat", "yacht", "regatta", "sail"],
    "distractor": ["geometry", "blocks", "plastic"],
    "house": ["home", "cottage", "roof"],
    "flower": ["bloom", "petals", "blossom"],
    "fish": ["aquarium", "goldfish", "underwater"],
}
DISTRACTOR_TAGS = ["toys", "shapes", "colorful"]
CAMERA_TAGS = ["canon", "nikon", "iphone", "fujifilm", "sony", "olympus"]
TITLE_ADJECTIVES = ["Red", "Blue", "Big", "Little", "Happy", "Windy", "Summer", "Lonely", "Bright", "Old"]
TITLE_PLACES = ["fair", "park", "beach", "harbour", "meadow", "carnival"]
HOSTILE_TEXTS = [
    "../../etc/passwd", "..\\..\\windows\\system32", "/absolute/path", "CON", "nul.txt",
    'quote " and \' apostrophe', "ünïcødé 気球 ✈ 🎈", "tab\tand\nnewline", "<script>alert(1)</script>",
    "a" * 300, "semi;colon|pipe*star?mark<>", "  leading and trailing  ", "%2e%2e%2f", "$(rm -rf ~)",
]
OWNER_FIRST = ["anna", "bob", "chen", "dmitri", "eva", "farid", "grace", "hiro", "ines", "jon", "kofi", "lena",
               "marta", "nils", "olga", "pedro", "qi", "rosa", "sven", "tariq", "uma", "viktor", "wen", "yusuf"]
OWNER_LAST = ["photo", "pics", "smith", "garcia", "nguyen", "mueller", "rossi", "kim", "silva", "lens", "shots"]

YEAR_2005 = int(datetime(2005, 1, 1, tzinfo=timezone.utc).timestamp())
YEAR_2026 = int(datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()) - 1
# Licences: 60 % in {4, 5, 9, 10, 11}, the rest spread over the other twelve ids.
_OPEN_LICENSES = (4, 5, 9, 10, 11)
LICENSE_WEIGHTS = {i: (12.0 if i in _OPEN_LICENSES else 40.0 / 12) for i in range(17)}
ASPECTS = [((4, 3), 40), ((3, 2), 25), ((3, 4), 15), ((2, 3), 10), ((1, 1), 10)]
# (share, largest long side present, range of the original's long side)
SIZE_TIERS = [(0.01, "t", (100, 239)), (0.04, "m", (500, 639)), (0.15, "z", (640, 799)), (0.80, "c", (800, 6000))]
_SIZE_ORDER = ["sq", "t", "q", "s", "n", "m", "z", "c"]


def default_photos(seed: int, scale: float) -> list[Photo]:
    """The photo records of the default world (ids assigned in upload order, like Flickr's)."""
    rng = random.Random(seed)
    owners = _make_owners(rng, 400)
    owner_weights = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(owners))))  # cumulative
    photos = []
    for kind in _kinds_to_make(scale):
        photos.append(_make_photo(rng, kind, owners, owner_weights))
    assign_ids(photos, rng)
    return photos


def _kinds_to_make(scale: float) -> list[str]:
    kinds = []
    for name, count in BASE_COUNTS.items():
        n = max(1, round(count * scale)) if scale > 0 else 0
        if name == "multi":
            kinds += ["+".join(MULTI_PAIRS[i % len(MULTI_PAIRS)]) for i in range(n)]
        else:
            kinds += [name] * n
    return kinds


def _make_owners(rng: random.Random, n: int) -> list[tuple[str, str]]:
    owners = []
    for i in range(n):
        nsid = f"{rng.randint(10_000_000, 199_999_999)}@N0{rng.randint(0, 8)}"
        if i % 25 == 20 and i // 25 < len(HOSTILE_TEXTS):  # every hostile name owns a few photos
            name = HOSTILE_TEXTS[i // 25]
        elif rng.random() < 0.5:
            name = f"{rng.choice(OWNER_FIRST).title()} {rng.choice(OWNER_LAST).title()}"
        else:
            name = f"{rng.choice(OWNER_FIRST)}_{rng.choice(OWNER_LAST)}{rng.randint(1, 999)}"
        owners.append((nsid, name))
    return owners


def _make_photo(rng: random.Random, kind: str, owners, owner_weights) -> Photo:
    render_seed = rng.getrandbits(48)
    (aspect_w, aspect_h), = rng.choices([a for a, _ in ASPECTS], [w for _, w in ASPECTS])
    sizes, o_width, o_height = _make_sizes(rng, aspect_w, aspect_h)
    dateupload = rng.randint(YEAR_2005, YEAR_2026)
    taken = max(YEAR_2005 - 5 * 365 * 86400, dateupload - rng.randint(0, 3 * 365 * 86400))
    owner, ownername = rng.choices(owners, cum_weights=owner_weights)[0]
    return Photo(
        id="", secret=f"{rng.getrandbits(40):010x}", server=str(rng.randint(1000, 65535)),
        farm=rng.choice([1, 2, 3, 4, 5, 6, 7, 8, 9, 66]), owner=owner, ownername=ownername,
        title=_make_title(rng, kind, dateupload), tags=_make_tags(rng, kind, render_seed, dateupload),
        license=rng.choices(list(LICENSE_WEIGHTS), list(LICENSE_WEIGHTS.values()))[0],
        dateupload=dateupload, datetaken=format_time(taken), kind=kind, sizes=sizes,
        o_width=o_width, o_height=o_height, render_seed=render_seed,
    )


def _make_sizes(rng: random.Random, aspect_w: int, aspect_h: int) -> tuple[dict[str, tuple[int, int]], int, int]:
    u, edge = rng.random(), 0.0
    for share, largest, (low, high) in SIZE_TIERS:
        edge += share
        if u < edge:
            break
    keys = ["sq", "t"] if largest == "t" else _SIZE_ORDER[: _SIZE_ORDER.index(largest) + 1]
    sizes = {key: size_dimensions(SIZE_TABLE[key][0], SIZE_TABLE[key][1], aspect_w, aspect_h) for key in keys}
    o_width, o_height = size_dimensions(rng.randint(low, high), False, aspect_w, aspect_h)
    return sizes, o_width, o_height


def _make_tags(rng: random.Random, kind: str, render_seed: int, dateupload: int) -> list[str]:
    if kind == "scene":
        tags = background_tags(kind, render_seed)
    elif kind == "distractor":
        tags = rng.sample(DISTRACTOR_TAGS, rng.randint(1, 3)) + rng.sample(KIND_WORDS["distractor"], rng.randint(0, 2))
        if "toys" not in tags and "shapes" not in tags:
            tags.insert(0, rng.choice(["toys", "shapes"]))
    else:
        tags = []
        for name in kind.split("+"):
            tags += [name] + rng.sample(KIND_WORDS[name], rng.randint(0, 2))
    if rng.random() < 0.3:
        tags.append(rng.choice(CAMERA_TAGS))
    if rng.random() < 0.3:
        tags.append(str(datetime.fromtimestamp(dateupload, tz=timezone.utc).year))
    return list(dict.fromkeys(tags))


def _make_title(rng: random.Random, kind: str, dateupload: int) -> str:
    u = rng.random()
    if u < 0.015:
        return rng.choice(HOSTILE_TEXTS)
    if u < 0.25:
        return rng.choice(["IMG_", "DSC_", "P", "DSCN"]) + f"{rng.randint(0, 9999):04d}"
    if u < 0.32:
        return rng.choice(["", "Untitled", "untitled", "photo"])
    name = {"scene": "view", "distractor": "shapes"}.get(kind, kind.split("+")[0])
    if u < 0.6:
        return f"{rng.choice(TITLE_ADJECTIVES)} {name}"
    if u < 0.8:
        return f"{name.title()} at the {rng.choice(TITLE_PLACES)}"
    year = datetime.fromtimestamp(dateupload, tz=timezone.utc).year
    return f"{name} {year} #{rng.randint(1, 99)}"


def format_time(unix: int) -> str:
    return datetime.fromtimestamp(unix, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def assign_ids(photos: list[Photo], rng: random.Random, taken: set[str] | None = None) -> None:
    """Give photos without an id a numeric id that grows with upload time, as Flickr ids do."""
    taken = taken if taken is not None else {p.id for p in photos if p.id}
    for photo in photos:
        if photo.id:
            continue
        candidate = 10_000_000_000 + (photo.dateupload - YEAR_2005) * 4 + rng.randint(0, 3)
        while str(candidate) in taken:
            candidate += 1
        photo.id = str(candidate)
        taken.add(photo.id)
