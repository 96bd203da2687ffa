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
before the write elsewhere (`Store.replace_text`).
`mlc models`, `mlc predict` and `mlc promote` with -c CONFIG fetch the bundles they name and the
pointer (`pull_registry`), so a fresh cache sees every published model.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from mlc_pipeline.config import Config
from mlc_pipeline.fsutil import write_text_atomic
from mlc_pipeline.locking import data_root_lock
from mlc_pipeline.objectstore import (MARKER, ObjectStoreError, Store, complete_copy, pull_folder, push_folder,
                                      read_marker, store_errors, store_of)

log = logging.getLogger(__name__)
POINTER_KEY = "models/LATEST"


def store_pointer(store: Store) -> str | None:
    "The bundle the store's models/LATEST names, or None (no pointer, or an empty one)."
    return (store.read_text(POINTER_KEY) or "").strip() or None


def published_bundles(store: Store) -> list[str]:
    "The bundles the store holds with their marker."
    return sorted({k.split("/")[1] for k in store.listing("models") if k.endswith(f"/{MARKER}") and k.count("/") == 2})


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
    """Fetch the store's latest product model into the cache, and point the cache's LATEST at it."""
    name = store_pointer(store)
    if name is None or not pull_bundle(store, cfg, name):
        return None
    write_text_atomic(cfg.layout.models / "LATEST", name + "\n")
    return name


def pull_registry(store: Store, cfg: Config, wanted: list[str] | None) -> None:
    """The registry commands' fetch: the bundles `wanted` names (bundle names, or `latest`; a folder
    given as a path is not the store's) and, None, every published bundle; then the cache's LATEST
    pointed where the store's is, when the cache holds that bundle."""
    latest = store_pointer(store)
    names = published_bundles(store) if wanted is None else [
        latest if spec == "latest" else spec for spec in wanted if spec and not Path(spec).is_dir()]
    for name in dict.fromkeys(n for n in names if n):
        pull_bundle(store, cfg, name)
    marker = read_marker(store, f"models/{latest}") if latest else None
    if marker is not None and complete_copy(cfg.layout.models / latest, marker):
        write_text_atomic(cfg.layout.models / "LATEST", latest + "\n")


def push_bundle(store: Store, bundle: Path, held: dict | None = None) -> bool:
    """Publish a cache's bundle the store lacks (its files, then its marker); False when published already."""
    key = f"models/{bundle.name}"
    if f"{key}/{MARKER}" in (store.listing(key) if held is None else held):
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
            if store.replace_text(POINTER_KEY, bundle.name + "\n", seen) is None:
                raise ObjectStoreError(
                    f"{store.url}/{POINTER_KEY} was moved to {store_pointer(store)} by another machine while "
                    f"promoting: {bundle.name} is not promoted (nothing changed here); see `mlc models -c CONFIG` "
                    f"and promote again")
            return previous
        yield publish


def bundles_trained_on(cfg: Config, dataset_version: str, here: list[str]) -> list[str]:
    """`here` (this data root's bundles trained on `dataset_version`, "name/vN") and, on an object-store
    root, those published in the store whose bundle.json names it, the store's LATEST marked: what
    `mlc withdraw` lists (verify21: it named only the cache's)."""
    store = store_of(cfg)
    if store is None:
        return sorted(here)
    with store_errors(store):
        latest = store_pointer(store)
        found = [n for n in published_bundles(store) if bundle_dataset(store, n) == dataset_version]
    return [n + (" (the store's LATEST)" if n == latest else "") for n in sorted(set(found) | set(here))]


def bundle_dataset(store: Store, name: str) -> str | None:
    "The dataset version a store bundle's bundle.json names; None (with a warning) when it cannot be read."
    try:
        meta = json.loads(store.read_text(f"models/{name}/bundle.json") or "{}")
    except ValueError as exc:
        log.warning("%s/models/%s/bundle.json is not JSON (%s): not checked for the version withdrawn", store.url,
                    name, exc)
        return None
    return meta.get("dataset_version") if isinstance(meta, dict) else None
