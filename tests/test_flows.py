"""The `collect-and-train` flow (flows/collect_and_train.py) in-process under `prefect_test_harness` (a
real API on temp SQLite; the `harness` fixture, tests/conftest.py), on a tiny config against the bundled
local Flickr-compatible server.

- a run completes and leaves its artifacts (summary markdown, tables, download progress);
- a run whose collect hits a fault retrying cannot fix fails with a message naming the stage, leaves
  the published dataset version and model as they were, and the next run resumes (downloads only what
  is still missing) and completes.

The tests on `project` share its data root, in this order. The flows' other modules have their own test
files: test_flow_artifacts.py, test_flow_progress.py, test_flow_runtime.py, test_flow_logs.py and
test_flow_flickr.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import artifacts_of, free_port, logs_of, tiny_config

from prefect.client.orchestration import get_client

from flows.artifacts import MINED_KEY, PER_CLASS_KEY, REJECTED_KEY, SUMMARY_KEY
from flows.collect_and_train import collect_and_train, rebuild_report
from flows.progress import PROGRESS_KEY


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("flow")
    return tiny_config(folder, free_port())


def downloaded_files(cfg_path: Path) -> int:
    from mlc_pipeline.catalog import Catalog
    from mlc_pipeline.config import load_config

    with Catalog(load_config(cfg_path).catalog_path) as catalog:
        return sum(r["n"] for r in catalog.counts()
                   if r["status"] in ("downloaded", "accepted", "rejected", "duplicate"))


def published(data: Path) -> dict:
    """What is published: dataset versions (with their dataset.json bytes) and models/LATEST."""
    root = data / "datasets" / "default"
    return {"LATEST": (root / "LATEST").read_text() if (root / "LATEST").exists() else None,
            "versions": {p.name: (p / "dataset.json").read_bytes() for p in sorted(root.glob("v*"))},
            "model": (data / "models" / "LATEST").read_text() if (data / "models" / "LATEST").exists() else None}


FLOW_KEY, FLOW_SECRET = "flowkey-5e1f7a2b9c", "flowsecret-0d3e8b6a4f"


def test_flow_completes_with_artifacts(harness, project, monkeypatch):
    # The local server accepts any key: a distinctive one lets us grep for it afterwards.
    monkeypatch.setenv("FLICKR_API_KEY", FLOW_KEY)
    monkeypatch.setenv("FLICKR_API_SECRET", FLOW_SECRET)
    state = collect_and_train(config_path=str(project), overrides={}, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    data = project.parent / "data"

    assert result["collect"]["downloaded"] > 0
    assert [b["version"] for b in result["builds"]] == ["v1", "v2"]        # v2: with the mined negatives
    assert [m["round"] for m in result["models"]] == [0, 1]
    assert result["latest_dataset"] == "v2"
    assert (data / "models" / "LATEST").read_text().strip() == result["latest_model"]
    assert Path(result["report"]).is_file() and result["report"].endswith(".html")
    page = Path(result["report"]).read_text()
    assert "Unknown kinds (probe queries)" in page and "<td>house</td>" in page  # what unknowns were taken for

    arts = artifacts_of(state.state_details.flow_run_id)
    assert {SUMMARY_KEY, PER_CLASS_KEY, REJECTED_KEY, MINED_KEY, PROGRESS_KEY} <= set(arts), sorted(arts)
    summary = arts[SUMMARY_KEY][0].data
    assert "Operating curve" in page and "max_unknown_accepted" in page
    # one rounds table (report/rounds.py): the page's is the summary's, the same text
    from mlc_pipeline.report.model import md_to_html_table
    from mlc_pipeline.report.rounds import ROUNDS_HEADER
    table = summary[summary.index(ROUNDS_HEADER):].split("\n\n")[0]
    start = page.index("<h3>Mining rounds</h3>") + len("<h3>Mining rounds</h3>")
    assert page[start:page.index("</table>", start) + len("</table>")].strip() == md_to_html_table(table), table
    assert result["models"][1]["bundle"] in table
    for text in ("Completed", "Dataset default v2", "before and after mining", result["report"], "balloon",
                 "Operating curve", "**chosen**"):
        assert text in summary, text
    per_class = json.loads(arts[PER_CLASS_KEY][0].data)
    assert {(r["round"], r["class"]) for r in per_class} == {(0, "balloon"), (0, "kite"), (1, "balloon"), (1, "kite")}
    mined = json.loads(arts[MINED_KEY][0].data)
    assert len(mined) == result["mined"][0]["added"] > 0, "nothing mined: the checks below pass on nothing"
    # each negative with the score it was mined at, and its likeness to the class: empty here, where
    # the project holds by score (mine.hold_above, tests/helpers.py); filled values: model/test_mine
    assert all(set(r) == {"round", "photo_id", "score", "accepted_as", "likeness"} and r["likeness"] == ""
               for r in mined)
    assert json.loads(arts[REJECTED_KEY][0].data)
    assert float(arts[PROGRESS_KEY][0].data) == 100.0
    # The library's own INFO lines are in the run's logs (the nightly25 audit: only its warnings were,
    # so a night's training showed nothing between the train task's start and end); no DEBUG ones.
    library = [r for r in logs_of(state.state_details.flow_run_id) if r.name.startswith("mlc_pipeline")]
    assert [r for r in library if r.level == 20 and r.message.startswith("epoch 1: train loss")], \
        [r.message for r in library]
    assert min(r.level for r in library) == 20 and len(library) < 200, len(library)
    assert_no_secret_in_run(state.state_details.flow_run_id, data)


def assert_no_secret_in_run(flow_run_id, data: Path) -> None:
    """The key and secret appear in no Prefect artifact, no flow-run log, no file the run wrote."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    texts = []
    for group in artifacts_of(flow_run_id).values():
        texts += [f"{a.key} {a.description} {a.data}" for a in group]
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        texts += [rec.message for rec in logs]
        texts.append(str(client.read_flow_run(flow_run_id).state))
    assert len(logs) > 5 and len(texts) > 10  # the grep below looked at something
    files = [p for p in data.rglob("*") if p.is_file()]
    assert len(files) > 50
    for needle in (FLOW_KEY, FLOW_SECRET):
        assert not [t for t in texts if needle in t], f"{needle} in Prefect artifacts or logs"
        assert not [p for p in files if needle.encode() in p.read_bytes()], f"{needle} in a file under {data}"


