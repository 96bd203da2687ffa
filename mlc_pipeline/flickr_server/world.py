"""The World: every photo the fake Flickr knows, its search, and its image bytes."""

from __future__ import annotations

import random
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Mapping

from .bodies import Body
from .catalog import YEAR_2026, assign_ids, default_photos
from .faults import FaultSpec, unit_hash
from .folder import FolderModeError, folder_photos
from .model import Photo, WorldSpec, normalize_size_key
from .render import encode_jpeg, near_duplicate, render_scene
from .search import SearchIndex, page_of, parse_query


class ByteLRU:
    """A thread-safe LRU of bytes bounded by total size."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: tuple) -> bytes | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._size -= len(old)
            self._items[key] = value
            self._size += len(value)
            while self._size > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._size -= len(evicted)


class World:
    def __init__(self, spec: WorldSpec, photos: list[Photo], cache_bytes: int = 256 * 1024 * 1024,
                 unreadable: dict[str, str] | None = None):
        self.spec = spec
        self.photos = photos
        self.unreadable = unreadable or {}     # folder mode: files not served, path in the folder -> why
        self.by_id = {photo.id: photo for photo in photos}
        self.index = SearchIndex(photos)
        self._cache = ByteLRU(cache_bytes)

    def photo(self, photo_id: str) -> Photo:
        return self.by_id[photo_id]

    def search(self, params: Mapping[str, str]) -> tuple[int, list[Photo]]:
        """(true total, photos of the requested page). Raises search.SearchError for refused searches."""
        query = parse_query(params)
        matches = self.index.sorted_matches(query)
        page, _pages = page_of(matches, query, self.spec.result_cap)
        return len(matches), page

    def image_body(self, photo_id: str, size_key: str) -> Body:
        """What the server sends for a photo at one of its sizes: a folder-mode file (or an exact
        twin of one) is read from disk as it is sent, never held whole in memory, whatever its size;
        any other picture is `image_bytes`. KeyError as `image_bytes`."""
        photo = self.by_id[photo_id]
        original = self.by_id[photo.dup_of] if photo.dup_kind == "exact" else photo
        if original.source_path is not None and original.dup_kind is None \
                and normalize_size_key(size_key) in photo.sizes:
            return Body(path=original.source_path)
        return Body(self.image_bytes(photo_id, size_key))

    def image_bytes(self, photo_id: str, size_key: str) -> bytes:
        """The JPEG (or, in folder mode, the original file, read whole: the server sends `image_body`)
        of a photo at one of its sizes. Same bytes on every call. KeyError for an unknown photo or a
        size the photo lacks."""
        photo = self.by_id[photo_id]
        size = normalize_size_key(size_key)
        if size not in photo.sizes:
            raise KeyError(f"photo {photo_id} has no size {size_key!r}")
        key = (photo_id, size)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._produce(photo, size)
            self._cache.put(key, cached)
        return cached

    def _produce(self, photo: Photo, size: str) -> bytes:
        if photo.dup_kind == "exact":
            return self.image_bytes(photo.dup_of, size)
        if photo.dup_kind == "near":
            return near_duplicate(self.image_bytes(photo.dup_of, size), int(photo.id))
        if photo.source_path is not None:
            return Path(photo.source_path).read_bytes()
        width, height = photo.sizes[size]
        image = render_scene(photo.kind, photo.render_seed, (photo.o_width, photo.o_height), width, height)
        return encode_jpeg(image)

    def duplicate_counts(self) -> dict[str, int]:
        counts = {"dup_exact": 0, "dup_near": 0}
        for photo in self.photos:
            if photo.dup_kind:
                counts[f"dup_{photo.dup_kind}"] += 1
        return {name: n for name, n in counts.items() if n}


def build_world(spec: WorldSpec, faults: FaultSpec | None = None) -> World:
    """Build the world a spec describes; duplicate faults add twin photos under new ids."""
    unreadable: dict[str, str] = {}
    if spec.kind == "default":
        photos = default_photos(spec.seed, spec.scale)
    elif spec.kind == "folder":
        if not spec.folder:
            raise FolderModeError("folder mode needs a folder (source.local.folder, or serve-flickr --folder)")
        photos = folder_photos(spec.folder, spec.query_map, spec.seed, unreadable, spec.max_file_bytes)
    else:
        raise ValueError(f"unknown world kind {spec.kind!r} (expected 'default' or 'folder')")
    if faults is not None and (faults.dup_exact > 0 or faults.dup_near > 0):
        photos = photos + make_duplicates(photos, faults)
    return World(spec, photos, unreadable=unreadable)


def make_duplicates(photos: list[Photo], faults: FaultSpec) -> list[Photo]:
    """Twin entries re-uploaded later under new ids with the same tags: exact (same bytes) or near."""
    rng = random.Random(f"duplicates:{faults.seed}")
    twins = []
    for original in photos:
        u = unit_hash(faults.seed, "dup", original.id)
        if u < faults.dup_exact:
            dup_kind = "exact"
        elif u < faults.dup_exact + faults.dup_near:
            dup_kind = "near"
        else:
            continue
        dateupload = min(YEAR_2026, original.dateupload + rng.randint(3600, 400 * 86400))
        twins.append(Photo(
            id="", secret=f"{rng.getrandbits(40):010x}", server=str(rng.randint(1000, 65535)), farm=original.farm,
            owner=original.owner, ownername=original.ownername, title=original.title, tags=list(original.tags),
            license=original.license, dateupload=dateupload, datetaken=original.datetaken, kind=original.kind,
            sizes=dict(original.sizes), o_width=original.o_width, o_height=original.o_height,
            render_seed=original.render_seed, source_path=original.source_path, source_file=original.source_file,
            dup_of=original.id, dup_kind=dup_kind,
        ))
    assign_ids(twins, rng, taken={p.id for p in photos})
    return twins
