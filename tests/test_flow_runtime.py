"""flows/runtime.py: the task runner setting, which errors are retried, and how a stopping run lets its
submitted tasks and the data root's lock go (thread pool and Dask). The run-log wiring is in
test_flow_logs.py, the Flickr slot in test_flow_flickr.py."""

from __future__ import annotations

from pathlib import Path

from helpers import logs_of
from prefect import flow as flow_decorator
from prefect.client.orchestration import get_client

from flows.runtime import is_retryable, task_runner


def test_task_runner_is_a_setting(monkeypatch):
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    monkeypatch.delenv("MLC_DASK_ADDRESS", raising=False)
    assert isinstance(task_runner(), ThreadPoolTaskRunner)
    monkeypatch.setenv("MLC_DASK_ADDRESS", "tcp://127.0.0.1:8786")
    runner = task_runner()
    assert isinstance(runner, DaskTaskRunner) and runner.address == "tcp://127.0.0.1:8786"


def test_retry_only_what_can_go_away():
    from mlc_pipeline.config import ConfigError
    from mlc_pipeline.collect.flickr import InvalidKeyError, RetriesExhausted, SourceError

    assert is_retryable(RetriesExhausted("flickr.photos.search still failing after 6 attempts: HTTP 500"))
    assert is_retryable(ConnectionError("reset"))
    assert not is_retryable(SourceError("Flickr API error: Parameterless searches have been disabled"))
    assert not is_retryable(InvalidKeyError("Flickr rejected the API key"))
    assert not is_retryable(ConfigError("config: classes: required key is missing"))
    from mlc_pipeline.collect.hosts import HostNotAllowed, ImageHostDown
    assert is_retryable(ImageHostDown("the image host ... answered none of 20 connections"))   # may come back
    assert not is_retryable(HostNotAllowed("... source.allowed_hosts does not list ..."))       # the config's
    from mlc_pipeline.catalog import CatalogBusy, CatalogError, CatalogLost
    assert is_retryable(CatalogBusy("... rolled this transaction back (deadlock detected) ..."))  # the other is done later
    assert is_retryable(CatalogLost("... lost the connection to the catalog (...); ... rerun ..."))
    assert not is_retryable(CatalogError("catalog ... cannot connect (...)"))
    refused = RetriesExhausted("flickr.photos.licenses.getInfo still failing after 6 attempts: ConnectionError "
                               "... connection refused (nothing listens there: check source.rest_url, ...)")
    assert is_retryable(refused)            # a server that answered earlier in the run: it may come back
    refused.unreachable = True              # one that never answered: source.rest_url's (the prefect28 audit)
    assert not is_retryable(refused)


def test_a_stopping_run_keeps_the_lock_while_a_submitted_task_still_runs(tmp_path, monkeypatch):
    """runtime.let_go: a task still running after the wait keeps the data root's lock until the process
    ends. The first version dropped the popped stack, and collecting it released the lock at once (the
    review of 2026-12-07); a task that ended lets it go."""
    import gc
    import logging
    import threading
    from concurrent.futures import ThreadPoolExecutor
    from contextlib import ExitStack
    from types import SimpleNamespace
    from flows import runtime
    from mlc_pipeline.locking import data_root_lock, lock_is_held
    monkeypatch.setattr(runtime, "TASK_END_WAIT_S", 0.5)
    release, pool = threading.Event(), ThreadPoolExecutor(2)
    try:
        for ends in (False, True):
            root = tmp_path / f"data-{ends}"
            held = ExitStack()
            held.enter_context(data_root_lock(root, "collect-and-train"))
            running = SimpleNamespace(wrapped_future=pool.submit(release.wait if not ends else lambda: None))
            runtime.let_go(held, [(None, running)], logging.getLogger("test"))
            gc.collect()
            assert lock_is_held(root) is not ends, ends
        release.set()
    finally:
        release.set()
        pool.shutdown()
        while runtime.HELD_UNTIL_EXIT:
            runtime.HELD_UNTIL_EXIT.pop().close()


