"""A bundle exported before the package restructure (mlc-pipeline 0.1.0, flat modules) still loads.

tests/data/bundle-0.1.0 was trained by the flat layout (`mlc_pipeline.nets`, `mlc_pipeline.train`
are the class paths inside its pickle) on four generated images kept beside it, whose scores it
recorded in expected.json. Loading it through today's code must give the same scores.
"""

import json
import shutil
from pathlib import Path

import numpy as np

from mlc_pipeline.model.predict import score_paths

from mlc_pipeline.model.bundle import load_bundle

OLD = Path(__file__).resolve().parents[1] / "data" / "bundle-0.1.0"


def test_bundle_from_before_the_restructure_loads_and_scores_the_same(tmp_path):
    bundle_dir = tmp_path / "bundle"
    shutil.copytree(OLD, bundle_dir)
    expected = json.loads((OLD / "expected.json").read_text())
    bundle = load_bundle(bundle_dir)
    assert bundle.classes == expected["classes"]
    names = sorted(expected["probabilities"])
    probs = score_paths(bundle, [OLD / "images" / n for n in names])
    want = np.array([expected["probabilities"][n] for n in names])
    np.testing.assert_allclose(probs, want, atol=1e-5)
