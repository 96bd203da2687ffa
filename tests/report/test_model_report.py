"""The model section's tables and plots (report/model.py, report/curves.py, model/plots.py)."""

from __future__ import annotations

import json
import shutil

import pytest

from mlc_pipeline.config import Config
from mlc_pipeline.report.curves import curve_markdown
from mlc_pipeline.report.latest import alone_label, latest_result
from mlc_pipeline.report.model import md_to_html_table, model_section, operating_curves
from mlc_pipeline.report.rounds import rounds_markdown, variants_markdown


def curve(chosen: int = 1) -> list[dict]:
    """An operating curve as training records it (model.metrics.operating_curve), highest cap first."""
    points = [(0.10, 0.82, 0.09, 0.30), (0.05, 0.80, 0.05, 0.21), (0.0, 0.70, 0.0, 0.08)]
    return [{"valid_other_accepted": cap, "macro_f1": f1, "unknown_accepted": other, "probe_accepted": probe,
             "chosen": i == chosen} for i, (cap, f1, other, probe) in enumerate(points)]


def test_the_chosen_curve_point_is_bold_in_html_and_in_markdown():
    """The Prefect artifact (markdown) writes **chosen**; the HTML page printed those asterisks."""
    md = curve_markdown(curve())
    assert "| **chosen** |" in md
    page = md_to_html_table(md)
    assert "**" not in page and page.count("<td><b>chosen</b></td>") == 1
    rows = page.split("<tr>")
    assert "<b>chosen</b>" in rows[3] and "5.0%" in rows[3]           # after the header and the 10% row
    assert md_to_html_table("| a |\n|---|\n| 2 ** 3 |") == "<table><tr><th>a</th></tr><tr><td>2 ** 3</td></tr></table>"


def test_the_curve_table_shows_the_validation_f1_the_cap_picks_by():
    """The cap picks the best validation F1 under it; the table showed only test F1, so a user could
    not see why a point was chosen. A curve recorded before the column existed shows '-' there."""
    points = curve()
    points[1]["valid_macro_f1"] = 0.8125
    rows = curve_markdown(points).splitlines()
    assert rows[0].startswith("| cap on valid other | macro F1 (valid) | macro F1 (test) |")
    assert rows[3] == "| 5.0% | 0.812 | 0.800 | 5.0% | 21.0% | **chosen** |"
    assert rows[2].startswith("| 10.0% | - | 0.820 |")


@pytest.mark.parametrize("damage", ["[]", "{not json", None])
def test_a_latest_model_whose_bundle_json_is_damaged_is_left_out_of_the_report(tmp_path, trained_shapes_bundle,
                                                                               caplog, damage):
    """`mlc inspect --html` crashed with a traceback when the latest bundle's bundle.json was not a JSON
    object (AttributeError), not JSON or gone (the arch24 audit's sixth reader): the report now shows
    no model and the log says why."""
    _, trained = trained_shapes_bundle
    cfg = Config(data_dir=tmp_path / "data", classes={"red": {"queries": ["red"], "count": 1}},
                 other={"queries": ["noise"], "count": 1})
    name = "default-v1-sigmoid-negatives-20261206T000956415172-efc3bd"
    shutil.copytree(trained, cfg.layout.models / name)
    (cfg.layout.models / "LATEST").write_text(name + "\n")
    meta = cfg.layout.models / name / "bundle.json"
    meta.unlink() if damage is None else meta.write_text(damage)
    with caplog.at_level("WARNING", logger="mlc_pipeline.report.latest"):
        assert latest_result(cfg) is None
    assert "bundle.json cannot be read" in caplog.text and "the report shows no model" in caplog.text


@pytest.mark.parametrize("damage", ["[]", "{not json", '{"test": []}', '{"test": {}}', '{"valid": {}}'])
def test_a_latest_model_whose_metrics_json_is_damaged_is_left_out_of_the_report(tmp_path, trained_shapes_bundle,
                                                                                 caplog, damage):
    """A metrics.json that is not JSON, not an object, or holds no test macro F1: the report shows no
    model and the log says why, as for a damaged bundle.json (one early return each since mends25)."""
    cfg = Config(data_dir=tmp_path / "data", classes={"red": {"queries": ["red"], "count": 1}},
                 other={"queries": ["noise"], "count": 1})
    shutil.copytree(trained_shapes_bundle[1], cfg.layout.models / "default-v1-x")
    (cfg.layout.models / "LATEST").write_text("default-v1-x\n")
    assert latest_result(cfg).rounds[0].bundle == "default-v1-x"
    (cfg.layout.models / "default-v1-x" / "metrics.json").write_text(damage)
    with caplog.at_level("WARNING", logger="mlc_pipeline.report.latest"):
        assert latest_result(cfg) is None
    assert ("default-v1-x: the latest model's metrics.json or bundle.json cannot be read "
            f"({cfg.layout.models / 'default-v1-x' / 'metrics.json'} holds no test metrics): the report shows no model"
            in caplog.text), caplog.text


