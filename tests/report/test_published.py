"""What a data root has published, as the summary of a stopped run tells it (report/published.py)."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

from mlc_pipeline.report.published import datasets_since, stopped_markdown


def test_versions_built_since_a_run_started_are_read_through_the_version_contract(tmp_path):
    """dataset.json was parsed here directly, and a damaged one was listed as "unreadable,
    FileNotFoundError": it is read through manifest.read_version_meta, and the summary says what is
    wrong with it, in that reader's words."""
    started = datetime.now(timezone.utc)
    root = tmp_path / "datasets" / "default"
    for version, meta in [("v1", {"created_at": time.time() - 3600}), ("v2", {"created_at": time.time() + 5}),
                          ("v3", None), ("v4", [1, 2]), ("v5", {"version": "v5"}), ("v6", {"created_at": "soon"})]:
        (root / version).mkdir(parents=True)
        if meta is not None:
            (root / version / "dataset.json").write_text(json.dumps(meta))
    assert datasets_since(root, started) == [
        "v2", "v3 (perhaps: its dataset.json is missing)", "v4 (perhaps: its dataset.json is not a JSON object)",
        "v5 (perhaps: its dataset.json has no created_at)",
        "v6 (perhaps: its dataset.json's created_at is not a time, ValueError)"]


def test_a_stopped_runs_summary_masks_its_overrides():
    params = {"config_path": "c.yaml", "overrides": {"catalog": {"url": "postgresql://u:hunter2pw@db/mlc"}}}
    text = stopped_markdown("collect-and-train", "Crashed", "Process exited", "brave-fox", True, params,
                            {"latest_dataset": "v1", "latest_model": None, "new_datasets": [], "new_models": []})
    assert "hunter2pw" not in text and "postgresql://u:***@db/mlc" in text, text
    assert "# collect-and-train: Crashed" in text and "- flow run: `brave-fox`" in text
    assert "published no dataset version and trained no model" in text and "latest model: **none**" in text
