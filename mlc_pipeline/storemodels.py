"""The model registry of an object-store data root: the bundles under models/ and the pointer
models/LATEST, fetched into a cache and published from it.

A bundle is published whole: its files, then models/<bundle>/_COMPLETE (objectstore.push_folder). The
store's pointer names a published bundle; it is the registry's truth, and a cache's models/LATEST
follows it at every fetch of the model (`pull_model`, `pull_registry`). It moves in two ways:
- a training publishes its bundle and moves it (sync.push_models), from the pointer the command saw
  when it began: another machine's move since is kept, and said in a warning naming that model;
- `mlc promote` moves it (`promoting`), from the pointer it read a moment before: refused in one
  line when another machine moved it in between.
Both are a compare-and-swap on S3 (a conditional write, If-Match / If-None-Match), a check just
before the write elsewhere (`Store.replace_text`); every write is its own (`pointer_text`: the name on
its first line, then a token), so a pointer promoted back to the model it named is still a move.

A training's move is owed before it starts: before the bundle the cache's LATEST names is published,
the move is recorded in the cache's sync state (`owe_pointer_move`: that bundle, and the pointer it
moves from). Killed or failed anywhere after that (the marker written, the pointer not moved: the
rerun saw the bundle published and never moved the pointer), the next command that publishes from this
cache finishes it before it fetches anything (`finish_pointer_move`): the bundle published if its
marker is missing, then the pointer moved from the one recorded. Only ever to the bundle the cache's
LATEST named (what the shipping rule, or `mlc train`, made it: a round refused is published, never
pointed at), and never over a move made since (another machine's training or promote: the compare-
and-swap fails, a warning says so); a `mlc promote` from this cache since drops it.

`mlc predict` and `mlc promote` with -c CONFIG fetch the bundles they name and the pointer
(`pull_registry`); `mlc models` fetches each published bundle's bundle.json and metrics.json alone,
with its marker, into models/.listings/<bundle>/, and the store's pointer into models/.listings/LATEST
(`pull_listing`): a fresh cache lists every published model without downloading its weights;
`mlc models --compare A B` fetches those files of A and B alone (`pull_compared`).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from mlc_pipeline.config import Config
from mlc_pipeline.fsutil import write_text_atomic
from mlc_pipeline.layout import MODEL_LISTINGS, MODEL_POINTER, latest_name, point_latest
from mlc_pipeline.locking import data_root_lock
from mlc_pipeline.objectstore import (MARKER, ObjectStoreError, Store, complete_copy, missing_files, pull_folder,
                                      push_folder, read_marker, store_errors, store_of)
from mlc_pipeline.storestate import LATEST_SEEN, read_state, write_state
from mlc_pipeline.storeversions import pull_listings

log = logging.getLogger(__name__)
POINTER_KEY = "models/LATEST"
POINTER_MOVE = "pointer_move"   # in the sync state: {"bundle": name, "from": the pointer's tag} a publish owes
LISTINGS = MODEL_LISTINGS       # models/.listings/<bundle>/: a store bundle's metadata alone (`mlc models`)
LISTED_FILES = ("bundle.json", "metrics.json")


def store_pointer(store: Store) -> str | None:
    "The bundle the store's models/LATEST names (its first line), or None (no pointer, or an empty one)."
    return ((store.read_text(POINTER_KEY) or "").strip().splitlines() or [""])[0].strip() or None


def pointer_text(name: str) -> str:
    """models/LATEST naming `name`: the name, then a line no other write of it holds. The compare-and-
    swap tells writes apart by their ETag (S3: the MD5 of the bytes) or text, and the name alone made a
    pointer promoted back to the model it named (m2, m1, m2) the write a stale move began from: a
    training, or a publish killed and finished days later, then replaced the user's choice unwarned.
    The line is a random 64-bit token written as spaces and tabs (review31): a reader that strips the
    pointer, as 0.2.0 does, still reads the name alone."""
    token = uuid.uuid4().int & (2**64 - 1)
    return f"{name}\n" + "".join(" \t"[token >> bit & 1] for bit in range(64)) + "\n"


def published_bundles(store: Store, held: dict | None = None) -> list[str]:
    "The bundles the store holds with their marker (`held`: the listing of models/, when read already)."
    held = store.listing("models") if held is None else held
    return sorted({k.split("/")[1] for k in held if k.endswith(f"/{MARKER}") and k.count("/") == 2})


def pull_bundle(store: Store, cfg: Config, name: str) -> bool:
    """Fetch a published bundle into the cache unless complete there; False when the store has no
    such bundle (with its marker)."""
    marker = read_marker(store, f"models/{name}") if name and "/" not in name else None
    if marker is None:
        return False
    if pull_folder(store, f"models/{name}", cfg.layout.models / name, marker):
        log.info("model bundle %s fetched from %s", name, store.url)
    return True


def pull_model(store: Store, cfg: Config) -> str | None:
    """Fetch the store's latest product model into the cache, with the record of what it learned
    (`pull_lineage`), and point the cache's LATEST at it."""
    name = store_pointer(store)
    if name is None or not pull_bundle(store, cfg, name):
        return None
    pull_lineage(store, cfg, name)
    point_latest(cfg.layout.models, name)
    return name