def test_a_model_from_mlc_train_is_labelled_as_such_not_round_0(tmp_path, trained_shapes_bundle):
    """The latest model shown alone (no run, or not the last run's) was called 'round 0' in the rounds
    table, the alternatives table and the operating-curve plot."""
    _, trained = trained_shapes_bundle
    cfg = Config(data_dir=tmp_path / "data", classes={"red": {"queries": ["red"], "count": 1}},
                 other={"queries": ["noise"], "count": 1})
    name = "default-v1-sigmoid-negatives-20261206T000956415172-efc3bd"       # `mlc train` names no round
    shutil.copytree(trained, cfg.layout.models / name)
    (cfg.layout.models / "LATEST").write_text(name + "\n")
    result = latest_result(cfg)
    metrics = {name: json.loads((cfg.layout.models / name / "metrics.json").read_text())["test"]}
    assert list(operating_curves(result, metrics)) == ["latest model (mlc train)"]
    assert "| latest model (mlc train) | " in rounds_markdown(result)
    assert "product, latest model (mlc train)" in variants_markdown(result, metrics, cfg.layout.models)
    assert "round 0" not in model_section(result, cfg.layout.models)
    # a run's bundle shown alone (promoted, or the run's report gone) is that run's round
    assert alone_label("default-v2-r1-sigmoid-negatives-20261206T000956415172-efc3bd") == \
        "latest model (round 1 of an earlier run)"


def test_a_latest_model_without_metrics_is_named_not_reported_missing(tmp_path, trained_shapes_bundle):
    """`mlc promote` accepts a bundle without metrics.json (predict and mining use it); the report's
    model section then said "No model yet: run mlc train", with a LATEST model in place."""
    from mlc_pipeline.report.latest import latest_model_sections
    _, trained = trained_shapes_bundle
    cfg = Config(data_dir=tmp_path / "data", classes={"red": {"queries": ["red"], "count": 1}},
                 other={"queries": ["noise"], "count": 1})
    shutil.copytree(trained, cfg.layout.models / "nometrics")
    (cfg.layout.models / "nometrics" / "metrics.json").unlink()
    (cfg.layout.models / "LATEST").write_text("nometrics\n")
    [section] = latest_model_sections(cfg)
    assert "No model yet" not in section, section
    assert "nometrics" in section and "no test metrics" in section and "metrics.json" in section


def test_a_bundle_json_that_is_no_object_names_the_network_unknown(tmp_path, trained_shapes_bundle):
    """The Network line of the report and the run summary crashed on a bundle.json holding a list
    (AttributeError: the verify24 audit)."""
    from mlc_pipeline.report.model import bundle_network_line
    bundle = shutil.copytree(trained_shapes_bundle[1], tmp_path / "b")
    assert bundle_network_line(bundle).startswith("mlcnet")
    (bundle / "bundle.json").write_text("[]")
    line = bundle_network_line(bundle)
    assert line.startswith("unknown (") and "is not a JSON object (a list)" in line, line


def test_a_damaged_metrics_json_of_an_earlier_round_leaves_the_run_out_of_the_report(tmp_path, trained_shapes_bundle,
                                                                                      caplog):
    """`mlc inspect --html` read every round's metrics.json of the last run as it found it: one holding a
    list or bad JSON, even an earlier round's, crashed the report (the verify24 audit). The run's rounds
    are used only when each is readable; here the latest model alone is shown."""
    cfg = Config(data_dir=tmp_path / "data", classes={"red": {"queries": ["red"], "count": 1}},
                 other={"queries": ["noise"], "count": 1})
    for name in ("default-v1-r0-x", "default-v2-r1-x"):
        shutil.copytree(trained_shapes_bundle[1], cfg.layout.models / name)
    (cfg.layout.models / "LATEST").write_text("default-v2-r1-x\n")
    rounds = [{"round": r, "dataset_version": f"v{r + 1}", "bundle": name, "macro_f1": 0.5, "unknown_accepted": 0.1,
               "probe_accepted": 0.1, "negatives_added": 0} for r, name in enumerate(("default-v1-r0-x", "default-v2-r1-x"))]
    cfg.layout.reports.mkdir(parents=True)
    (cfg.layout.reports / "latest.json").write_text(json.dumps({"rounds": rounds, "shipped": "default-v2-r1-x"}))
    assert len(latest_result(cfg).rounds) == 2                       # whole: the run's two rounds
    (cfg.layout.models / "default-v1-r0-x" / "metrics.json").write_text("[]")
    result = latest_result(cfg)
    assert [r.bundle for r in result.rounds] == ["default-v2-r1-x"]   # the latest model alone
    assert "latest model" in model_section(result, cfg.layout.models)


def test_inspect_html_says_why_the_last_run_stopped_mining(tmp_path, trained_shapes_bundle):
    """The run's report and its latest.json knew why mining stopped, but `mlc inspect --html` (the page
    written again from latest.json) showed only fewer rounds (the day24 audit)."""
    cfg = Config(data_dir=tmp_path / "data", classes={"red": {"queries": ["red"], "count": 1}},
                 other={"queries": ["noise"], "count": 1})
    shutil.copytree(trained_shapes_bundle[1], cfg.layout.models / "default-v1-r0-x")
    (cfg.layout.models / "LATEST").write_text("default-v1-r0-x\n")
    rounds = [{"round": 0, "dataset_version": "v1", "bundle": "default-v1-r0-x", "macro_f1": 0.5,
               "unknown_accepted": 0.1, "probe_accepted": 0.1, "negatives_added": 0}]
    cfg.layout.reports.mkdir(parents=True)
    why = "round 1: the model accepted no pool image as a class <nothing to mine>"
    (cfg.layout.reports / "latest.json").write_text(json.dumps({"rounds": rounds, "shipped": "default-v1-r0-x",
                                                                "stop_reason": why}))
    page = model_section(latest_result(cfg), cfg.layout.models)
    assert "<p id='mining-stopped'><b>Mining stopped:</b> round 1: the model accepted no pool image as a class " \
           "&lt;nothing to mine&gt;.</p>" in page, page
    (cfg.layout.reports / "latest.json").write_text(json.dumps({"rounds": rounds, "shipped": "default-v1-r0-x"}))
    assert "mining-stopped" not in model_section(latest_result(cfg), cfg.layout.models)   # a run saved before
