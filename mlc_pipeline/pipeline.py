"""The whole job in-process (`mlc run`): collect, curate, build, train, mine rounds, retrain, report.

The Prefect flow in flows/ wires the same stage functions; this is the plain-Python equivalent.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field

from mlc_pipeline.collect.stage import collect_and_curate
from mlc_pipeline.config import Config
from mlc_pipeline.dataset.build import build_dataset
from mlc_pipeline.model.mine import mine_round
from mlc_pipeline.locking import data_root_lock
from mlc_pipeline.model.variants import check_train_settings, models_root, train_alternatives, train_version
from mlc_pipeline.report.inspect import write_html_report
from mlc_pipeline.report.model import model_section

log = logging.getLogger(__name__)


@dataclass
class RoundRecord:
    round: int
    dataset_version: str
    bundle: str
    macro_f1: float
    unknown_accepted: float | None
    probe_accepted: float | None
    negatives_added: int = 0


@dataclass
class PipelineResult:
    rounds: list[RoundRecord] = field(default_factory=list)
    alternatives: dict[str, dict] = field(default_factory=dict)
    report: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False
    shortfall: list[str] = field(default_factory=list)   # one line per set short of usable images


def record(round_no: int, version: str, bundle: str, metrics: dict, added: int = 0) -> RoundRecord:
    """One mining round's line of the report, from a model's metrics (shared with the flow)."""
    test = metrics["test"]
    return RoundRecord(round_no, version, bundle, test["macro_f1"], test.get("unknown_accepted"),
                       test.get("probe_accepted"), added)


def unknown_rate(test_other: float | None, probe: float | None) -> float | None:
    """What mining should lower: the mean of the held-out "other" and probe acceptance (either
    alone when the other is not measured)."""
    rates = [r for r in (test_other, probe) if r is not None]
    return sum(rates) / len(rates) if rates else None


def mining_stop(cfg: Config, round_no: int, added: int, before: float | None = None,
                after: float | None = None) -> str | None:
    """Why the mining loop stops after this round (None: go on). Shared by `mlc run` and the flow.

    Called once with `added` only (after mining: nothing mined, nothing to retrain on), then with the
    `unknown_rate` before and after retraining."""
    if added == 0:
        return f"round {round_no}: the model accepts no pool image; nothing to mine"
    if before is not None and after is not None and before - after <= cfg.mine.min_improvement:
        return f"round {round_no}: unknowns accepted {before:.3f} -> {after:.3f}, no longer improving"
    return None


def run_pipeline(cfg: Config, progress: bool = True, train_alternative_models: bool | None = None) -> PipelineResult:
    """The whole job, holding the data root's write lock (waits for another writer to finish)."""
    check_train_settings(cfg)       # a wrong arch fails now, not after collecting for an hour
    with data_root_lock(cfg.data_dir, "mlc run"):
        return _run_pipeline(cfg, progress, train_alternative_models)


def _run_pipeline(cfg: Config, progress: bool, train_alternative_models: bool | None) -> PipelineResult:
    out = PipelineResult()
    clock = time.monotonic()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.monotonic()
        out.seconds[stage] = round(out.seconds.get(stage, 0) + now - clock, 1)
        clock = now

    # Collect and curate in rounds until every set has `count` usable images or its queries run dry.
    collected, _ = collect_and_curate(cfg, progress=progress); lap("collect")
    out.seconds["curate"] = collected.seconds.get("curate", 0.0)
    out.seconds["collect"] = round(out.seconds["collect"] - out.seconds["curate"], 1)
    out.shortfall = collected.short
    ds = build_dataset(cfg); lap("build")
    model = train_version(cfg, ds.path, tag="r0"); lap("train")
    out.rounds.append(record(0, ds.version, model.bundle_dir.name, model.metrics))
    if cfg.train.compare_baselines if train_alternative_models is None else train_alternative_models:
        out.alternatives = train_alternatives(cfg, ds.path, tag="r0"); lap("alternatives")
    for r in range(1, cfg.mine.rounds + 1):
        mined = mine_round(cfg, model.bundle_dir, r); lap("mine")
        if why := mining_stop(cfg, r, mined.added):
            log.info("%s; stopping", why)
            out.stopped_early = True
            break
        ds = build_dataset(cfg); lap("build")    # mined images were curated already
        model = train_version(cfg, ds.path, tag=f"r{r}"); lap("train")
        out.rounds.append(record(r, ds.version, model.bundle_dir.name, model.metrics, mined.added))
        if why := mining_stop(cfg, r, mined.added, *(unknown_rate(x.unknown_accepted, x.probe_accepted)
                                                     for x in out.rounds[-2:])):
            log.info("%s; stopping", why)
            out.stopped_early = r < cfg.mine.rounds
            break
    report = cfg.data_dir / "reports" / "latest.html"
    write_html_report(cfg, report, extra_sections=[model_section(out, models_root(cfg))]); lap("report")
    out.report = str(report)
    (cfg.data_dir / "reports" / "latest.json").write_text(json.dumps(asdict(out), indent=2, default=str))
    return out