def test_a_task_cancelled_before_it_started_is_recorded_cancelled(harness, monkeypatch):
    """runtime.let_go cancels a submitted task not started yet (an alternative queued behind another on
    the one-thread runner, when the run stops). Prefect's engine never ran for it, so the server had no
    task run of it at all: nothing in the UI said it was never trained (the review of 2026-12-07). Now
    it is recorded Cancelled under its future's id, saying why; the one that ran keeps its own state."""
    import threading

    from prefect import task
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId
    from prefect.context import get_run_context
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows import runtime
    from flows.collect_and_train import Run, TaskStages

    monkeypatch.setattr(runtime, "TASK_END_WAIT_S", 0.5)
    go_on = threading.Event()

    @task(name="holds-the-thread")
    def holds() -> None:
        go_on.wait(60)

    @task(name="queued-behind")
    def queued() -> None:
        pass

    @flow_decorator(task_runner=ThreadPoolTaskRunner(max_workers=1))
    def stopping():
        run = Run("stopping", "no-config.yaml", None)
        stages = TaskStages(run)
        running, waiting = stages.submit(holds), stages.submit(queued)
        run.data["status"], run.stage = "Failed", "alternatives"       # as Run.fail leaves it
        run.release()
        go_on.set()
        running.wait()
        return get_run_context().flow_run.id, running.task_run_id, waiting.task_run_id

    run_id, ran, not_started = stopping()
    with get_client(sync_client=True) as client:
        found = {t.id: t for t in client.read_task_runs(task_run_filter=TaskRunFilter(
            id=TaskRunFilterId(any_=[ran, not_started])))}
    assert not_started in found, "the task cancelled before it started has no task run on the server"
    assert found[ran].state.is_completed(), found[ran].state
    dropped = found[not_started]
    assert dropped.state.is_cancelled(), dropped.state
    assert dropped.state.message == "not started: stage 'alternatives' failed", dropped.state.message
    assert dropped.name.startswith("queued-behind-"), dropped.name
    said = [r.message for r in logs_of(run_id) if r.level == 30]
    assert f"1 task(s) of this run cancelled before they started (stage 'alternatives' failed): {dropped.name}" \
        in said, said


def test_a_stopping_run_on_dask_waits_for_its_task_and_never_cancels_it(harness, tmp_path, monkeypatch):
    """runtime.let_go on a Dask cluster (a real in-process LocalCluster, one worker): a submitted stage
    still running is waited for, never cancelled. Cancelled, a Dask future reads done at once while its
    worker goes on writing the data root, so the lock went at once (the review of 2026-12-07, bug 2)."""
    import time

    import distributed
    from prefect import task
    from prefect_dask import DaskTaskRunner

    from flows import runtime
    from flows.collect_and_train import Run, TaskStages
    from mlc_pipeline.locking import data_root_lock, lock_is_held

    monkeypatch.setattr(runtime, "TASK_END_WAIT_S", 60.0)
    root = tmp_path / "data"
    started = tmp_path / "started"

    @task(name="writes-after-a-while")
    def writes(root: str, started: str) -> bool:
        Path(started).touch()
        time.sleep(2.0)
        held = lock_is_held(Path(root))           # the run still holds it while this writes
        (Path(root) / "written").write_text("the stage's output")
        return held

    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        @flow_decorator(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
        def stopping():
            run = Run("stopping", "no-config.yaml", None)
            run.held.enter_context(data_root_lock(root, "prefect flow stopping"))
            future = TaskStages(run).submit(writes, str(root), str(started))
            while not started.exists():             # running on the worker, not queued
                time.sleep(0.05)
            run.release()
            status, written, still_held = future.wrapped_future.status, (root / "written").exists(), lock_is_held(root)
            return status, written, still_held, future.result() if status == "finished" else None

        status, written, still_held, held_while_writing = stopping()
    assert status == "finished", status
    assert written, "the lock was let go before the stage on the worker ended"
    assert held_while_writing is True and still_held is False
