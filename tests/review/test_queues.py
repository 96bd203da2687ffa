"""review/queues.py: what the latest model bundle says about images, read from its CSV files."""

from __future__ import annotations

import shutil

import pytest

from mlc_pipeline.config import Config
from mlc_pipeline.review.queues import probes_accepted


@pytest.mark.parametrize("damage", ["[]", "{not json"])
def test_a_damaged_bundle_json_empties_the_probe_queue_and_says_why(tmp_path, trained_shapes_bundle, caplog, damage):
    """probes_accepted parsed bundle.json itself: a list there was an AttributeError and bad JSON a
    JSONDecodeError, a 500 in the review app (the arch24 audit). The queue is empty and the log says why."""
    cfg = Config(data_dir=tmp_path / "data", classes={"red": {"queries": ["red"], "count": 1}},
                 other={"queries": ["noise"], "count": 1})
    bundle = shutil.copytree(trained_shapes_bundle[1], cfg.layout.models / "m1")
    (cfg.layout.models / "LATEST").write_text("m1\n")
    assert (bundle / "test_scores.csv").is_file()
    (bundle / "bundle.json").write_text(damage)
    with caplog.at_level("WARNING", logger="mlc_pipeline.review.queues"):
        assert probes_accepted(cfg, None) == (bundle, [])
    assert "no probe queue" in caplog.text and "bundle.json" in caplog.text
