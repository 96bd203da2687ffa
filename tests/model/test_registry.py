"""`mlc models`, `mlc models --compare`, `mlc promote`, and `latest` as a model name, on real bundles
(the tiny trainings test_train shares with test_predict) in a data root of their own."""

from __future__ import annotations

import json
import shutil

import pytest

from shapes import trained_bundle  # noqa: E402  (trained once per session, shared)

from mlc_pipeline.model.registry import RegistryError, list_bundles, promote, resolve_bundle  # noqa: E402
from storage_world import mlc, write_config  # noqa: E402

SIGMOID = "default-v1-r0-sigmoid-negatives-20261201T100000000000-aaaaaa"
SOFTMAX = "default-v1-r0-softmax-other-class-20261201T110000000000-bbbbbb"
BROKEN = "default-v2-r0-broken-20261201T120000000000-cccccc"


@pytest.fixture
def root(tmp_path):
    """A data root with two real bundles (LATEST = the sigmoid one), one broken bundle and a
    bundle still being written; returns (config, models folder)."""
    models = tmp_path / "data" / "models"
    shutil.copytree(trained_bundle()[1], models / SIGMOID)
    shutil.copytree(trained_bundle("softmax", "negative")[1], models / SOFTMAX)
    broken = models / BROKEN
    broken.mkdir()
    shutil.copy(models / SIGMOID / "bundle.json", broken / "bundle.json")
    (models / f"{SIGMOID}.tmp-999-0abc1234").mkdir()
    shutil.copy(models / SIGMOID / "bundle.json", models / f"{SIGMOID}.tmp-999-0abc1234" / "bundle.json")
    for name, hour in ((SIGMOID, 10), (SOFTMAX, 11), (broken.name, 12)):   # the listing's order
        meta = json.loads((models / name / "bundle.json").read_text())
        meta["created_at"] = f"2026-12-01T{hour}:00:00+00:00"
        (models / name / "bundle.json").write_text(json.dumps(meta))
    (models / "LATEST").write_text(SIGMOID + "\n")
    return write_config(tmp_path / "cfg.yaml", tmp_path / "data", tmp_path / "world"), models


def test_models_lists_every_bundle_with_its_metrics_and_marks_latest(root):
    cfg, models = root
    r = mlc("models", "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ") and "default-" in line]
    assert [row.split("|")[2].strip() for row in rows] == [SIGMOID, SOFTMAX, BROKEN]   # oldest first
    assert ".tmp-" not in r.stdout
    latest = [row for row in rows if row.split("|")[1].strip() == "LATEST"]
    assert len(latest) == 1 and SIGMOID in latest[0]
    metrics = json.loads((models / SIGMOID / "metrics.json").read_text())["test"]
    assert f"| {metrics['macro_f1']:.3f} |" in latest[0] and "test-v1" in latest[0]
    assert "mlcnet" in latest[0] and "sigmoid/negative" in latest[0]
    assert "UNUSABLE: export.pkl missing" in r.stdout
    infos = {i.name: i for i in list_bundles(models)}
    assert infos[SOFTMAX].head == "softmax/class" and infos[SOFTMAX].problem is None


