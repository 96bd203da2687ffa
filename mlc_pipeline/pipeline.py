"""The stage loop: collect + curate, build, train, then mining rounds (mine, build, retrain), report.

It is written once, in `run_stages`. How each stage runs is the `Stages` object's business: the
class below calls the library in this process (`mlc run`); flows/collect_and_train.py subclasses it
so that every stage is a Prefect task with its retry options. Stages return plain data (dicts of
JSON-able values), which is what a task result must be, so the loop reads the same fields either way.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pickle
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from mlc_pipeline.collect.stage import TOPUP_ROUNDS, collect_in_rounds
from mlc_pipeline.collect.sources import check_before_writing
from mlc_pipeline.config import Config
from mlc_pipeline.curate.stage import curate, limits_of
from mlc_pipeline.dataset.build import build_dataset
from mlc_pipeline import interrupts
from mlc_pipeline.fsutil import write_text_atomic
from mlc_pipeline.locking import data_root_lock
from mlc_pipeline.model.mine import mine_round
from mlc_pipeline.model.mine_record import next_round
from mlc_pipeline.sync import publish, pull
from mlc_pipeline.model.options import check_train_settings
from mlc_pipeline.model.learned import ASK
from mlc_pipeline.model.stage import models_root, publish_latest, train_alternatives, train_version
from mlc_pipeline.report.inspect import write_html_report
from mlc_pipeline.report.model import model_section
from mlc_pipeline.rounds import RoundRecord, mining_counts, record
from mlc_pipeline.shipping import (incumbent_model, last_shipped_model, not_shipped_reason, record_shipped,
                                   replaced_without_comparison, round0_key, shipped_model, unknown_rate)

log = logging.getLogger(__name__)


@dataclass
class PipelineResult:
    rounds: list[RoundRecord] = field(default_factory=list)
    alternatives: dict[str, dict] = field(default_factory=dict)
    report: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    stop_reason: str = ""           # why mining stopped before retraining every round ("" when it did not)
    shortfall: list[str] = field(default_factory=list)   # one line per set short of usable images
    upgrade: list[str] = field(default_factory=list)     # once after an upgrade: curate.stage.CurateSummary.upgrade
    shipped: str = ""               # the bundle models/LATEST names after the run
    not_shipped: str = ""           # why the last round's model is not the one shipped ("" when it is)
    trained_with: dict = field(default_factory=dict)   # what round 0 depends on besides the data (`round0_key`)
    reused: str = ""                # round 0 was the last run's shipped model, not retrained: why
    round0_not_shipped: RoundRecord | None = None   # a round 0 trained in this run that did not beat the shipped model
    mined: list[dict] = field(default_factory=list)    # each mining round's numbers (rounds.mining_counts)

    @property
    def stopped_early(self) -> bool:
        return bool(self.stop_reason)

    @classmethod
    def from_plain(cls, data: dict) -> "PipelineResult":
        """A result that travelled as `plain(result)` (a Prefect task's argument), whole again."""
        refused = data.get("round0_not_shipped")
        return cls(**{**data, "rounds": [RoundRecord(**r) for r in data.get("rounds", [])],
                      "round0_not_shipped": RoundRecord(**refused) if refused else None})


def plain(value: Any) -> Any:
    """JSON-able copy: dataclasses -> dicts, Paths -> str (task results travel to Dask workers and
    the Prefect API; `mlc run` returns the same shapes)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def mining_stop(cfg: Config, round_no: int, added: int, before: float | None = None,
                after: float | None = None) -> str | None:
    """Why the mining loop stops after this round (None: go on).

    Called once with `added` only (after mining: nothing mined, nothing to retrain on), then with the
    `unknown_rate` before and after retraining."""
    if added == 0:
        return (f"round {round_no}: no hard negative added (the model accepts no pool image, or every one it "
                f"accepts is held for review); nothing to retrain on")
    if before is not None and after is not None and before - after <= cfg.mine.min_improvement:
        return (f"round {round_no}: unknowns accepted {before:.3f} -> {after:.3f}, no longer improving (by "
                f"{before - after:.3f}, at most mine.min_improvement = {cfg.mine.min_improvement:g})")
    return None


def shipped_or_new(cfg: Config, stages: "Stages", incumbent: Path, ds: dict, model: dict,
                   out: PipelineResult) -> dict:
    """Round 0: the new model, published as LATEST, unless the shipped one (`incumbent_model`), scored
    on the same version, does better by the rule a mining round must meet; then that one, and mining
    goes on from it. Not scored (a damaged bundle, say): the new model ships, as it always did."""
    from mlc_pipeline.model.bundle import BundleError
    try:
        kept = stages.assess(cfg, str(incumbent), ds)
    except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError, BundleError) as exc:
        # a damaged bundle or version must not end the run; a bug (KeyError, TypeError...) must not
        # quietly switch the comparison off on every night (the tests23 audit)
        log.warning("the shipped model %s could not be scored on %s (%s: %s): round 0's model ships",
                    incumbent.name, ds["version"], type(exc).__name__, exc)
        kept = None
    new = record(0, model["dataset_version"], model["bundle"], model["metrics"])
    if kept is not None and (why := not_shipped_reason(
            cfg, record(0, ds["version"], incumbent.name, kept["metrics"]), new,
            f"the shipped model, scored on {ds['version']}")):
        # printed as "not shipped: ..." (mlc run) and "Not shipped: ..." (reports): no second "not shipped"
        out.not_shipped = f"{why}; round 0 is the shipped model {incumbent.name}, which mining goes on from"
        out.round0_not_shipped = new        # the reports list it apart from round 0
        log.warning("%s", out.not_shipped)
        return stages.reuse(cfg, kept)
    publish_latest(cfg, model["bundle"])
    return model


def collect_and_curate(cfg: Config, progress: bool = True, on_progress: Callable[[int, int], None] | None = None,
                       max_rounds: int = TOPUP_ROUNDS):
    """Collect and curate in rounds until every set has `count` usable images (collect.stage)."""
    return collect_in_rounds(cfg, curate, progress=progress, on_progress=on_progress, max_rounds=max_rounds)


def write_run_report(cfg: Config, result: PipelineResult) -> str:
    """The HTML report: the data, and the model section when models were trained."""
    name = "latest.html" if result.rounds else "latest-dataset.html"
    # the mining gallery decodes within curation's limits (a raised curate.max_pixels shows what it let in)
    extra = [model_section(result, models_root(cfg), cfg.catalog_path, limits_of(cfg))] if result.rounds else []
    return str(write_html_report(cfg, cfg.layout.reports / name, extra_sections=extra))


class Stages:
    """Each stage of the loop, run in this process. Subclasses change how a stage runs, never what
    the loop does with its result."""

    def __init__(self, progress: bool = True):
        self.progress = progress
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        interrupts.check()          # a Ctrl-C a finalizer swallowed stops the run here (interrupts.py)
        try:
            yield
            interrupts.check()
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0) + time.monotonic() - started, 1)

    def collect(self, cfg: Config) -> dict:
        summary, curated = collect_and_curate(cfg, progress=self.progress)
        return {**plain(summary), "curate": plain(curated)}

    def curate(self, cfg: Config) -> dict:
        return plain(curate(cfg))

    def build(self, cfg: Config) -> dict:
        return plain(build_dataset(cfg))

    def train(self, cfg: Config, dataset_dir: str, round_no: int, previous: str | None = None,
              publish: bool = True, previous_taken_down: str | None = ASK) -> dict:
        model = train_version(cfg, dataset_dir, tag=f"r{round_no}", previous=previous, publish=publish,
                              previous_taken_down=previous_taken_down)
        return {"round": round_no, "bundle": model.bundle_dir.name, **plain(model)}

    def assess(self, cfg: Config, bundle_dir: str, ds: dict) -> dict:
        """A model trained before, scored on version `ds` (as `train` returns a model)."""
        from mlc_pipeline.model.assess import assess_on_version
        metrics = assess_on_version(bundle_dir, Path(ds["path"]) / "manifest.csv")
        return {"round": 0, "bundle": Path(bundle_dir).name, "bundle_dir": str(bundle_dir),
                "dataset_version": ds["version"], "metrics": metrics, "assessed": True}

    def reuse(self, cfg: Config, model: dict) -> dict:
        """Round 0 is an existing model (`last_shipped_model`, or the shipped one `shipped_or_new`
        keeps): nothing to run."""
        return model

    def alternatives(self, cfg: Config, dataset_dir: str) -> dict[str, dict]:
        return plain(train_alternatives(cfg, dataset_dir, tag="r0"))

    def mine(self, cfg: Config, bundle_dir: str, round_no: int) -> dict:
        return plain(mine_round(cfg, bundle_dir, round_no))

    def report(self, cfg: Config, result: PipelineResult) -> str:
        return write_run_report(cfg, result)


def run_stages(cfg: Config, stages: Stages, alternatives: bool | None = None) -> PipelineResult:
    """The one stage loop. `alternatives`: train the comparison heads too (default: the config's
    `train.compare_baselines`)."""
    out = PipelineResult(seconds=stages.seconds)
    pull(cfg, "run")        # an object-store data root (sync.py): into the cache; else a no-op
    with stages.stage("collect"):       # in rounds with curate, until every set has its usable count
        collected = stages.collect(cfg)
    publish(cfg)
    curating = collected.get("seconds", {}).get("curate", 0.0)
    stages.seconds["curate"] = round(stages.seconds.get("curate", 0) + curating, 1)
    stages.seconds["collect"] = round(stages.seconds["collect"] - curating, 1)
    out.shortfall = collected.get("short", [])
    out.upgrade = (collected.get("curate") or {}).get("upgrade", [])
    with stages.stage("build"):
        ds = stages.build(cfg)
    publish(cfg)
    with stages.stage("train"):
        key = round0_key(cfg)           # hashes model/*.py: once for the three questions before training
        latest = shipped_model(cfg, key)    # and its takedown verdict, asked once for the run
        shipped = last_shipped_model(cfg, ds, latest)
        if shipped is not None:         # nothing round 0 learns from changed: mining goes on from it
            same = (ds["version"] if shipped["dataset_version"] == ds["version"] else
                    f"{ds['version']} (the images, labels and splits of {shipped['dataset_version']})")
            out.reused = (f"dataset {same} and the training settings are those of the last run's shipped "
                          f"model {shipped['bundle']}: round 0 is that model, not trained again")
            log.info("%s", out.reused)
            model = stages.reuse(cfg, shipped)
        else:
            incumbent = incumbent_model(cfg, latest)
            if incumbent is None and (why := replaced_without_comparison(cfg, key)):
                log.warning("%s", why)
            model = stages.train(cfg, ds["path"], 0, publish=incumbent is None)
            if incumbent is not None:
                model = shipped_or_new(cfg, stages, incumbent, ds, model, out)
    # Computed again on purpose, not `key`: a training may have downloaded ImageNet weights meanwhile,
    # and the record must say they are at hand now (else the next run trains round 0 again for them).
    out.trained_with = round0_key(cfg)
    record_shipped(cfg, model, out.trained_with)     # LATEST names it now: stopped later, a rerun reuses it
    publish(cfg)
    out.rounds.append(record(0, model["dataset_version"], model["bundle"], model["metrics"]))
    if cfg.train.compare_baselines if alternatives is None else alternatives:
        with stages.stage("alternatives"):
            out.alternatives = stages.alternatives(cfg, ds["path"])
    # Rounds are numbered on from the catalog's last (mine_record.next_round): a later run's round
    # is a new round, with its own cap, record and undo, never "round 1" again.
    first = next_round(cfg)
    for r in range(first, first + cfg.mine.rounds):
        last = r == first + cfg.mine.rounds - 1
        with stages.stage("mine"):
            mined = stages.mine(cfg, model["bundle_dir"], r)
        out.mined.append(mining_counts(r, mined))     # held for review too: `mlc run` says both
        if why := mining_stop(cfg, r, mined["added"]):
            log.info("%s; stopping", why)
            out.stop_reason = why
            break
        with stages.stage("build"):
            ds = stages.build(cfg)      # mined images were curated already
        # The run's one answer for the shipped model when it goes on and nothing was taken down since;
        # else the retrain asks (a photo taken down since a network trained must not go on in it).
        answered = latest.answer_for(model["bundle"]) if latest is not None else ASK
        with stages.stage("train"):      # continues round r-1's network (mine.retrain); LATEST: below
            model = stages.train(cfg, ds["path"], r, previous=model["bundle_dir"], publish=False,
                                 previous_taken_down=answered)
        out.rounds.append(record(r, model["dataset_version"], model["bundle"], model["metrics"], mined["added"]))
        if why := not_shipped_reason(cfg, *out.rounds[-2:]):
            # Worse at saying "none of these", or bought with too much accuracy: not shipped. Its
            # negatives stay in the catalog and the new version; the next run's model learns from them.
            # The loop stops: a further round would go on from this model.
            kept = out.rounds[-2]
            out.shipped = kept.bundle
            refused = f"{why}: models/LATEST stays {kept.bundle}"
            log.warning("%s", refused)      # beside round 0's own refusal, when a new round 0 was refused too
            out.not_shipped = "; ".join(filter(None, [out.not_shipped, refused]))
            publish(cfg)                # the mined labels (catalog), the new version and model
            if not last:
                out.stop_reason = f"round {r}'s model was not shipped: a further round would go on from it"
            break
        publish_latest(cfg, model["bundle"])
        record_shipped(cfg, model, out.trained_with)
        publish(cfg)                    # the mined labels (catalog), the new version and model, LATEST
        before, after = (unknown_rate(x.unknown_accepted, x.probe_accepted) for x in out.rounds[-2:])
        if why := mining_stop(cfg, r, mined["added"], before, after):
            log.info("%s; stopping", why)
            out.stop_reason = "" if last else why
            break
    out.shipped = out.shipped or out.rounds[-1].bundle
    with stages.stage("report"):
        out.report = stages.report(cfg, out)
    write_text_atomic(cfg.layout.reports / "latest.json", json.dumps(asdict(out), indent=2, default=str))
    publish(cfg)
    return out


def rebuild_stages(cfg: Config, stages: Stages) -> PipelineResult:
    """`rebuild-report`: curate what the catalog holds, build a version if it changed, write the data
    report; no downloads, no training. An object-store data root is fetched first and published after
    each stage, as in `run_stages`."""
    out = PipelineResult(seconds=stages.seconds)
    pull(cfg, "curate")         # the catalog, its files and every version (curate checks against their tests)
    with stages.stage("curate"):
        stages.curate(cfg)
    publish(cfg)
    with stages.stage("build"):
        stages.build(cfg)
    publish(cfg)
    with stages.stage("report"):
        out.report = stages.report(cfg, PipelineResult())
    publish(cfg)
    return out


def run_pipeline(cfg: Config, progress: bool = True, train_alternative_models: bool | None = None) -> PipelineResult:
    """`mlc run`: the whole job in this process, holding the data root's write lock (waits for
    another writer to finish)."""
    check_train_settings(cfg)       # a wrong arch fails now, not after collecting for an hour
    if not cfg.data_dir.exists():   # a missing key or photo folder: before the lock creates the data root
        check_before_writing(cfg)
    with data_root_lock(cfg.data_dir, "mlc run"):
        return run_stages(cfg, Stages(progress), train_alternative_models)
