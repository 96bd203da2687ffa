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


def test_mlc_predict_refuses_a_bundle_of_a_newer_format_in_one_line(tmp_path):
    """A bundle a newer mlc-pipeline wrote (bundle.json `format` above BUNDLE_FORMAT) is one line and exit
    2, as a damaged bundle is; this 0.1.0 bundle (format 1) loads above, a format older than ours."""
    import subprocess
    from helpers import ENV, MLC
    from mlc_pipeline.model.bundle import BUNDLE_FORMAT, read_meta, write_meta
    bundle_dir = tmp_path / "bundle"
    shutil.copytree(OLD, bundle_dir)
    assert read_meta(bundle_dir)["format"] == 1
    write_meta(bundle_dir, read_meta(bundle_dir) | {"format": BUNDLE_FORMAT + 1})
    res = subprocess.run([*MLC, "predict", "--model", str(bundle_dir), str(OLD / "images" / "blue_000.jpg")],
                         capture_output=True, text=True, env=ENV)
    assert (res.returncode, res.stdout) == (2, ""), res
    assert res.stderr == (f"mlc: {bundle_dir}: not a usable bundle: bundle.json is of format {BUNDLE_FORMAT + 1}, "
                          f"written by a newer mlc-pipeline; this one reads bundle formats up to {BUNDLE_FORMAT}: "
                          f"upgrade mlc-pipeline to use it; refusing to unpickle it\n"), res.stderr
