"""The Prefect artifacts of a run: a markdown summary and tables, from the run's record. What they
say is the library's (mlc_pipeline/report/summary.py, report/published.py); this module hands it
to Prefect under fixed keys, so the UI's Artifacts page shows each one's history across runs.
"""

from __future__ import annotations

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.progress import end_progress
from flows.runtime import DEFAULT_CONFIG
from mlc_pipeline.report.published import published_since, stopped_markdown
from mlc_pipeline.report.summary import (DATASET_SUMMARY_KEY, MINED_KEY, PER_CLASS_KEY, REJECTED_KEY, SUMMARY_KEY,
                                         mined_rows, per_class_rows, rejected_rows, summary_markdown)


def publish(run: dict, summary_key: str = SUMMARY_KEY) -> None:
    """Create every artifact the run has data for (called on success and on failure)."""
    status = run["status"]
    create_markdown_artifact(summary_markdown(run), key=summary_key,
                             description=f"{run.get('title', 'run')} summary ({status})")
    if run.get("curate"):
        create_table_artifact(rejected_rows(run["curate"]), key=REJECTED_KEY,
                              description="curation: files rejected or removed, by reason")
    if run.get("models"):
        create_table_artifact(per_class_rows(run["models"]), key=PER_CLASS_KEY,
                              description="per-class test metrics of the product model, every round")
    if run.get("models") or run.get("mined"):
        create_table_artifact(mined_rows(run.get("mined") or []), key=MINED_KEY,
                              description="hard negatives mined from the pool (moved into training 'other')")


def write_stopped_summary(client, flow_name: str, flow_run, state) -> None:
    """The `mlc-run-summary` (or dataset summary) of a cancelled or crashed run, so the UI does not go
    on showing the previous run's; from a state hook or from flows/stale_runs.py."""
    from prefect.client.schemas.actions import ArtifactCreate

    params = flow_run.parameters or {}
    published, why = published_since(params.get("config_path") or DEFAULT_CONFIG, params.get("overrides"),
                                     flow_run.start_time)
    status = "Cancelled" if state.is_cancelling() else state.name     # on_cancellation sees Cancelling
    key = DATASET_SUMMARY_KEY if flow_name == "rebuild-report" else SUMMARY_KEY
    client.create_artifact(ArtifactCreate(
        key=key, type="markdown", flow_run_id=flow_run.id, description=f"{flow_name} summary ({status})",
        data=stopped_markdown(flow_name, status, state.message or state.name, flow_run.name,
                              flow_run.start_time is not None, params, published, why)))
    end_progress(client, flow_run.id, status.lower())
