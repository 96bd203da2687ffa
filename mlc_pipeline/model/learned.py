"""What a model bundle learned from: the manifest rows its training read, in its own training and in
each training it continued (bundle.json's `weights.continued_from`), less the photos its training left
out as taken down (bundle.json's `takedowns`, written by model/stage.py). Torch-free: `mlc remove`
and the shipping rule read it.

Two questions are asked here. A mining round's retrain may continue the previous network only when
that network never learned an image the new version evaluates on (stage.continue_blocker). And a
takedown (`mlc remove`) reaches the models: a network that learned from a photo taken down since, or
from a copy a takedown holds, is not continued (stage.retrain_overrides), nor kept as the shipped
model (shipping.incumbent_model), and `mlc remove` lists it (`bundles_that_learned`). Learned means
the train split, and the valid split, which set the model's thresholds (LEARNED_SPLITS); test and
probe are only scored.
"""

from __future__ import annotations

from pathlib import Path

from mlc_pipeline.config import Config
from mlc_pipeline.dataset.takedowns import read_takedowns
from mlc_pipeline.manifest import read_manifest
from mlc_pipeline.model.bundle import MetaError, read_meta

LEARNED_SPLITS = ("train", "valid")


class UnknownLearning(Exception):
    """What a bundle learned from cannot be read: its bundle.json, or the manifest of a version it (or a
    bundle it continued) trained on (a version withdrawn since, say)."""

    def __init__(self, bundle: Path, exc: Exception):
        self.bundle = bundle
        super().__init__(f"cannot tell which images {bundle.name} trained on ({type(exc).__name__}: {exc})")


def learned_rows(bundle: Path, datasets_root: Path, splits: tuple[str, ...] = LEARNED_SPLITS,
                 manifests: dict[str, list[dict]] | None = None) -> list[dict]:
    """The manifest rows of `splits` that `bundle` learned from, its own training's and those of the
    bundles it continued (found beside it), less those each training left out for a takedown.
    `datasets_root`: the data root's datasets/ (bundle.json names "dataset/vN"); `manifests`: versions
    read before, kept for the next call. UnknownLearning when something cannot be read."""
    manifests = {} if manifests is None else manifests
    rows, seen, at = [], set(), bundle
    while at is not None and at.name not in seen:
        seen.add(at.name)
        try:
            meta = read_meta(at)
            version = str(meta["dataset_version"])
            if version not in manifests:
                manifests[version] = read_manifest(datasets_root / version / "manifest.csv")
        except (MetaError, OSError, ValueError, KeyError) as exc:
            raise UnknownLearning(at, exc) from exc
        left_out = set((meta.get("takedowns") or {}).get("left_out") or [])
        rows += [r for r in manifests[version] if r["split"] in splits
                 and f"{r.get('source')}:{r.get('photo_id')}" not in left_out]
        parent = (meta.get("weights") or {}).get("continued_from")
        at = bundle.parent / parent if parent else None
    return rows


def learned_photos(bundle: Path, datasets_root: Path, manifests: dict | None = None) -> set[tuple[str, str]]:
    "(source, photo_id) of every photo `bundle` learned from (`learned_rows`); UnknownLearning."
    return {(r.get("source"), r.get("photo_id")) for r in learned_rows(bundle, datasets_root, manifests=manifests)}


def taken_down_learned(cfg: Config, bundle: Path) -> str | None:
    """Why `bundle` must not go on as a model: it learned from photos taken down since (`mlc remove`), or
    from copies a takedown holds, as the catalog says now; or it cannot be told (its bundle.json, or a
    version it learned from, unreadable: a version withdrawn for a takedown, say) while the catalog
    records takedowns. None when it learned from none, or nothing was ever taken down."""
    gone = read_takedowns(cfg)
    if not gone:
        return None
    try:
        hit = sorted(f"{s}:{p}" for s, p in learned_photos(bundle, cfg.layout.datasets.parent) & (gone.removed | gone.held))
    except UnknownLearning as exc:
        return f"{exc}, and the catalog records takedowns (`mlc remove`): it may have learned from one"
    if not hit:
        return None
    held = [p for p in hit if tuple(p.split(":", 1)) in gone.held]
    return (f"it learned from {len(hit)} photo(s) taken down"
            f"{f' (or held as copies of them: {len(held)})' if held else ''} (`mlc remove`): "
            f"{', '.join(hit[:10])}{' ...' if len(hit) > 10 else ''}")


def bundles_that_learned(cfg: Config, photos: set[tuple[str, str]]) -> tuple[dict[str, list[str]], list[str]]:
    """This data root's bundles that learned from any of `photos` ((source, photo_id)): (bundle name ->
    the photos, as "source:photo_id"; the bundles whose learning cannot be read, each with why). The
    newest first: models/LATEST is most often among them."""
    from mlc_pipeline.model.registry import list_bundles
    found, unknown, manifests = {}, [], {}
    for info in reversed(list_bundles(cfg.layout.models)):
        try:
            hit = learned_photos(info.path, cfg.layout.datasets.parent, manifests) & photos
        except UnknownLearning as exc:
            unknown.append(str(exc))
            continue
        if hit:
            found[info.name] = sorted(f"{s}:{p}" for s, p in hit)
    return found, unknown
