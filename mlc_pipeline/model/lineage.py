"""The record of what a model bundle's network learned in (bundle.json's `learned_from`): written at
training (model/train.py: the continued bundle's record plus its own) and read by model/learned.py, so
no ancestor bundle need be at hand. Apart from learned.py because training imports it, and learned.py
lists a data root's bundles (model/registry.py, which is not training code: shipping.NOT_TRAINING_CODE).
"""

from __future__ import annotations

from pathlib import Path

from mlc_pipeline.layout import MODEL_LISTINGS
from mlc_pipeline.model.bundle import MetaError, read_meta


class UnreadAncestor(Exception):
    "Why a bundle's learning cannot be read: a bundle it continued cannot be."

    def __init__(self, at: Path, exc: Exception):
        super().__init__(f"the bundle it continued, {at.name}, unread: {type(exc).__name__}: {exc}")


class UnknownLearning(Exception):
    """What a bundle learned from cannot be read: its bundle.json, a bundle it continued (`UnreadAncestor`),
    or the manifest of a version it (or a bundle it continued) trained on (a version withdrawn since, say)."""

    def __init__(self, bundle: Path, exc: Exception):
        self.bundle = bundle
        why = str(exc) if isinstance(exc, UnreadAncestor) else f"{type(exc).__name__}: {exc}"
        super().__init__(f"cannot tell which images {bundle.name} trained on ({why})")


def learned_from(bundle: Path) -> list[dict]:
    """What `bundle`'s network learned from, the oldest training first: [{"dataset_version": "name/vN",
    "left_out": ["source:photo_id", ...]}], one a training (its own last, the bundles it continued
    before), as bundle.json records it (`learned_from`, written at training: the parent's record plus
    its own), so no ancestor bundle need be at hand (`mlc run` on an object-store root pulls LATEST
    alone). A bundle trained before the record: walked through `weights.continued_from`, beside it
    (or only its bundle.json, in models/.listings/: storemodels.pull_lineage), until a bundle with the
    record. UnknownLearning when something cannot be read: the bundle asked, and why (the ancestor)."""
    chain, seen, at = [], set(), bundle
    while at is not None and at.name not in seen:
        seen.add(at.name)
        try:
            meta = read_meta(at)
            if meta.get("learned_from") is not None:
                return [checked_entry(e) for e in meta["learned_from"]] + chain
            chain.insert(0, checked_entry({"dataset_version": meta["dataset_version"],
                                           "left_out": (meta.get("takedowns") or {}).get("left_out") or []}))
        except (MetaError, OSError, ValueError, KeyError, TypeError) as exc:
            raise UnknownLearning(bundle, exc if at == bundle else UnreadAncestor(at, exc)) from exc
        parent = (meta.get("weights") or {}).get("continued_from")
        at = ancestor(bundle, parent) if parent else None
    return chain


def ancestor(bundle: Path, name: str) -> Path:
    """The folder of the bundle `name` that `bundle` continued: beside it, or its bundle.json alone in
    the models folder's .listings/ (a cache of an object-store root: storemodels.pull_lineage)."""
    models = bundle.parent.parent if bundle.parent.name == MODEL_LISTINGS else bundle.parent
    whole = models / name
    listed = models / MODEL_LISTINGS / name
    return listed if not (whole / "bundle.json").is_file() and (listed / "bundle.json").is_file() else whole


def checked_entry(entry: dict) -> dict:
    "One training of a `learned_from` list, as read: KeyError or TypeError when it is not one."
    version, left_out = entry["dataset_version"], entry["left_out"]
    if not isinstance(version, str) or not isinstance(left_out, list):
        raise TypeError(f"not a training's record: {entry!r}")
    return {"dataset_version": version, "left_out": [str(p) for p in left_out]}


def learning_record(init_from: str | Path | None, dataset_version: str, takedowns: dict | None) -> list[dict] | None:
    """bundle.json's `learned_from` for a training of `dataset_version` that leaves out `takedowns`'
    photos and continues the bundle `init_from` (None: from scratch or ImageNet weights): the parent's
    record plus its own. None when the parent's cannot be read (its version withdrawn, say): then
    `learned_from` walks the chain, and says it cannot be told, as for a bundle trained before."""
    own = [{"dataset_version": dataset_version, "left_out": list((takedowns or {}).get("left_out") or [])}]
    try:
        return (learned_from(Path(init_from)) if init_from else []) + own
    except UnknownLearning:
        return None
