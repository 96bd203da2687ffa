"""flows/progress.py: the download progress artifact, throttled, and forgotten when its collect task run
ends. In-process under `prefect_test_harness`."""

from __future__ import annotations

from helpers import artifacts_of, free_port, logs_of, tiny_config
from prefect import flow as flow_decorator
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterId

from flows.progress import PROGRESS_KEY, DownloadProgress


def test_progress_is_throttled(harness):
    from prefect import flow

    clock = iter(x * 0.5 for x in range(10_000))

    @flow
    def fake_collect() -> DownloadProgress:
        p = DownloadProgress(40, min_interval_s=2.0, clock=lambda: next(clock), key="test-progress")
        for i in range(1, 41):                    # one batch of 40 downloads, 0.5 s apart
            p(i, 40)
        p.finish(40)
        return p

    p = fake_collect()
    assert 5 <= p.updates <= 12                   # ~every 4th call, plus the final 100%
    with get_client(sync_client=True) as client:
        [art] = client.read_artifacts(artifact_filter=ArtifactFilter(id=ArtifactFilterId(any_=[p.artifact_id])))
    assert art.type == "progress" and float(art.data) == 100.0


def test_the_download_progress_of_an_ended_collect_task_run_is_forgotten(harness, tmp_path):
    """DownloadProgress.of_task_run (a retried collect's next attempt goes on in its artifact) kept
    every collect task run's entry for the life of the process: a long-lived worker serving run after
    run only grew (the review of 2026-12-07). The entry goes when the task run ends, failed after its
    retries or completed; the retries still go on in one artifact."""
    from prefect.states import State

    import flows.collect_and_train as module
    from mlc_pipeline.config import load_config

    project = tiny_config(tmp_path, free_port())
    collect = module.collect_stage.with_options(retry_delay_seconds=0)
    broken = {"source": {"local": {"faults": "malformed=1,fault_repeats=100"},
                         "retry": {"attempts": 2, "base_delay_s": 0.01, "max_delay_s": 0.02}}}

    @flow_decorator(name="collects")
    def collects() -> tuple[State, State]:
        return (collect(load_config(project, broken), return_state=True),
                collect(load_config(project), return_state=True))

    failed, completed = collects()
    assert failed.is_failed() and completed.is_completed(), (failed, completed)
    ended = {failed.state_details.task_run_id, completed.state_details.task_run_id}
    assert not ended & set(DownloadProgress.of_task_run), DownloadProgress.of_task_run
    for state in (failed, completed):
        logs = [r.message for r in logs_of(state.state_details.flow_run_id)
                if r.task_run_id == state.state_details.task_run_id]
        assert sum(m.startswith("collect: ") and "images missing from the catalog" in m for m in logs) \
            == (3 if state is failed else 1), logs
    progress = artifacts_of(failed.state_details.flow_run_id)[PROGRESS_KEY]
    assert len([a for a in progress if a.task_run_id == failed.state_details.task_run_id]) == 1, progress
