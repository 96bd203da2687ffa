"""The model part of `mlc inspect --html`: the same section `mlc run` writes (report/model.py), for
the latest models.

Which bundles: the rounds of the last `mlc run` (reports/latest.json) when its last bundle is still
the latest model (data/models/LATEST); otherwise the latest model alone, as one round labelled as
what it is (trained by `mlc train`, or a round of an earlier run), its mining numbered from 1.
"""

from __future__ import annotations

import json
import logging
import re
from html import escape
from pathlib import Path
from types import SimpleNamespace

from mlc_pipeline.config import Config
from mlc_pipeline.model import registry
from mlc_pipeline.model.bundle import MetaError, read_meta

log = logging.getLogger(__name__)


def latest_result(cfg: Config) -> SimpleNamespace | None:
    """A PipelineResult-shaped record (rounds, alternatives, shortfall) of the latest models, or None
    without a model."""
    models = cfg.layout.models
    bundle = registry.latest_bundle(models)
    if bundle is None:
        return None
    run = cfg.layout.reports / "latest.json"
    if run.is_file():
        try:
            saved = json.loads(run.read_text())
            rounds = [SimpleNamespace(**r) for r in saved.get("rounds", [])]
            refused = saved.get("round0_not_shipped")       # absent from runs saved before 2026-12-06
            refused = SimpleNamespace(**refused) if refused else None
        except (ValueError, TypeError) as exc:
            log.warning("%s unreadable (%s): the report shows the latest model alone", run, exc)
            saved, rounds, refused = {}, [], None
        shipped = saved.get("shipped") or (rounds[-1].bundle if rounds else "")
        if rounds and shipped == bundle.name and all(test_metrics(models / r.bundle) is not None for r in rounds):
            return SimpleNamespace(rounds=rounds, alternatives=saved.get("alternatives", {}),
                                   shortfall=saved.get("shortfall", []), shipped=shipped,
                                   not_shipped=saved.get("not_shipped", ""), reused=saved.get("reused", ""),
                                   stop_reason=saved.get("stop_reason", ""),
                                   round0_not_shipped=refused)
    if not (bundle / "metrics.json").is_file():
        return None
    test = test_metrics(bundle)
    if test is None:                # a report, not a crash of inspect
        return no_model(bundle, f"{bundle / 'metrics.json'} holds no test metrics")
    try:
        meta = read_meta(bundle)
    except MetaError as exc:
        return no_model(bundle, f"MetaError: {exc}")
    only = SimpleNamespace(round=0, label=alone_label(bundle.name), dataset_version=meta.get("dataset_version", "?").split("/")[-1],
                           bundle=bundle.name, macro_f1=test["macro_f1"],
                           unknown_accepted=test.get("unknown_accepted"),
                           probe_accepted=test.get("probe_accepted"), negatives_added=0)
    return SimpleNamespace(rounds=[only], alternatives={}, shortfall=[])


def test_metrics(bundle: Path) -> dict | None:
    """A bundle's test metrics as the report needs them (a macro F1 at least), or None when
    metrics.json is missing, not JSON or holds none: a damaged metrics.json of any round crashed `mlc
    inspect --html` (the verify24 audit). Read by model/registry, as `mlc models` reads them."""
    test, _ = registry.read_test_metrics(bundle)
    return test if "macro_f1" in test else None


def no_model(bundle: Path, why: str) -> None:
    log.warning("%s: the latest model's metrics.json or bundle.json cannot be read (%s): the report shows no "
                "model", bundle.name, why)


def alone_label(bundle_name: str) -> str:
    """What the latest model is when shown alone: a run names its bundles <dataset>-<version>-r<N>-…
    (pipeline.Stages.train), `mlc train` with no round tag."""
    run_round = re.search(r"-r(\d+)-", bundle_name)
    return f"latest model (round {run_round.group(1)} of an earlier run)" if run_round else "latest model (mlc train)"


def latest_model_sections(cfg: Config) -> list[str]:
    """The model section for the latest models, or a line saying there is none yet."""
    from mlc_pipeline.report.model import model_section   # matplotlib: only when a page is written
    result = latest_result(cfg)
    bundle = registry.latest_bundle(cfg.layout.models)
    if result is None and bundle is not None:     # promoted by hand: usable, but nothing to show of it
        return [f"<h2 id='model'>Model</h2><p>The latest model, <code>{escape(bundle.name)}</code>, has no test "
                f"metrics (no <code>metrics.json</code> in its folder): predict and mine use it, but there is "
                f"nothing to report of it.</p>"]
    if result is None:
        return ["<h2 id='model'>Model</h2><p>No model yet: run <code>mlc train</code> or <code>mlc run</code>.</p>"]
    from mlc_pipeline.curate.stage import limits_of     # the mining gallery decodes within curation's limits
    return [model_section(result, cfg.layout.models, cfg.catalog_path, limits_of(cfg))]