def pull_lineage(store: Store, cfg: Config, name: str) -> list[str]:
    """What the cache needs to tell what bundle `name`'s network learned (model/lineage.py), fetched:
    a bundle trained before bundle.json recorded it (`learned_from`) names only the bundle it continued
    (`weights.continued_from`), and a cache that fetched LATEST alone could not tell, so once the catalog
    recorded a takedown the shipped model was neither reused nor kept, and round 0 replaced it each
    night with no comparison (review29 finding 5). Each such ancestor the cache lacks: its bundle.json
    and metrics.json alone, with its marker, into models/.listings/<ancestor>/, as `mlc models` lists
    it (a small file a bundle, never the weights), until a bundle that records the chain. An ancestor
    the store lacks (deleted) is left: the model then cannot be told (learned.taken_down_learned).
    The ancestors fetched."""
    models, fetched, seen, at = cfg.layout.models, [], {name}, cfg.layout.models / name
    while True:
        try:
            meta = json.loads((at / "bundle.json").read_text())
            parent = None if meta.get("learned_from") is not None else (meta.get("weights") or {}).get("continued_from")
        except (OSError, ValueError, AttributeError):
            return fetched              # unreadable: learned.py says it cannot be told
        if not isinstance(parent, str) or not parent or "/" in parent or parent in seen:
            return fetched
        seen.add(parent)
        at = models / parent if (models / parent / "bundle.json").is_file() else models / LISTINGS / parent
        if not (at / "bundle.json").is_file():
            marker = read_marker(store, f"models/{parent}")
            if marker is None:
                return fetched
            listed_copy(at, marker)
            store.download(listed_files(f"models/{parent}", at, marker))
            fetched.append(parent)


def pull_registry(store: Store, cfg: Config, wanted: list[str]) -> None:
    """The fetch of `mlc predict` and `mlc promote`: the bundles `wanted` names (bundle names, or
    `latest`; a folder given as a path is not the store's), whole; then the cache's LATEST pointed
    where the store's is, when the cache holds that bundle."""
    owe_pointer_move(store, cfg)        # a training here the store lacks: its move kept before LATEST follows
    latest = store_pointer(store)
    names = [latest if spec == "latest" else spec for spec in wanted if spec and not Path(spec).is_dir()]
    for name in dict.fromkeys(n for n in names if n):
        pull_bundle(store, cfg, name)
    follow_pointer(store, cfg, latest)


def follow_pointer(store: Store, cfg: Config, latest: str | None) -> None:
    "The cache's LATEST pointed at `latest` (the store's pointer) when the cache holds that bundle whole."
    marker = read_marker(store, f"models/{latest}") if latest else None
    if marker is not None and complete_copy(cfg.layout.models / latest, marker):
        point_latest(cfg.layout.models, latest)


def pull_listing(store: Store, cfg: Config) -> None:
    """`mlc models` on an object-store data root: every published bundle the cache lacks whole listed
    from its bundle.json and metrics.json alone, fetched with its marker (the files it lists, so the
    listing knows export.pkl is there) into models/.listings/<bundle>/; the store's pointer into
    models/.listings/LATEST (what the table marks LATEST); the cache's LATEST pointed where the store's
    is, when the cache holds that bundle. The first listing of a fresh cache downloaded every bundle
    whole, weights included (the scale26 audit's leftover)."""
    owe_pointer_move(store, cfg)        # a training here the store lacks: its move kept before LATEST follows
    root, latest = cfg.layout.models / LISTINGS, store_pointer(store)
    held = store.listing("models")
    listed, todo = set(), []
    for name in published_bundles(store, held):
        folder, key = root / name, f"models/{name}"
        kept = folder / MARKER
        if not (kept.is_file() and kept.stat().st_size == held.get(f"{key}/{MARKER}", {}).get("size")):
            marker = read_marker(store, key)        # a marker is written once: the copy kept is it
            if marker is None:
                continue
            listed_copy(folder, marker)
        marker = json.loads(kept.read_text())
        if complete_copy(cfg.layout.models / name, marker):
            continue                    # listed from the cache's own copy
        listed.add(name)
        todo += listed_files(key, folder, marker)
    store.download(todo)                # every bundle's in one batch
    for stale in (p for p in root.iterdir() if p.is_dir() and p.name not in listed) if root.is_dir() else ():
        shutil.rmtree(stale)            # withdrawn from the store, or whole in the cache now
    list_pointer(store, cfg, latest)


