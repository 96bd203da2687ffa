"""The training stage: train the models of a dataset version, the product model and, for the report, the
alternatives (the comparison heads, VARIANTS).

Bundles live in data/models/<bundle>/ (see mlc_pipeline.model.train); data/models/LATEST names the newest
product model, updated only after its bundle is complete, so a failed training never replaces it.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from mlc_pipeline.catalog import Catalog, catalog_exists
from mlc_pipeline.config import Config, ConfigError
from mlc_pipeline.dataset.takedowns import held_words, photo_name, read_takedowns
from mlc_pipeline.dataset.verify import verify_version
from mlc_pipeline.manifest import read_manifest
from mlc_pipeline.layout import point_latest
from mlc_pipeline.model.learned import ASK, UnknownLearning, learned_rows, taken_down_learned
from mlc_pipeline.model.registry import variant_name
from mlc_pipeline.model.options import TrainConfig

log = logging.getLogger(__name__)

# The alternatives the report compares (shared/notes/fastai.md, last section).
VARIANTS = {
    "sigmoid-negatives": {"head": "sigmoid", "other_mode": "negative"},   # the product default until 2026-12-02
    "sigmoid-other-class": {"head": "sigmoid", "other_mode": "class"},    # the product default
    "softmax-other-class": {"head": "softmax", "other_mode": "class"},    # the seeds' single-label head
}


@dataclass
class ModelResult:
    bundle_dir: Path
    dataset_version: str
    variant: str
    metrics: dict
    train_seconds: float
    variants: dict[str, dict] = field(default_factory=dict)    # name -> metrics of the alternatives


def train_config(cfg: Config, **overrides) -> TrainConfig:
    return TrainConfig.from_settings(cfg.train).model_copy(update=overrides)


def models_root(cfg: Config) -> Path:
    return cfg.layout.models


def bundle_name(prefix: str) -> str:
    """`<prefix>-<UTC time to the microsecond>-<random>`: unique even for two trainings started in the
    same second (a bundle once replaced another one then), and still sorted by time."""
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now % 1 * 1e6):06d}"
    return f"{prefix}-{stamp}-{uuid.uuid4().hex[:6]}"


def publish_latest(cfg: Config, bundle_name: str) -> None:
    """Point models/LATEST at a bundle (atomic: readers see the old or the new name)."""
    point_latest(models_root(cfg), bundle_name)


def other_set_warnings(rows: list[dict]) -> list[str]:
    """Warnings about the training split's "other" images (manifest rows): a model that sees no
    image of none of its classes, or far fewer than of each class, accepts the unknown."""
    train = [r for r in rows if r["split"] == "train"]
    per_class: dict[str, int] = {}
    for r in train:
        for label in r["labels"].split():
            per_class[label] = per_class.get(label, 0) + 1
    if not per_class:
        return []
    other = sum(1 for r in train if not r["labels"].split())
    mean = sum(per_class.values()) / len(per_class)
    if other == 0:
        return ["no 'other' images in the training split: the model never sees an image of none of its "
                "classes and cannot learn to say 'none of these' (add `other` queries or raise other.count)"]
    if other < mean:
        return [f"'other' has {other} training images, fewer than the classes' mean of {mean:g}: "
                "the model will accept more unknown images (add `other` queries or raise other.count)"]
    return []


def without_takedowns(cfg: Config, version: str, rows: list[dict]) -> tuple[list[dict], dict, str]:
    """A version's manifest rows less the photos taken down since it was published (`mlc remove`) and
    the copies a takedown holds, as an export leaves them out (dataset/takedowns.py); bundle.json's
    record of it ("checked": False when there was no catalog to ask; "left_out", and "held" among them,
    as "source:photo_id"); and what is left out, in words ('' for nothing). ConfigError when no
    training or validation image is left."""
    gone = read_takedowns(cfg)
    rows, left_out = gone.left_out_of(rows) if gone else (rows, [])
    held = gone.held_names(left_out) if gone else []
    what = f"{len(left_out)} photo(s) taken down since {version} was published{held_words(held)}" if left_out else ""
    for split in ("train", "valid"):
        if left_out and not any(r["split"] == split for r in rows):
            raise ConfigError(f"dataset {version} has no {split} image left once the {what} are left out (`mlc "
                              f"remove`): build a version without them (`mlc build`) and train that; nothing was "
                              f"trained, models/LATEST is unchanged")
    return rows, {"checked": gone is not None, "left_out": [photo_name(r) for r in left_out], "held": held}, what


def check_every_class_trains(cfg: Config, version: str, rows: list[dict], left_out: str = "") -> None:
    """Refuse (ConfigError) to train when a class of the config has no image in the version's training
    split: such a model can never claim the class (macro F1 0.000 on it), and `mlc run` used to ship it
    as LATEST with exit 0 (the 2026-12-06 audit: photos too small for every size in source.sizes).
    The message says, per empty class, where its photos went (the catalog's tally of the set)."""
    unknown = sorted({label for r in rows for label in r["labels"].split()} - set(cfg.classes))
    if unknown:     # a version built before a class left the config (or under another config)
        raise ConfigError(f"dataset {version} has images of {', '.join(unknown)}, not a class of the config: "
                          f"build a version without them (`mlc build` leaves out classes no longer in the "
                          f"config) or add them back; nothing was trained, models/LATEST is unchanged")
    trained = {label for r in rows if r["split"] == "train" for label in r["labels"].split()}
    empty = [c for c in cfg.classes if c not in trained]
    if not empty:
        return
    tallies, filed = {}, {}
    if catalog_exists(cfg.catalog_path):
        with Catalog(cfg.catalog_path, readonly=True) as catalog:
            tallies = {c: catalog.set_tally("train", c, cfg.source.licenses) for c in empty}
            filed = {c: catalog.labels_found_by(cfg.classes[c].queries) for c in empty}
    whys = []
    for c in empty:
        elsewhere = sum(c in r["labels"].split() for r in rows)
        why = [f"its {elsewhere} image(s) in {version} are all in valid/test"] if elsewhere else []
        why += [empty_class_why(cfg, c, tallies[c], filed[c])] if c in tallies else []
        whys.append(f"{c}: " + ("; ".join(why) or f"no image in {version}"))
    raise ConfigError(f"dataset {version} has no training image of {', '.join(empty)}: a model cannot learn a class "
                      f"it never sees, nor ever claim it; nothing was trained, models/LATEST is unchanged "
                      f"({' | '.join(whys)}{f'; {left_out} left out' if left_out else ''})")


def empty_class_why(cfg: Config, name: str, tally: dict, filed: dict[str, int] | None = None) -> str:
    """Where a class's photos went, from the catalog: usable ones not in the version, skipped, failed,
    rejected, duplicates, filed under other labels by its queries (`filed`: a renamed class), or
    none found at all."""
    counted = {"usable (build a new version: `mlc build`)": tally["accepted"],
               "downloaded, not curated yet (`mlc curate`)": tally["downloaded"],
               "not downloaded yet (`mlc collect`)": tally["pending"]}
    parts = [f"{n} {what}" for what, n in counted.items() if n]
    sizes = ", ".join(cfg.source.sizes)
    for status, reasons in (("skipped", tally["skipped"]), ("failed", tally["failed"]),
                            ("rejected", tally["rejected"]), ("duplicate", tally["duplicate"])):
        for reason, n in sorted(reasons.items(), key=lambda x: -x[1]):
            parts.append(f"{n} offered in no size of source.sizes ({sizes}): too small, list smaller sizes"
                         if reason == "no-allowed-size" else f"{n} {status} ({reason})")
    queries = ", ".join(cfg.classes[name].queries)
    if not parts and filed:
        return (f"its queries ({queries}) found {sum(filed.values())} photos, filed under "
                f"{', '.join(sorted(filed))} (a renamed class?): `mlc collect` files them under {name} too")
    if not parts:
        return f"the catalog has no photo of it: its queries ({queries}) found none"
    found = sum(n if isinstance(n, int) else sum(n.values()) for n in tally.values())
    return f"of its {found} photos found, " + ", ".join(parts)


def retrain_overrides(cfg: Config, dataset_dir: Path, previous: str | Path | None,
                      taken_down: str | None = ASK) -> tuple[dict, list[str]]:
    """How a mining round's retrain starts: (TrainConfig overrides, warnings). With `mine.retrain:
    continue` it continues the previous round's network for `mine.retrain_epochs`, unless that network
    trained on an image the new version evaluates on, or learned from a photo taken down since
    (`taken_down`: learned.taken_down_learned, asked here unless the caller asked it already, as `mlc
    train --continue` does; a mining round asks it of the round before, so a photo taken down while
    `mlc run` trains never goes on in a continued network); then it starts over, and says why."""
    if previous is None or cfg.mine.retrain != "continue":
        return {}, []
    if taken_down == ASK:
        taken_down = taken_down_learned(cfg, Path(previous))
    why = continue_blocker(dataset_dir, Path(previous)) or taken_down
    if why:
        return {}, [f"retrained from scratch, not continued from {Path(previous).name}: {why}"]
    return {"init_from": str(previous), "epochs": cfg.mine.retrain_epochs}, []


def continue_blocker(dataset_dir: Path, previous: Path) -> str | None:
    """Why continuing `previous` on this version would be unsafe (None: it is safe): an image its
    network learned from, in its own training or in the trainings it continued, is in this version's
    valid, test or probe split. Splits are stable by photo (mined images too: `mine.calibration_share`
    of them validate, always the same ones), so within a run this never happens; a catalog changed
    between runs, or a changed split setting, could put a trained-on image under evaluation. Images
    are matched by catalog id and by content (sha256)."""
    try:                                                 # datasets/<name>/<version>
        trained = learned_rows(previous, dataset_dir.parent.parent, ("train",))
    except UnknownLearning as exc:
        return str(exc)
    trained_ids = {r["candidate_id"] for r in trained if r.get("candidate_id")}
    trained_sha = {r["sha256"] for r in trained if r.get("sha256")}
    leaked = [r for r in read_manifest(dataset_dir / "manifest.csv") if r["split"] != "train"
              and (r.get("candidate_id") in trained_ids or r.get("sha256") in trained_sha)]
    if leaked:
        return (f"{len(leaked)} image(s) it learned from are in this version's {sorted({r['split'] for r in leaked})} "
                f"split(s), and a model must not be scored on what it learned from")
    return None


def train_version(cfg: Config, dataset_dir: str | Path, tag: str = "", variant: str | None = None,
                  publish: bool = True, previous: str | Path | None = None,
                  previous_taken_down: str | None = ASK) -> ModelResult:
    """Train one model on a dataset version. `variant` picks one of VARIANTS; None = the config's.
    `previous`: the bundle of the mining round before, which the retrain may continue (mine.retrain);
    `previous_taken_down`: why it must not, for a takedown, when the caller asked it (`retrain_overrides`)."""
    dataset_dir = Path(dataset_dir)
    version = dataset_dir.name
    overrides = VARIANTS[variant] if variant else {}
    name = variant or variant_name(cfg.train.head, train_config(cfg).effective_other_mode)
    verify_version(dataset_dir)     # a missing, changed or escaping file stops here, with one line
    rows, takedowns, left_out = without_takedowns(cfg, version, read_manifest(dataset_dir / "manifest.csv"))
    check_every_class_trains(cfg, version, rows, left_out)      # before a bundle or LATEST is touched
    bundle = models_root(cfg) / bundle_name(f"{cfg.build.name}-{version}{'-' + tag if tag else ''}-{name}")
    models_root(cfg).mkdir(parents=True, exist_ok=True)
    warnings = other_set_warnings(rows)
    if left_out:        # the one line an export says too, and bundle.json's record of what it trained on
        named = [f"{p} (held)" if p in takedowns["held"] else p for p in takedowns["left_out"]]
        warnings.insert(0, f"left out {left_out} (`mlc remove`; listed in bundle.json): {', '.join(named[:10])}"
                           f"{' ...' if len(named) > 10 else ''}")
    if variant is None:
        retrain, retrain_warnings = retrain_overrides(cfg, dataset_dir, previous, previous_taken_down)
        overrides, warnings = {**overrides, **retrain}, warnings + retrain_warnings
    for w in warnings:
        log.warning("dataset %s: %s", version, w)
    from mlc_pipeline.model.train import train_model     # fastai and torch: only where a model trains
    result = train_model(dataset_dir / "manifest.csv", bundle, train_config(cfg, **overrides),
                         dataset_version=f"{cfg.build.name}/{version}", classes=list(cfg.classes),
                         warnings=warnings, takedowns=takedowns)
    if publish:
        publish_latest(cfg, bundle.name)
    return ModelResult(bundle, version, name, result.metrics, result.train_seconds)


def alternative_variants(cfg: Config) -> list[str]:
    """The VARIANTS other than the configured product model (compared as trained: a softmax's
    "other" is always a class, whatever other_mode says)."""
    product = {"head": cfg.train.head, "other_mode": train_config(cfg).effective_other_mode}
    return [name for name, spec in VARIANTS.items() if spec != product]


def train_alternatives(cfg: Config, dataset_dir: str | Path, tag: str = "") -> dict[str, dict]:
    """The other heads on the same data, for the side-by-side table (never published as LATEST)."""
    out = {}
    for name in alternative_variants(cfg):
        log.info("training the %s alternative for comparison", name)
        out[name] = train_version(cfg, dataset_dir, tag=tag, variant=name, publish=False).metrics
    return out
