"""flows/artifacts.py: the summary of a run that stopped (Crashed, Cancelled) says what it published
before it stopped, and ends its download progress. In-process under `prefect_test_harness`."""

from __future__ import annotations

import json

from helpers import artifacts_of, free_port, tiny_config
from prefect import flow as flow_decorator
from prefect.client.orchestration import get_client

from flows.artifacts import SUMMARY_KEY
from flows.progress import PROGRESS_KEY


def _publish_version(cfg, version: str, at: float) -> None:
    """A dataset version folder as build leaves it, as far as the stopped summary reads it."""
    folder = cfg.layout.datasets / version
    folder.mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({"version": version, "created_at": at}))
    (cfg.layout.datasets / "LATEST").write_text(version + "\n")


def _publish_bundle(cfg, name: str, at: float, latest: bool) -> None:
    from datetime import datetime, timezone

    folder = cfg.layout.models / name
    folder.mkdir(parents=True)
    made = datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="seconds")
    (folder / "bundle.json").write_text(json.dumps({"dataset_version": "v1", "created_at": made}))
    if latest:
        (cfg.layout.models / "LATEST").write_text(name + "\n")


def test_a_crashed_run_summary_names_what_it_published_before_it_stopped(harness, tmp_path):
    """Each stage publishes whole, so a run killed in `train` leaves the version its build published
    and a run killed in `mine` leaves round 0's model as models/LATEST: the Crashed summary says so,
    and says "nothing" only when the data root shows nothing new since the run started."""
    import time

    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed, Running

    from flows.artifacts import write_stopped_summary
    from mlc_pipeline.config import load_config

    config_path = tiny_config(tmp_path, free_port())
    cfg = load_config(config_path)
    long_ago = time.time() - 3600
    _publish_version(cfg, "v1", long_ago)
    _publish_bundle(cfg, "default-v1-r0-old", long_ago, latest=True)

    @flow_decorator(name="collect-and-train")
    def stand_in(config_path: str):
        return config_path

    def crashed_summary(stages_done=lambda started: None) -> str:
        """A run that starts, finishes `stages_done`, and is killed; its summary as the hook writes it."""
        with get_client(sync_client=True) as client:
            run = client.create_flow_run(stand_in, parameters={"config_path": str(config_path)})
            client.set_flow_run_state(run.id, Running())
            run = client.read_flow_run(run.id)
            assert run.start_time is not None and run.state.type == StateType.RUNNING
            stages_done(run.start_time.timestamp())
            write_stopped_summary(client, "collect-and-train", run,
                                  Crashed(message="Process exited with status code: -9."))
        return artifacts_of(run.id)[SUMMARY_KEY][0].data

    text = crashed_summary()        # nothing published since it started: then, and only then, "nothing"
    assert "published no dataset version and trained no model before it stopped" in text, text
    assert "latest dataset version: **v1**" in text and "latest model: **default-v1-r0-old**" in text

    def build_and_round0(started: float) -> None:
        _publish_version(cfg, "v2", started + 2)
        _publish_bundle(cfg, "default-v2-r0-new", started + 3, latest=True)

    text = crashed_summary(build_and_round0)
    assert "publishes nothing" not in text and "as it was" not in text, text
    assert ("since it started, dataset version v2 (the latest now); model default-v2-r0-new (models/LATEST now)"
            in text), text
    assert "v1" not in text.split("since it started")[1].split("\n")[0]
    assert "latest dataset version: **v2**" in text and "latest model: **default-v2-r0-new**" in text

    with get_client(sync_client=True) as client:    # marked Crashed while Pending (crash-orphans): it never ran
        run = client.create_flow_run(stand_in, parameters={"config_path": str(config_path)})
        write_stopped_summary(client, "collect-and-train", client.read_flow_run(run.id), Crashed(message="orphan"))
    assert "never started running, so it published nothing" in artifacts_of(run.id)[SUMMARY_KEY][0].data


def test_a_cancelled_run_is_said_cancelled_and_its_download_progress_ended(harness, tmp_path):
    """The nightly25 audit: the on_cancellation hook sees the state Cancelling, and the summary's
    description said "(Cancelling)" on the Artifacts page; the download progress of a run cancelled
    mid-collect stayed at "collect: 102 downloads of ~390 missing images", as if still in flight."""
    from prefect.client.schemas.actions import ArtifactCreate
    from prefect.states import Cancelling, Running

    from flows.artifacts import write_stopped_summary

    config_path = tiny_config(tmp_path, free_port())

    @flow_decorator(name="collect-and-train")
    def stand_in(config_path: str):
        return config_path

    def cancelled(progress: tuple[float, str] | None) -> dict[str, list]:
        with get_client(sync_client=True) as client:
            run = client.create_flow_run(stand_in, parameters={"config_path": str(config_path)})
            client.set_flow_run_state(run.id, Running())
            if progress:
                client.create_artifact(ArtifactCreate(key=PROGRESS_KEY, type="progress", data=progress[0],
                                                      description=progress[1], flow_run_id=run.id))
            write_stopped_summary(client, "collect-and-train", client.read_flow_run(run.id),
                                  Cancelling(message="cancelled by a user"))
        return artifacts_of(run.id)

    arts = cancelled((26.2, "collect: 102 downloads of ~390 missing images"))
    [summary] = arts[SUMMARY_KEY]
    assert summary.description == "collect-and-train summary (Cancelled)", summary.description
    assert "collect-and-train: Cancelled" in summary.data
    [progress] = arts[PROGRESS_KEY]
    assert progress.description == "collect cancelled at 102 of ~390 downloads (run Cancelled)", progress.description
    assert float(progress.data) == 26.2
    arts = cancelled((0.0, "collect: downloading 2 missing images"))      # cancelled before a download ended
    assert arts[PROGRESS_KEY][0].description == "collect cancelled at 0 of ~2 downloads (run Cancelled)"
    arts = cancelled((100.0, "collect: done, 12 images downloaded in this run"))   # cancelled in train: as it was
    assert arts[PROGRESS_KEY][0].description == "collect: done, 12 images downloaded in this run"
    assert PROGRESS_KEY not in cancelled(None)                           # no collect, nothing made up