def pull_compared(store: Store, cfg: Config, specs: list[str]) -> None:
    """`mlc models --compare A B` on an object-store data root: what the comparison reads of each bundle
    `specs` names (a name, or `latest`: the store's pointer) that the cache lacks whole, its bundle.json
    and metrics.json with its marker, into models/.listings/<bundle>/ as `pull_listing` fetches them;
    the store's pointer into models/.listings/LATEST. It fetched both bundles whole, weights included."""
    owe_pointer_move(store, cfg)        # a training here the store lacks: its move kept before LATEST follows
    root, latest = cfg.layout.models / LISTINGS, store_pointer(store)
    todo = []
    for name in dict.fromkeys(latest if spec == "latest" else spec for spec in specs if not Path(spec).is_dir()):
        marker = read_marker(store, f"models/{name}") if name and "/" not in name else None
        if marker is None and name and "/" not in name and (root / name).is_dir():
            shutil.rmtree(root / name)      # gone from the store: no old listing compared unsaid (review31)
        if marker is not None and not complete_copy(cfg.layout.models / name, marker):
            listed_copy(root / name, marker)
            todo += listed_files(f"models/{name}", root / name, marker)
    store.download(todo)
    list_pointer(store, cfg, latest)


def list_pointer(store: Store, cfg: Config, latest: str | None) -> None:
    """After a listing: the store's pointer `latest` in models/.listings/LATEST (what the table marks
    LATEST, what `--compare latest` names), and the cache's LATEST pointed at it when the cache holds it whole."""
    root = cfg.layout.models / LISTINGS
    if latest:
        root.mkdir(parents=True, exist_ok=True)
        point_latest(root, latest)
    elif (root / MODEL_POINTER).exists():
        (root / MODEL_POINTER).unlink()
    follow_pointer(store, cfg, latest)


def listed_copy(folder: Path, marker: dict) -> None:
    "models/.listings/<bundle>/ begun: a store bundle's marker, the files it lists to follow (`listed_files`)."
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / MARKER, json.dumps(marker))


def listed_files(key: str, folder: Path, marker: dict) -> list[tuple[str, Path]]:
    "What a listing of a store bundle (`key`) lacks in `folder` of its bundle.json and metrics.json."
    return missing_files(key, folder, {f: marker["files"][f] for f in LISTED_FILES if f in marker["files"]})


def owe_pointer_move(store: Store, cfg: Config, held: dict | None = None) -> None:
    """Before a publish uploads anything of it: the bundle the cache's LATEST names, when the store lacks
    it (this cache trained it, and nothing published it yet), recorded as the store's pointer to be
    moved to it from the pointer this cache last fetched (LATEST_SEEN; the store's now, never fetched).
    A move already owed to that bundle keeps the pointer it was recorded from."""
    name, state = latest_name(cfg.layout.models), read_state(cfg)
    if not name or not (cfg.layout.models / name / "bundle.json").is_file() or (
            state.get(POINTER_MOVE) or {}).get("bundle") == name:
        return
    if has_marker(store, f"models/{name}", held):
        return
    seen = state[LATEST_SEEN] if LATEST_SEEN in state else store.pointer_tag(POINTER_KEY)
    write_state(cfg, **{POINTER_MOVE: {"bundle": name, "from": seen}})


def finish_pointer_move(store: Store, cfg: Config, fetching: bool = False) -> None:
    """The move of the store's pointer this cache owes (`owe_pointer_move`), done: its bundle published
    if its marker is missing (a publish killed before it), then the pointer moved from the one recorded
    (`move_pointer`); the debt dropped either way. A bundle gone from the cache and never published is
    said in a warning. `fetching` (before a command, sync.pull): a bundle whose dataset version the
    store lacks is left to the command's publish, which publishes the version first."""
    move = read_state(cfg).get(POINTER_MOVE)
    if not move:
        return
    name = move["bundle"]
    bundle = cfg.layout.models / name
    if read_marker(store, f"models/{name}") is None:
        if fetching and (bundle / "bundle.json").is_file() and not version_published(store, bundle):
            return
        if not (bundle / "bundle.json").is_file():
            log.warning("the model %s this cache was to make %s/%s is gone from the cache (%s) and was never "
                        "published: the store's LATEST stays %s", name, store.url, POINTER_KEY, cfg.layout.models,
                        store_pointer(store))
            write_state(cfg, **{POINTER_MOVE: None})
            return
        push_bundle(store, bundle)
    if move_pointer(store, cfg, name, move["from"]):
        if (bundle / "bundle.json").is_file():
            point_latest(cfg.layout.models, name)      # a fetch since pointed it back
        else:
            pull_model(store, cfg)
    write_state(cfg, **{POINTER_MOVE: None})


