"""What a data root has published, as run summaries tell it: the latest dataset version and model,
what was published since a run started, and the summary of a run that was cancelled or crashed (no
stage result known, only what the data root shows). flows/artifacts.py makes Prefect artifacts of it.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from mlc_pipeline.config import load_config
from mlc_pipeline.manifest import VersionMetaUnreadable, latest_version, read_version_meta, versions
from mlc_pipeline.model.registry import latest_bundle, list_bundles
from mlc_pipeline.report.summary import md_escape
from mlc_pipeline.secrets import redact, shown_settings

log = logging.getLogger(__name__)


def published_state(cfg, since: datetime | None = None) -> dict:
    """The latest dataset version and model as they are on disk now. With `since` (when a run
    started), also what was published from then on: `new_datasets`, the dataset versions built since
    (dataset.json's created_at), and `new_models`, the model bundles trained since (bundle.json's)."""
    if cfg is None:
        return {}
    model = latest_bundle(cfg.layout.models)
    state = {"latest_dataset": latest_version(cfg.layout.datasets),
             "latest_model": model.name if model else None}
    if since is not None:
        state.update(new_datasets=datasets_since(cfg.layout.datasets, since),
                     new_models=models_since(cfg.layout.models, since))
    return state


def published_since(config_path: str, overrides: dict | None, since: datetime | None) -> tuple[dict | None, str]:
    """`published_state` of a run's config and overrides, or None and why it could not be looked up
    (a summary says what is known; the run's state is what matters)."""
    try:
        cfg = load_config(config_path, overrides or None)
    except Exception as exc:        # whatever stopped the run may have stopped this too: said, not raised
        return None, f"the config did not load: {type(exc).__name__}: {redact(str(exc))}"
    try:
        return published_state(cfg, since), ""
    except Exception as exc:        # the summary still says the run stopped; the log has the traceback
        log.warning("published versions not looked up", exc_info=True)
        return None, f"the data root could not be read: {type(exc).__name__}: {redact(str(exc))}"


def datasets_since(root, since: datetime) -> list[str]:
    """The dataset versions under `root` built at or after `since`, oldest first. A version whose
    dataset.json cannot be read is listed too, with what is wrong with it: it cannot be told apart,
    and a damaged version that may be this run's must not go unmentioned."""
    out = []
    for v in versions(root):
        try:
            built = datetime.fromtimestamp(float(read_version_meta(root / v)["created_at"]), timezone.utc)
        except VersionMetaUnreadable as exc:
            out.append(f"{v} (perhaps: its {exc.problem})")
            continue
        except KeyError:
            out.append(f"{v} (perhaps: its dataset.json has no created_at)")
            continue
        except (TypeError, ValueError, OverflowError, OSError) as exc:     # not a number of seconds
            out.append(f"{v} (perhaps: its dataset.json's created_at is not a time, {type(exc).__name__})")
            continue
        if built >= since.replace(microsecond=0):
            out.append(v)
    return out


def models_since(models_dir, since: datetime) -> list[str]:
    """The model bundles under `models_dir` trained at or after `since` (bundle.json's created_at,
    to the second), oldest first; one whose bundle.json has no readable time is left out: `mlc models`
    lists it as unusable."""
    out = []
    for info in list_bundles(models_dir):
        try:
            made = datetime.fromisoformat(info.created_at)
        except ValueError:          # "" (bundle.json unreadable) or not a time
            continue
        if made.tzinfo is None:
            made = made.replace(tzinfo=timezone.utc)
        if made >= since.replace(microsecond=0):
            out.append(info.name)
    return out


def stopped_published_text(published: dict | None, started: bool) -> str:
    """What a cancelled or crashed run left published: each stage publishes whole (a dataset version,
    a model, models/LATEST), so the stages that finished before it stopped stay published."""
    kept = "What was collected and curated is kept in the catalog (the next run resumes from it)."
    if not started:
        return f"The run never started running, so it published nothing. {kept}"
    if published is None or "new_datasets" not in published:
        return ("Each stage publishes whole, so a stage that finished before the run stopped may have published "
                f"a dataset version or moved models/LATEST: see the latest ones below. {kept}")
    datasets, models = published["new_datasets"], published["new_models"]
    if not datasets and not models:
        return f"It published no dataset version and trained no model before it stopped. {kept}"
    parts = []
    if datasets:
        parts.append("dataset version" + ("s " if len(datasets) > 1 else " ") + ", ".join(
            f"{v} (the latest now)" if v == published.get("latest_dataset") else v for v in datasets))
    if models:
        parts.append("model" + ("s " if len(models) > 1 else " ") + ", ".join(
            f"{m} (models/LATEST now)" if m == published.get("latest_model") else f"{m} (not LATEST)"
            for m in models))
    return ("Each stage publishes whole, and the stages that finished before the run stopped stay published: "
            f"since it started, {'; '.join(parts)}. {kept}")


def stopped_markdown(title: str, status: str, message: str, run_name: str, started: bool, params: dict,
                     published: dict | None, why_unknown: str = "") -> str:
    """The summary of a run that was cancelled or crashed: no stage result is known here, only that,
    and what the data root shows was published since the run started. `started`: whether the run
    ever started running; `params`: its parameters (config_path, overrides)."""
    lines = [f"# {title}: {status}", "", f"**{md_escape(message)}**", "",
             md_escape(stopped_published_text(published, started)), "",
             f"- flow run: `{run_name}`",
             f"- config: `{params.get('config_path', '?')}`"
             + (f" with overrides `{shown_settings(params['overrides'])}`" if params.get("overrides") else "")]
    if published is None:
        lines += [f"- published versions: not looked up ({why_unknown})", ""]
    else:
        lines += [f"- latest dataset version: **{published.get('latest_dataset') or 'none'}**",
                  f"- latest model: **{published.get('latest_model') or 'none'}**", ""]
    return "\n".join(lines)