def test_failed_stage_keeps_published_versions_and_rerun_resumes(harness, project):
    data = project.parent / "data"
    if not (data / "models" / "LATEST").exists():         # run alone: make a first good run
        assert collect_and_train(config_path=str(project), return_state=True).is_completed()
    before = published(data)
    files_before = downloaded_files(project)

    # More images for every class, and a mining pool whose query the API refuses outright (code 3,
    # as Flickr answers a search with no usable words): collect downloads the new class images, then
    # fails on the pool. That is not a transient fault, so it is not retried.
    bigger = {"classes": {"balloon": {"count": 26}, "kite": {"count": 26}}}
    broken = {**bigger, "mine": {"pool": {"queries": ["???"], "count": 30}}}
    state = collect_and_train(config_path=str(project), overrides=broken, return_state=True)
    assert state.is_failed()
    assert "stage 'collect' failed" in state.message and "Parameterless" in state.message, state.message
    assert "latest dataset v2" in state.message
    files_after_failure = downloaded_files(project)
    assert files_after_failure > files_before            # it got halfway
    assert published(data) == before                      # nothing published, nothing touched
    arts = artifacts_of(state.state_details.flow_run_id)
    assert "Failed" in arts[SUMMARY_KEY][0].data and "stage 'collect' failed" in arts[SUMMARY_KEY][0].data
    [progress] = arts[PROGRESS_KEY]          # not left reading as a collect in flight (nightly25 audit)
    assert re.fullmatch(r"collect failed at \d+ of ~\d+ downloads \(run Failed\)", progress.description), \
        progress.description

    # The rerun (the pool fixed; no mining round, to keep the test short) only downloads what is missing.
    fixed = {**bigger, "mine": {"rounds": 0, "pool": {"count": 30}}}
    state = collect_and_train(config_path=str(project), overrides=fixed, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    files_now = downloaded_files(project)
    needed_since_good_run = files_now - files_before
    assert result["collect"]["downloaded"] == files_now - files_after_failure
    assert result["collect"]["downloaded"] < needed_since_good_run      # resumed, not started over
    assert result["curate"]["inspected"] <= files_now - files_before     # verification cached per content
    assert result["curate"]["reused"] > 0
    after = published(data)
    assert after["LATEST"].strip() == "v3"
    # Round 0 trained on v3; it replaces the shipped model only if it does as well on v3 (the assess
    # task scores the shipped one there: shipping.incumbent_model); these 3-epoch models often do not.
    assert list((data / "models").glob("default-v3-r0-*"))
    assert after["model"] != before["model"] or result["not_shipped"].startswith("round 0's model"), result
    assert {k: after["versions"][k] for k in before["versions"]} == before["versions"]   # old versions intact


def test_a_data_root_that_cannot_be_made_fails_naming_it_and_leaves_its_summary(harness, project, tmp_path):
    """The nightly audit: a data root under a regular file crashed the failure handler itself
    (NotADirectoryError looking up the latest model), so the run ended in tracebacks with no summary
    artifact; and a data root that cannot be written was blamed on the "config" stage."""
    (tmp_path / "afile").write_text("not a folder")
    state = collect_and_train(config_path=str(project), overrides={"data_dir": str(tmp_path / "afile" / "data")},
                              return_state=True)
    assert state.is_failed()
    assert "stage 'data root' failed" in state.message and "afile" in state.message, state.message
    assert "latest dataset none, latest model none" in state.message
    assert "Fix that, then rerun" in state.message and "Rerun to resume" not in state.message   # verify20
    summary = artifacts_of(state.state_details.flow_run_id)[SUMMARY_KEY][0].data
    assert "stage 'data root' failed" in summary, summary


def test_rebuild_report_flow(harness, project):
    if not (project.parent / "data" / "datasets").exists():    # run alone: something to rebuild from
        assert collect_and_train(config_path=str(project), overrides={"mine": {"rounds": 0}},
                                 return_state=True).is_completed()
    state = rebuild_report(config_path=str(project), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result["builds"][0]["published"] is False          # nothing changed since the last build
    assert Path(result["report"]).is_file()
    assert "mlc-dataset-summary" in artifacts_of(state.state_details.flow_run_id)


def test_rebuild_report_flow_fetches_and_publishes_an_object_store_root(harness, project, tmp_path):
    """On an object-store data root the flow fetches into an empty cache and publishes its report."""
    import shutil

    from mlc_pipeline import sync
    from mlc_pipeline.config import load_config
    from mlc_pipeline.objectstore import store_of

    if not (project.parent / "data" / "datasets").exists():    # run alone: something to rebuild from
        assert collect_and_train(config_path=str(project), overrides={"mine": {"rounds": 0}},
                                 return_state=True).is_completed()
    (tmp_path / "store").mkdir()
    shutil.copytree(project.parent / "data", tmp_path / "published")     # the flow's data root, published
    (tmp_path / "published" / "reports" / "latest-dataset.html").unlink(missing_ok=True)    # rebuild-report's
    on_store = {"data_dir": f"file://{tmp_path}/store", "storage_options": {"auto_mkdir": True}}
    publisher = load_config(project, {**on_store, "cache_dir": str(tmp_path / "published")})
    sync.publish(publisher)
    store = store_of(publisher)
    latest = sync.remote_versions(store, publisher)[-1]
    assert "reports/latest-dataset.html" not in store.listing("reports")
    state = rebuild_report(config_path=str(project), overrides={**on_store, "cache_dir": str(tmp_path / "cache")},
                           return_state=True)
    assert state.is_completed(), state.message
    build = state.result()["builds"][0]
    assert (build["version"], build["published"]) == (latest, False)     # the store's latest, fetched
    assert "reports/latest-dataset.html" in store.listing("reports")     # and the report published


def test_flow_waits_for_another_writer_on_its_data_root(harness, project):
    """A manual `mlc` command holding the data root: the flow starts no stage until it is done."""
    import logging
    import threading
    import time

    from helpers import holding, release
    from mlc_pipeline.catalog import Catalog
    from mlc_pipeline.config import load_config

    if not (project.parent / "data" / "datasets").exists():    # run alone: something to rebuild from
        assert collect_and_train(config_path=str(project), overrides={"mine": {"rounds": 0}},
                                 return_state=True).is_completed()
    holder = holding("data_root_lock", project.parent / "data", "mlc curate")
    waits = threading.Event()

    class Waits(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "in use by" in record.getMessage():
                waits.set()

    released: list[float] = []

    def let_go() -> None:        # once the flow says it waits: no timing assumption on a loaded machine
        waits.wait(300)
        time.sleep(1)
        released.append(release(holder))

    seen = Waits()
    logging.getLogger("mlc_pipeline.locking").addHandler(seen)
    releaser = threading.Thread(target=let_go)
    releaser.start()
    try:
        state = rebuild_report(config_path=str(project), return_state=True)
    finally:
        waits.set()
        releaser.join(timeout=60)
        logging.getLogger("mlc_pipeline.locking").removeHandler(seen)
    [released] = released
    assert state.is_completed(), state.message
    with Catalog(load_config(project).catalog_path) as catalog:
        curate_started = max(r["started_at"] for r in catalog.runs() if r["command"] == "curate")
    assert curate_started >= released          # the flow's first stage waited for the holder
    # One warning while it waits, saying how a flow run is stopped (no Ctrl-C for a worker's run), and
    # one INFO line once it has the lock (the nightly25 audit: two warnings, the second "(Ctrl-C to
    # stop)", and nothing when it went ahead).
    lines = [(r.level, r.message) for r in logs_of(state.state_details.flow_run_id)]
    waiting = [m for level, m in lines if "in use by" in m]
    assert len(waiting) == 1 and "(mlc curate, started" in waiting[0], lines
    assert waiting[0].endswith("waiting for it to finish (cancel the flow run to stop waiting)"), waiting
    assert not [m for _, m in lines if "Ctrl-C" in m], lines
    went = [(level, m) for level, m in lines if "free now" in m]
    assert len(went) == 1 and went[0][0] == 20 and "prefect flow rebuild-report" in went[0][1], lines
    assert re.search(r"goes ahead \(after waiting \d+ s\)$", went[0][1]), went


@pytest.mark.parametrize("config_path, overrides, says", [
    (None, {"train": {"epochz": 1}}, "train.epochz: unknown key"),
    (None, {"classes": {"kite": {"count": -5}}}, "classes.kite.count"),
    ("configs/nope.yaml", {}, "nope.yaml"),
    (None, {"classes": {"kyte": {"count": 5}}}, "has no class 'kyte' (its classes: balloon, kite)"),
    # the nightly25 audit: these two failed as "stage 'data root' failed", sending users to the data root
    (None, {"train": {"arch": "resnet999"}}, "arch 'resnet999' is neither one of"),
    (None, {"train": {"pretrained": "/nonexistent/w.pth"}}, "train.pretrained: pretrained weights file not found"),
])
def test_bad_config_fails_with_a_clear_message(harness, project, config_path, overrides, says):
    """A config that does not load: the message says so and what to do, and claims nothing about what
    is published (it never looked; a project with published versions must not read "none")."""
    state = collect_and_train(config_path=config_path or str(project), overrides=overrides, return_state=True)
    assert state.is_failed()
    assert "stage 'config' failed" in state.message and says in state.message, state.message
    assert "The config did not load" in state.message and "fix the config" in state.message
    assert "latest dataset" not in state.message and "Rerun to resume" not in state.message
    summary = artifacts_of(state.state_details.flow_run_id)[SUMMARY_KEY][0].data
    assert "not looked up (the config did not load)" in summary and "latest dataset" not in summary, summary


def test_a_kept_shipped_model_is_recorded_as_round_0_and_the_new_one_apart():
    """A day-2 night whose new round 0 did not beat the shipped model: the run's record showed the new
    model as round 0 (how the summary shows it: tests/report/test_summary.py)."""
    from flows.collect_and_train import Run, TaskStages

    def model(bundle, version, f1):
        return {"round": 0, "bundle": bundle, "dataset_version": version,
                "metrics": {"test": {"macro_f1": f1, "unknown_accepted": 0.02, "probe_accepted": 0.03}}}

    run = Run("collect-and-train", "c.yaml", None)
    new, kept = model("default-v2-r0", "v2", 0.275), model("default-v1-r0", "v2", 0.540)
    run.data["models"].append(new)                  # as the train task records it
    assert TaskStages(run).reuse(None, kept) is kept   # shipped_or_new keeps the shipped model
    assert run.data["models"] == [kept] and run.data["round0_not_shipped"] is new


def test_an_api_url_where_nothing_listens_fails_at_once(harness, project, monkeypatch):
    """A source.rest_url where nothing listens (a config error: the message says "check
    source.rest_url") was retried by Prefect after 60 s and 300 s, holding the deployment's one slot
    for ~5 minutes (the prefect28 audit, D4). Now it fails on its first attempt; a transient fault that
    outlasted the library's retries is still retried (test_retry_only_what_can_go_away)."""
    import time

    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    monkeypatch.setenv("FLICKR_API_KEY", FLOW_KEY)
    monkeypatch.setenv("FLICKR_API_SECRET", FLOW_SECRET)
    wrong = {"source": {"kind": "flickr", "rest_url": f"http://127.0.0.1:{free_port()}/services/rest/"}}
    started = time.monotonic()
    state = collect_and_train(config_path=str(project), overrides=wrong, return_state=True)
    assert state.is_failed() and "stage 'collect' failed" in state.message, state.message
    assert "connection refused" in state.message and "check source.rest_url" in state.message, state.message
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    [collect] = [t for t in runs if t.task_key.startswith("collect")] or [t for t in runs if "collect" in t.name]
    assert collect.run_count == 1 and collect.state.is_failed(), (collect.run_count, collect.state)
    assert time.monotonic() - started < 55           # the first retry waits 60 s (±30 %)


def test_a_retried_collect_leaves_one_download_progress_closed(harness, project, monkeypatch):
    """Each attempt of a retried collect made a progress artifact of its own, and only the newest was
    closed: the others read "collect: downloading 0 missing images" for good, as if in flight (the
    prefect28 audit, D5). The bundled server answers the first call malformed every time: a transient
    fault that outlasts the library's retries, which Prefect retries (at once here)."""
    import flows.collect_and_train as module

    monkeypatch.setattr(module, "collect_stage", module.collect_stage.with_options(retry_delay_seconds=0))
    broken = {"source": {"local": {"faults": "malformed=1,fault_repeats=100"},
                         "retry": {"attempts": 2, "base_delay_s": 0.01, "max_delay_s": 0.02}}}
    state = collect_and_train(config_path=str(project), overrides=broken, return_state=True)
    assert state.is_failed() and "RetriesExhausted" in state.message, state.message
    logs = [r.message for r in logs_of(state.state_details.flow_run_id)]
    assert sum("Retry 2/2" in m for m in logs) == 1, logs           # three attempts were made
    [progress] = artifacts_of(state.state_details.flow_run_id)[PROGRESS_KEY]
    assert re.fullmatch(r"collect failed at 0 of ~\d+ downloads \(run Failed\)", progress.description), \
        progress.description