def version_published(store: Store, bundle: Path) -> bool:
    "Has the store the dataset version a cache's bundle was trained on (bundle.json's, `name/vN`)?"
    try:
        version = json.loads((bundle / "bundle.json").read_text()).get("dataset_version")
    except (OSError, ValueError, AttributeError):
        return True                     # not told: published as any bundle is
    if not isinstance(version, str) or not re.fullmatch(r"[^/]+/v\d+", version):
        return True
    return store.info(f"datasets/{version}/{MARKER}") is not None


def move_pointer(store: Store, cfg: Config, name: str, seen: str | None) -> bool:
    """The store's models/LATEST moved to `name` from the pointer `seen` (a compare-and-swap); True when
    it names `name` now. Moved meanwhile by another machine (two trainings at once, a promote): kept,
    said in a warning naming the model it names, and this cache's LATEST follows it."""
    before = store_pointer(store)
    tag = store.replace_text(POINTER_KEY, pointer_text(name), seen)
    if tag is None and before == name:      # a move already made (killed before its record was dropped)
        tag = store.pointer_tag(POINTER_KEY)
    if tag is not None:
        write_state(cfg, **{LATEST_SEEN: tag})
        if before != name:
            log.info("%s/%s: %s -> %s", store.url, POINTER_KEY, before or "(none)", name)
        return True
    log.warning("%s/%s was moved to %s by another machine since this cache's publish of %s began: %s is published "
                "but is not the LATEST model (`mlc promote %s -c CONFIG` makes it so); this cache's models/LATEST "
                "follows the store's", store.url, POINTER_KEY, store_pointer(store), name, name, name)
    pull_model(store, cfg)
    return False


def has_marker(store: Store, key: str, held: dict | None = None) -> bool:
    "Is `key` published (its marker in `held`, a listing read already; else asked of the store, that key alone)?"
    return f"{key}/{MARKER}" in held if held is not None else store.info(f"{key}/{MARKER}") is not None


def push_bundle(store: Store, bundle: Path, held: dict | None = None) -> bool:
    """Publish a cache's bundle the store lacks (its files, then its marker); False when published already."""
    key = f"models/{bundle.name}"
    if has_marker(store, key, held):
        return False
    push_folder(store, bundle, key, {"bundle": bundle.name})
    return True


@contextmanager
def promoting(cfg: Config | None, spec: str) -> Iterator[Callable[[Path], str | None] | None]:
    """`mlc promote` on an object-store data root: under the cache's write lock, the bundle `spec`
    fetched (it may be in the store only), then a `publish(bundle)` for registry.promote to call once
    it checked the bundle: the bundle published if it is not, then the store's pointer moved from what
    it was when this began; it returns the name it named. None for a local data root."""
    store = store_of(cfg) if cfg is not None else None
    if store is None:
        yield None
        return
    with data_root_lock(cfg.data_dir, "mlc promote"), store_errors(store):
        store.check()
        seen, previous = store.pointer_tag(POINTER_KEY), store_pointer(store)
        pull_registry(store, cfg, [spec])

        def publish(bundle: Path) -> str | None:
            push_bundle(store, bundle)
            if store.replace_text(POINTER_KEY, pointer_text(bundle.name), seen) is None:
                raise ObjectStoreError(
                    f"{store.url}/{POINTER_KEY} was moved to {store_pointer(store)} by another machine while "
                    f"promoting: {bundle.name} is not promoted (nothing changed here); see `mlc models -c CONFIG` "
                    f"and promote again")
            write_state(cfg, **{POINTER_MOVE: None})    # a move an interrupted publish owed: the user chose since
            return previous
        yield publish


def pull_learning(cfg: Config, manifests: bool = True) -> None:
    """`mlc remove` and `mlc withdraw` on an object-store root: what tells which of the store's bundles
    learned the photos taken down, or the version withdrawn (model/learned.py), not their weights: every
    published bundle's bundle.json and metrics.json the cache lacks whole, into models/.listings/
    (`pull_listing`, as `mlc models` lists them), and (`manifests`: a takedown's question, not a
    withdrawal's) every published version's manifest.csv the cache lacks whole, into datasets/<name>/
    .listings/ (storeversions.pull_listings, as `mlc build` fetches them). Until 2026-12-07 they read
    the store's bundles trained on a version that holds a photo, or on the version withdrawn, alone: one
    that continued such a network on a later version, never fetched here, went unnamed.
    ObjectStoreError when the store cannot be read."""
    store = store_of(cfg)
    with store_errors(store):
        pull_listing(store, cfg)
        if manifests:
            pull_listings(store, cfg)
