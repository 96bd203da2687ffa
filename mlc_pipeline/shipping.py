"""Which model a run ships: the rule a new model must meet to replace the one before it, and what
round 0 of a run is (the last run's shipped model reused, a new model, or the shipped one kept).

`pipeline.run_stages` applies it: a mining round's model replaces the round before's only when it
accepts no more unknowns and loses at most `mine.max_f1_loss` of macro F1 (`not_shipped_reason`);
round 0 is not trained again when nothing it learns from changed (`last_shipped_model`, keyed by
`round0_key`), and a new round 0 replaces the shipped model only by the same rule, both scored on
the new version (`incumbent_model`); a shipped model that learned from a photo taken down since
(`mlc remove`), or of which that cannot be told, is neither reused nor kept: the run asks it once
(`shipped_model`: one verdict, which both read, and which lets mining continue round 0's network). What
a run shipped is recorded as it moves LATEST (`record_shipped`), so that the rerun of a stopped run
knows it too.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from mlc_pipeline.config import Config
from mlc_pipeline.fsutil import sha256_file, write_text_atomic
from mlc_pipeline.manifest import recorded_fingerprint
from mlc_pipeline.model.bundle import MetaError, read_meta
from mlc_pipeline.dataset.takedowns import Takedowns, read_takedowns
from mlc_pipeline.model.learned import ASK, taken_down_learned
from mlc_pipeline.model.registry import latest_bundle
from mlc_pipeline.rounds import RoundRecord

log = logging.getLogger(__name__)


def unknown_rate(test_other: float | None, probe: float | None) -> float | None:
    """What mining should lower: the mean of the held-out "other" and probe acceptance (either
    alone when the other is not measured)."""
    rates = [r for r in (test_other, probe) if r is not None]
    return sum(rates) / len(rates) if rates else None


def held_out_f1(r: RoundRecord) -> float | None:
    """The macro F1 shipping compares: the mean of validation and test, each at the model's own
    thresholds. Either split alone is ~100 images here, and on real photos one alone disagreed with
    the other by 0.07 about the same two models (docs/training.md, "Mining")."""
    scores = [f for f in (r.valid_macro_f1, r.macro_f1) if f is not None]
    return sum(scores) / len(scores) if scores else None


def not_shipped_reason(cfg: Config, before: RoundRecord, after: RoundRecord, before_is: str = "") -> str | None:
    """Why a mining round's model must not replace the round before's (None: ship it); `before_is`
    names the model replaced when it is not the round before (round 0 against LATEST).

    Mining exists to lower the unknowns accepted (`unknown_rate`, test other and probe) without
    paying for it in accuracy. So a round is not shipped when it accepts more unknowns, or when it
    loses more than `mine.max_f1_loss` of macro F1 (`held_out_f1`)."""
    u_before = unknown_rate(before.unknown_accepted, before.probe_accepted)
    u_after = unknown_rate(after.unknown_accepted, after.probe_accepted)
    than = before_is or f"round {before.round}'s"
    if u_before is not None and u_after is not None and u_after > u_before:
        return (f"round {after.round}'s model {after.bundle} accepted more unknowns than {than} "
                f"({u_before:.3f} -> {u_after:.3f}, mean of test other and probe)")
    f_before, f_after = held_out_f1(before), held_out_f1(after)
    # the small margin: F1 figures that differ in the last float bit are equal
    if f_before is not None and f_after is not None and f_before - f_after > cfg.mine.max_f1_loss + 1e-9:
        return (f"round {after.round}'s model {after.bundle} lost {f_before - f_after:.3f} of macro F1 against "
                f"{than} ({f_before:.3f} -> {f_after:.3f}, mean of validation and test; "
                f"mine.max_f1_loss is {cfg.mine.max_f1_loss:g})")
    return None


def round0_key(cfg: Config) -> dict:
    """What a round-0 model depends on besides its dataset version: the training settings as the
    config gives them, what `auto` resolves to from them (whether ImageNet weights are at hand for
    `pretrained: auto`; a weights file's content), and the code that trains them."""
    from mlc_pipeline import __version__
    return {"train": cfg.train.model_dump(mode="json"), "weights": weights_at_hand(cfg),
            "mlc_pipeline": __version__, "training_code": training_code_fingerprint()}


def weights_at_hand(cfg: Config) -> str:
    """The weights `pretrained` would give a training now, without downloading: a model trained from
    scratch because none were at hand is trained again once they are."""
    from mlc_pipeline.model import weights
    choice = weights.pretrained_choice(cfg.train.pretrained)
    if choice == "none":
        return "none"
    if choice not in ("auto", "imagenet"):
        path = Path(choice).expanduser()
        return f"file:{sha256_file(path)}" if path.is_file() else f"missing:{path}"
    arch = weights.RECIPES["pretrained"]["arch"] if cfg.train.arch == "auto" else cfg.train.arch
    try:
        cached = weights.cache_path(weights.imagenet_weights(arch)).is_file()
    except ValueError:          # a network without ImageNet weights (mlcnet): trained from scratch
        return "none"
    return f"imagenet:{arch}:{'cached' if cached else 'not cached'}"


# Modules of model/ that run only after a model is trained (mining, the CLI's lines, the registry's
# names and promotion): a change to them leaves round 0 as it was. Hashed with the rest until
# 2026-12-07, an update that touched mining alone retrained round 0 and shipped it with no comparison
# (a nightly audit saw test F1 0.578 -> 0.289). tests/test_shipping.py checks that train.py imports none.
NOT_TRAINING_CODE = ("likeness.py", "mine.py", "mine_record.py", "predict_cli.py", "registry.py", "weights_cli.py")


def training_code_fingerprint() -> str:
    """sha256 over the source of the model package that trains a model: a change to how models train
    trains round 0 again (the package version alone does not move with every change)."""
    digest = hashlib.sha256()
    for path in sorted((Path(__file__).parent / "model").glob("*.py")):
        if path.name not in NOT_TRAINING_CODE:
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Shipped:
    """models/LATEST as a run shipped it (`shipped_with`): the dataset version it counts for and its
    bundle; and the run's one verdict on it for takedowns (`taken_down`)."""
    version: str | None
    bundle: Path
    cfg: Config = field(repr=False, compare=False)

    @cached_property
    def verdict(self) -> tuple[Takedowns | None, str | None]:
        """(the catalog's takedowns, read first, and the answer on them): asked once, when first read."""
        gone = read_takedowns(self.cfg)
        return gone, taken_down_learned(self.cfg, self.bundle, gone)

    @property
    def taken_down(self) -> str | None:
        """Why it must not go on as a model (learned.taken_down_learned: it learned from a photo taken
        down since, or that cannot be told while the catalog records takedowns); None: it may. Reuse
        (`last_shipped_model`) and keeping (`incumbent_model`) follow this one answer, and never read
        its manifests again."""
        return self.verdict[1]

    def answer_for(self, bundle: str) -> str | None:
        """The answer a mining round continuing `bundle` may take over (`train_version`'s
        `previous_taken_down`): this one when `bundle` is this model and no photo was taken down since
        it was asked (the takedowns alone are read again, not the manifests); else learned.ASK: a
        photo taken down while round 0 trained must not go on in round 1 (review30)."""
        if bundle != self.bundle.name or read_takedowns(self.cfg) != self.verdict[0]:
            return ASK
        return self.taken_down


def shipped_model(cfg: Config, key: dict) -> Shipped | None:
    """What a run's round 0 weighs: the model a run shipped, trained with `round0_key` `key`
    (`shipped_with`), with its takedown verdict asked at most once; None when there is none."""
    shipped = shipped_with(cfg, key)
    return Shipped(shipped[0], shipped[1], cfg) if shipped is not None else None


def last_shipped_model(cfg: Config, ds: dict, shipped: Shipped | None) -> dict | None:
    """The model the last run shipped (`shipped`, `shipped_model`'s), as `Stages.train` returns one,
    when this run's round 0 would learn the same thing again: the build published nothing new (the
    same version) or a version with the same fingerprint (rows, labels, splits, files; only its
    attribution differs), that model was trained on it, with the same `round0_key`, and models/LATEST
    still names it (a model promoted by hand since is the user's choice: round 0 then trains). A
    nightly run with no new images then mines from the shipped model instead of spending a training
    on its own data again, and so does the rerun of a run stopped after round 0 shipped
    (`record_shipped`); anything unknown (an older latest.json, a missing metrics.json) trains, as
    before."""
    if shipped is None:
        return None
    version, bundle = shipped.version, shipped.bundle
    if version is None or not (bundle / "metrics.json").is_file():
        return None
    if ds.get("published", True) or version != ds.get("version"):
        # A new version holding the same rows (its ATTRIBUTION.md alone changed: a photo page found,
        # an owner renamed) teaches round 0 nothing new: it retrained once on the same images.
        if not ds.get("fingerprint") or recorded_fingerprint(cfg.layout.datasets / version) != ds["fingerprint"]:
            return None
    from mlc_pipeline.model.registry import RegistryError, check_bundle
    try:        # a damaged LATEST crashed mining on every night with nothing new (the verify23 audit)
        check_bundle(bundle)
        metrics = json.loads((bundle / "metrics.json").read_text())
    except (RegistryError, OSError, ValueError) as exc:
        log.warning("the shipped model cannot be reused (%s): round 0 trains again", exc)
        return None
    if shipped.taken_down:      # round 0 trains; `incumbent_model` says why it is not kept
        return None
    return {"round": 0, "bundle": bundle.name, "bundle_dir": str(bundle), "dataset_version": version,
            "metrics": metrics, "reused": True}


def incumbent_model(cfg: Config, shipped: Shipped | None) -> Path | None:
    """models/LATEST when a new round 0 must do at least as well to replace it: a run shipped it
    (`shipped`, `shipped_model`'s: the last run, or a run stopped after it moved LATEST), trained with
    the same `round0_key` (other settings or code: the user wants the new model; a model promoted by
    hand: theirs to replace), a whole bundle of the config's classes, that learned from no photo taken
    down since (`mlc remove`; model/learned.py), as far as can be told. A night with nothing new for
    round 0 after a refused mining round trained round 0 again and shipped it over a far better LATEST
    (a user's audit: test F1 0.540 -> 0.275); and a model trained on photos taken down was kept over
    the new round 0 that no longer held them, when that one scored lower (the curation29 audit)."""
    if shipped is None:
        return None
    try:
        meta = read_meta(shipped.bundle)
    except MetaError as exc:    # not a whole bundle (a non-object bundle.json crashed the run): ships as before
        log.info("the shipped model is not the one to beat (%s): round 0 ships as before", exc)
        return None
    if meta.get("classes") != list(cfg.classes):
        return None
    if why := shipped.taken_down:
        log.warning("the shipped model %s is not kept: %s; round 0's model ships without a comparison",
                    shipped.bundle.name, why)
        return None
    return shipped.bundle


SHIPPED_RECORD = "shipped.json"     # in the reports folder, beside latest.json


def record_shipped(cfg: Config, model: dict, key: dict) -> None:
    """reports/shipped.json: the model a run has just made (or kept as) models/LATEST, the dataset
    version it counts for (`model["dataset_version"]`, as latest.json's rounds give it) and the
    run's `round0_key`. Written when LATEST moves, not at the run's end as latest.json is: a run
    stopped during mining, after round 0 shipped, left LATEST looking promoted by hand, so its rerun
    trained round 0 again and published it with no comparison (the mining26 audit)."""
    cfg.layout.reports.mkdir(parents=True, exist_ok=True)
    write_text_atomic(cfg.layout.reports / SHIPPED_RECORD, json.dumps(
        {"shipped": model["bundle"], "dataset_version": model["dataset_version"], "trained_with": key}, indent=2))


def shipped_record(cfg: Config, *, older: bool = False, say: bool = True) -> tuple[dict, Path] | None:
    """(what a run recorded it shipped, the LATEST bundle) when the record is an object whose "shipped"
    is the bundle models/LATEST names (not promoted by hand since); else None. The record is
    `record_shipped`'s; with `older`, in a data root no run has written one in yet, reports/latest.json
    (written before 2026-12-02 it names no "shipped": every round was published as LATEST then, so
    the run shipped its last round's bundle). An unreadable record is None too, said as a warning
    unless `say` is False (a caller after another that said it). The one reader of these records:
    `shipped_with` and `replaced_without_comparison`."""
    bundle = latest_bundle(cfg.layout.models)
    names = (SHIPPED_RECORD, "latest.json") if older else (SHIPPED_RECORD,)
    report = next((p for p in (cfg.layout.reports / n for n in names) if p.is_file()), None)
    if bundle is None or report is None:
        return None
    try:
        last = json.loads(report.read_text())
    except ValueError as exc:
        if say:
            log.warning("%s unreadable (%s): round 0 trains and ships as before", report, exc)
        return None
    if not isinstance(last, dict):
        return None
    if report.name != SHIPPED_RECORD and "shipped" not in last:
        rounds = last.get("rounds")
        rounds = [r for r in rounds if isinstance(r, dict)] if isinstance(rounds, list) else []
        last = {**last, "shipped": rounds[-1].get("bundle") if rounds else None}
    return (last, bundle) if last.get("shipped") == bundle.name else None


def shipped_with(cfg: Config, key: dict) -> tuple[str | None, Path] | None:
    """(the dataset version it counts for, the LATEST bundle) when a run shipped the model
    models/LATEST names (not promoted by hand since), trained with `round0_key` `key`; else None.
    What a run shipped is `record_shipped`'s record; in a data root no run has written one in yet,
    reports/latest.json (its rounds give the version)."""
    shipped = shipped_record(cfg, older=True)
    if shipped is None or shipped[0].get("trained_with") != key:
        return None
    last, bundle = shipped
    if "dataset_version" in last:
        return last["dataset_version"], bundle
    rounds = [r for r in last.get("rounds", []) if isinstance(r, dict) and r.get("bundle") == bundle.name]
    return (rounds[-1].get("dataset_version") if rounds else None), bundle


def replaced_without_comparison(cfg: Config, key: dict) -> str | None:
    """What to say when round 0 will replace models/LATEST with no comparison: a run shipped it
    (`shipped_record`, reports/latest.json in a data root no run has written shipped.json in yet), but
    trained with another `round0_key` (other settings, weights or code: the user's new choice, so not
    compared), or its record names no settings at all (trained by code from before 2026-12-06, whose
    settings cannot be compared). A one-epoch look on the main job's data root silently replaced a far
    better model (the dayone28 audit), and so did the first run after an upgrade (the upgrade29 audit:
    test F1 0.400 -> 0.182); the line names what differs and the way back. None otherwise."""
    shipped = shipped_record(cfg, older=True, say=False)    # unreadable: shipped_with said so before this
    if shipped is None:
        return None
    before, name = shipped[0].get("trained_with"), shipped[1].name
    if not isinstance(before, dict):
        return (f"the shipped model {name} has no training settings on record (trained by an older "
                f"mlc-pipeline): round 0 replaces models/LATEST without a comparison; `mlc promote {name}` "
                f"puts it back")
    if before == key:
        return None
    changed = sorted(f"train.{k}" for k in set(key["train"]) | set(before.get("train") or {})
                     if key["train"].get(k) != (before.get("train") or {}).get(k))
    changed += [k for k in ("weights", "mlc_pipeline", "training_code") if key.get(k) != before.get(k)]
    return (f"round 0 is trained with other settings than the shipped model {name} "
            f"({', '.join(changed)} differ): it replaces models/LATEST without a comparison; "
            f"`mlc promote {name}` puts it back")