def test_models_shows_the_cap_each_bundle_was_calibrated_at(root):
    """Bundles trained at different train.max_unknown_accepted (0.2, none, 0) looked alike in the table."""
    cfg, models = root
    for name, value in ((SIGMOID, 0.2), (SOFTMAX, 0.05), (BROKEN, 0.0)):
        meta = json.loads((models / name / "bundle.json").read_text())
        meta["config"]["max_unknown_accepted"] = value
        (models / name / "bundle.json").write_text(json.dumps(meta))
    r = mlc("models", "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    header = next(line for line in r.stdout.splitlines() if line.startswith("| ") and "bundle" in line)
    column = [c.strip() for c in header.split("|")].index("max_unknown_accepted")
    rows = {row.split("|")[2].strip(): row.split("|")[column].strip()
            for row in r.stdout.splitlines() if row.startswith("| ") and "default-" in row}
    # a softmax head has no thresholds: its cap was never applied, and its training said so (curve23)
    assert rows == {SIGMOID: "0.2", SOFTMAX: "0.05 (not applied)", BROKEN: "0"}
    assert any(w.startswith("train.max_unknown_accepted 0.05 was not applied: a softmax head")
               for w in json.loads((models / SOFTMAX / "bundle.json").read_text())["warnings"])
    from mlc_pipeline.report.models import cap
    assert cap({"config": {"max_unknown_accepted": None}}) == "none"
    no_other = "train.max_unknown_accepted 0.05 was not applied: the validation split holds no 'other' image"
    assert cap({"config": {"max_unknown_accepted": 0.05}, "warnings": [no_other]}) == "0.05 (not applied)"


def test_compare_puts_two_bundles_side_by_side_with_what_differs(root):
    cfg, models = root
    r = mlc("models", "-c", str(cfg), "--compare", "latest", SOFTMAX)
    assert r.returncode == 0, r.stderr
    assert f"| {SIGMOID} |" in r.stdout and f"| {SOFTMAX} |" in r.stdout
    assert "| red |" in r.stdout and "| blue |" in r.stdout
    assert "head: 'sigmoid' -> 'softmax'" in r.stdout
    r = mlc("models", "-c", str(cfg), "--compare", SIGMOID, "nope")
    assert r.returncode == 2 and "no model bundle 'nope'" in r.stderr and "Traceback" not in r.stderr


def test_promote_moves_latest_only_to_a_complete_unaltered_bundle(root, tmp_path):
    cfg, models = root
    r = mlc("promote", SOFTMAX, "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    assert f"{SIGMOID} -> {SOFTMAX}" in r.stdout and (models / "LATEST").read_text() == SOFTMAX + "\n"
    assert not [p for p in models.iterdir() if p.name.startswith(".LATEST")]     # written aside, renamed
    r = mlc("promote", BROKEN, "-c", str(cfg))
    assert r.returncode == 2 and "export.pkl missing" in r.stderr and r.stderr.count("\n") == 1
    export = models / SIGMOID / "export.pkl"
    export.write_bytes(export.read_bytes() + b"\0")
    with pytest.raises(RegistryError, match="not the file bundle.json recorded"):
        promote(SIGMOID, models)
    outside = tmp_path / "elsewhere"
    shutil.copytree(models / SOFTMAX, outside)
    with pytest.raises(RegistryError, match="not under"):
        promote(str(outside), models)
    assert (models / "LATEST").read_text() == SOFTMAX + "\n"      # every refusal left it alone


def test_promote_and_compare_refuse_a_bundle_still_being_written_or_replaced(root):
    """A training killed while it scored the test split leaves `<name>.tmp-<pid>-<hex>` holding a
    complete-looking bundle. `mlc promote` made it LATEST, mine wrote its records into it, and the next
    training deleted it with them (audit realphoto22 #1). Such folders are named as what they are."""
    cfg, models = root
    for leftover, said in ((f"{SOFTMAX}.tmp-4242-0123abcd", "still being written"),
                           (f"{SOFTMAX}.old-4242-0123abcd", "being replaced")):
        shutil.copytree(models / SOFTMAX, models / leftover)
        for spec in (leftover, str(models / leftover)):
            r = mlc("promote", spec, "-c", str(cfg))
            assert r.returncode == 2 and f"is not a bundle: it is a bundle {said}" in r.stderr, r.stderr
            assert r.stderr.count("\n") == 1
        r = mlc("models", "-c", str(cfg), "--compare", "latest", leftover)     # mine --model, predict: the same
        assert r.returncode == 2 and "is not a bundle" in r.stderr, r.stderr
    assert (models / "LATEST").read_text() == SIGMOID + "\n"
    assert leftover not in mlc("models", "-c", str(cfg)).stdout
    backup = models.parent / "kite-model.old-2025-12"          # a user's own name: a bundle like any other
    shutil.copytree(models / SOFTMAX, backup)
    r = mlc("models", "-c", str(cfg), "--compare", "latest", str(backup))
    assert r.returncode == 0 and "is not a bundle" not in r.stderr, r.stderr


def test_models_and_promote_agree_on_what_a_usable_bundle_is(root):
    """`mlc promote` made LATEST a bundle without metrics.json that `mlc models` then listed as
    UNUSABLE, while predict works with it. Usable is what loading it for predict and mining needs
    (bundle.json with its keys, export.pkl): such a bundle is listed as usable with "no test metrics",
    and promote says so; a bundle promote refuses is the one the listing calls UNUSABLE."""
    cfg, models = root
    shutil.copytree(models / SOFTMAX, models / "nometrics")
    (models / "nometrics" / "metrics.json").unlink()
    shutil.copytree(models / SOFTMAX, models / "nothresholds")
    meta = json.loads((models / "nothresholds" / "bundle.json").read_text())
    del meta["thresholds"]
    (models / "nothresholds" / "bundle.json").write_text(json.dumps(meta))
    r = mlc("models", "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    rows = {row.split("|")[2].strip(): row for row in r.stdout.splitlines() if row.startswith("| ")}
    assert "UNUSABLE" not in rows["nometrics"], rows["nometrics"]
    assert "no test metrics: metrics.json unreadable (FileNotFoundError)" in rows["nometrics"]
    assert "| n/a | n/a | n/a |" in rows["nometrics"] and "mlcnet" in rows["nometrics"]
    assert "UNUSABLE: bundle.json lacks ['thresholds']" in rows["nothresholds"], rows["nothresholds"]
    for name in rows:                   # the two commands agree on every bundle of the listing
        if name in ("bundle", "---"):
            continue
        r = mlc("promote", name, "-c", str(cfg))
        assert (r.returncode == 2) == ("UNUSABLE" in rows[name]), (name, r.stdout, r.stderr)
    r = mlc("promote", "nometrics", "-c", str(cfg))
    assert r.returncode == 0 and (models / "LATEST").read_text() == "nometrics\n"
    assert "nometrics has no test metrics (metrics.json unreadable (FileNotFoundError))" in r.stdout, r.stdout
    r = mlc("models", "-c", str(cfg), "--compare", "latest", SOFTMAX)      # what it cannot do, in one line
    assert r.returncode == 2 and "no test metrics to compare (metrics.json unreadable" in r.stderr


def test_latest_names_the_promoted_bundle_for_predict(root, capsys):
    """In-process `mlc` (torch is loaded here already; a subprocess would load it again, ~30 s on CI)."""
    from mlc_pipeline.cli import main
    cfg, models = root
    images = sorted((trained_bundle()[0].parent / "images").glob("red_00*.jpg"))[:2]
    assert main(["predict", "-c", str(cfg), "--model", "latest", "--json", *map(str, images)]) == 0
    assert all("thresholds" in row for row in json.loads(capsys.readouterr().out))       # the sigmoid bundle
    promote(SOFTMAX, models)
    assert main(["predict", "-c", str(cfg), "--model", "latest", "--json", *map(str, images)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert all("thresholds" not in row and "other" in row["probs"] for row in rows)   # now the softmax one


def test_latest_without_a_pointer_is_one_line(tmp_path):
    with pytest.raises(RegistryError, match="no .*LATEST"):
        resolve_bundle("latest", tmp_path)
    r = mlc("predict", "--model", "latest", "-c", str(write_config(tmp_path / "c.yaml", tmp_path / "d", tmp_path)),
            "x.jpg")
    assert r.returncode == 2 and "LATEST" in r.stderr and "Traceback" not in r.stderr


def test_latest_as_a_link_to_the_folder_is_followed_everywhere(root):
    """latest_bundle followed a LATEST link; `latest` as a name (predict) and the listing crashed on
    it (IsADirectoryError) and listed LATEST itself as a bundle. Promote writes the file again."""
    from mlc_pipeline.model.registry import latest_bundle
    _, models = root
    (models / "LATEST").unlink()
    (models / "LATEST").symlink_to(SOFTMAX)
    assert resolve_bundle("latest", models).resolve() == latest_bundle(models) == (models / SOFTMAX).resolve()
    infos = list_bundles(models)
    assert [i.name for i in infos] == [SIGMOID, SOFTMAX, BROKEN]
    assert [i.name for i in infos if i.latest] == [SOFTMAX]
    assert promote(SIGMOID, models) == (SOFTMAX, SIGMOID)
    assert (models / "LATEST").read_text() == SIGMOID + "\n" and not (models / "LATEST").is_symlink()


@pytest.mark.parametrize("text, problem", [("[]", "bundle.json is not a JSON object (a list)"),
                                           ("{not json", "bundle.json unreadable or not JSON (JSONDecodeError)")])
def test_a_damaged_bundle_json_is_listed_unusable_and_refused(tmp_path, text, problem):
    """Listed as UNUSABLE with why, refused by promote and by --compare's settings, LATEST left alone;
    the settings of a non-object bundle.json crashed (AttributeError)."""
    from mlc_pipeline.model.registry import settings_of
    models = tmp_path / "models"
    (models / "damaged").mkdir(parents=True)
    (models / "damaged" / "bundle.json").write_text(text)
    (models / "LATEST").write_text("elsewhere\n")
    [info] = list_bundles(models)
    assert info.name == "damaged" and info.problem == problem, info.problem
    with pytest.raises(RegistryError, match=f"not a usable bundle: {problem}".replace("(", r"\(").replace(")", r"\)")):
        promote("damaged", models)
    with pytest.raises(RegistryError, match=str(models / "damaged" / "bundle.json")):
        settings_of(models / "damaged")
    assert (models / "LATEST").read_text() == "elsewhere\n"


def test_the_latest_bundle_without_bundle_json_is_listed_unusable_not_dropped(tmp_path):
    """A folder without bundle.json is no bundle and is not listed, but the one models/LATEST names
    vanished from `mlc models` while predict and mine refused it (the verify24 audit)."""
    models = tmp_path / "models"
    (models / "shipped").mkdir(parents=True)
    (models / "shipped" / "export.pkl").write_bytes(b"x")
    (models / "not-a-bundle").mkdir()
    (models / "LATEST").write_text("shipped\n")
    [info] = list_bundles(models)
    assert (info.name, info.latest) == ("shipped", True)
    assert info.problem == "bundle.json missing (not a model bundle folder?)", info.problem


def test_a_threshold_near_0_or_1_never_prints_as_0_or_1():
    """The report's threshold table and `mlc models --compare` printed 0.9997 as 1.000 and 1.0, which
    reads as 'this class can never be claimed' (the day24 audit)."""
    from mlc_pipeline.model.registry import threshold_places
    shown = lambda t: f"{t:.{threshold_places(t)}f}"      # noqa: E731
    assert [shown(t) for t in (0.5, 0.99970, 0.99990, 0.0003, 0.9999996, 1.0, 0.0)] == \
        ["0.500", "0.9997", "0.9999", "0.0003", "1.000000", "1.000", "0.000"]


@pytest.mark.parametrize("test", [[0.5], None, "macro_f1"])
def test_a_metrics_json_whose_test_is_no_object_is_listed_without_test_metrics(root, test):
    """`mlc models` crashed (AttributeError in the table) on a metrics.json whose "test" was a list or
    null; the report's reader already treated it as no test metrics. One reader serves both now
    (registry.read_test_metrics): the bundle is listed usable, its metrics n/a, and says why."""
    from mlc_pipeline.report.latest import test_metrics
    from mlc_pipeline.report.models import bundles_table
    _, models = root
    (models / SOFTMAX / "metrics.json").write_text(json.dumps({"test": test}))
    info = next(i for i in list_bundles(models) if i.name == SOFTMAX)
    assert info.test == {} and info.problem is None
    assert info.metrics_problem == f"metrics.json unreadable (its test is {type(test).__name__}, not an object)"
    [row] = [r for r in bundles_table(list_bundles(models)).splitlines() if SOFTMAX in r]
    assert "| n/a | n/a | n/a |" in row and f"(no test metrics: {info.metrics_problem})" in row, row
    assert test_metrics(models / SOFTMAX) is None and test_metrics(models / SIGMOID)["macro_f1"] >= 0


def test_promote_while_a_command_holds_the_data_root_says_the_promotion_may_be_overtaken(root, capsys):
    """`mlc promote` during a training said only "LATEST -> B"; the training then moved LATEST to its
    own model (the concurrency28 audit). It now names the holder and what to check."""
    from mlc_pipeline.cli import main
    from mlc_pipeline.config import load_config
    from mlc_pipeline.locking import data_root_lock
    cfg, models = root
    assert main(["promote", SOFTMAX, "-c", str(cfg)]) == 0
    assert "holds this data root" not in capsys.readouterr().out
    with data_root_lock(load_config(cfg).data_dir, "mlc train"):
        assert main(["promote", SIGMOID, "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert f"-> {SIGMOID}" in out and "note: pid " in out and "(mlc train, started" in out
    assert "moves models/LATEST to the model it trained" in out
