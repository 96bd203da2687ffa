"""flows/runtime.library_logs_in_run: the library's lines, its download threads' among them, reach the
flow run's logs (the right run's, with two in one process), secrets masked. In-process under
`prefect_test_harness`."""

from __future__ import annotations

from helpers import free_port, logs_of
from prefect import flow as flow_decorator


def test_the_librarys_info_lines_reach_the_run_logs_with_secrets_masked(harness):
    """The library's INFO lines in the flow run's logs (not only its warnings), through the project's
    redaction like any record; its DEBUG lines stay out; outside the run the logger is as it was."""
    import logging

    from prefect.context import get_run_context

    from flows.runtime import library_logs_in_run
    from mlc_pipeline.secrets import remember

    secret = "libsecret-7f3a9c2e41"
    remember(secret)
    lib = logging.getLogger("mlc_pipeline.collect.stage")

    @flow_decorator(name="library-logs")
    def logs_a_line():
        with library_logs_in_run():
            lib.info("resuming with key %s", secret)
            lib.debug("GET /static/1.jpg (a per-request line)")
        return get_run_context().flow_run.id

    level = logging.getLogger("mlc_pipeline").level
    run_id = logs_a_line()
    assert logging.getLogger("mlc_pipeline").level == level
    records = [r for r in logs_of(run_id) if r.name.startswith("mlc_pipeline")]
    assert [(r.level, r.message) for r in records] == [(20, "resuming with key ***")], records


def test_an_image_host_that_stops_answering_is_said_in_the_run_logs(harness, tmp_path):
    """The download threads have no Prefect run context: Prefect's API handler dropped their records
    ("attempted to send logs to the API without a flow run id"), so the warning that an image host
    stopped answering, which docs/orchestration.md promises in the run's logs, was only on the worker's
    stdout (the prefect28 audit, D3). Real downloads from the bundled server, killed mid-batch."""
    import subprocess

    from helpers import ENV, MLC
    from prefect.context import get_run_context

    from flows.runtime import library_logs_in_run
    from mlc_pipeline.collect.download import Downloader, DownloadJob
    from mlc_pipeline.collect.hosts import HOST_FAULT_AFTER
    from mlc_pipeline.config import RetrySettings, SourceSettings
    from mlc_pipeline.flickr_server import WorldSpec, build_world
    from mlc_pipeline.flickr_server.rest import image_url

    port = free_port()
    server = subprocess.Popen([*MLC, "serve-flickr", "--port", str(port), "--scale", "0.1",
                               "--faults", "image_latency_ms=20"], stdout=subprocess.PIPE, text=True, env=ENV)
    host = f"127.0.0.1:{port}"

    @flow_decorator(name="host-stops-answering")
    def downloads():
        photos = build_world(WorldSpec(seed=0, scale=0.1)).photos[:80]       # the server's world
        jobs = [DownloadJob(i, str(p.id), image_url(host, p, "n")) for i, p in enumerate(photos)]
        settings = SourceSettings(kind="local", per_host_concurrency=2,
                                  retry=RetrySettings(attempts=2, base_delay_s=0.01, max_delay_s=0.05))
        downloader = Downloader(settings, [host], tmp_path / "raw")
        ok = []

        def record(res) -> None:
            ok.append(res.ok)
            if sum(ok) == 10:
                server.kill()                   # the image host dies mid-collect
        with library_logs_in_run():
            downloader.run_into(jobs, record)
        downloader.close()
        return get_run_context().flow_run.id, sum(ok)

    try:
        while "Static images:" not in (line := server.stdout.readline()):
            assert line, "serve-flickr exited"
        run_id, ok = downloads()
    finally:
        server.kill()
        server.wait(timeout=30)
    assert ok >= 10
    said = [r.message for r in logs_of(run_id) if r.name == "mlc_pipeline.collect.hosts" and r.level == 30]
    assert any(m.startswith(f"image host {host} failed {HOST_FAULT_AFTER} different photos in a row")
               for m in said), said


def test_two_runs_in_one_process_each_get_their_own_library_threads_lines(harness, tmp_path):
    """Two flow runs in one process (two flows called from two threads): a line logged by a download
    worker of one run went to whichever run's OfThisRun filter came first on the shared API handler
    (the review of 2026-12-07). The library's threads run in their starter's context now, so each
    line goes to the run that started the download. Real downloads, from two ports nothing listens on:
    each run's worker says its own host is taken as down."""
    import logging
    import threading

    from prefect.context import get_run_context

    from flows.runtime import library_logs_in_run
    from mlc_pipeline.collect.download import Downloader, DownloadJob
    from mlc_pipeline.collect.hosts import HOST_DOWN_AFTER
    from mlc_pipeline.config import RetrySettings, SourceSettings

    both_in, both_done = threading.Barrier(2, timeout=120), threading.Barrier(2, timeout=120)
    hosts = {"a": f"127.0.0.1:{free_port()}", "b": f"127.0.0.1:{free_port()}"}
    ran: dict = {}

    @flow_decorator(name="downloads-beside-another")
    def downloads(which: str):
        host = hosts[which]
        jobs = [DownloadJob(i, str(1000 + i), f"http://{host}/{i}.jpg") for i in range(HOST_DOWN_AFTER + 10)]
        settings = SourceSettings(kind="local", per_host_concurrency=2,
                                  retry=RetrySettings(attempts=1, base_delay_s=0.01, max_delay_s=0.02))
        downloader = Downloader(settings, [host], tmp_path / which / "raw")
        with library_logs_in_run():
            both_in.wait()                  # both runs' lines go to the API from here on
            downloader.run_into(jobs, lambda res: None)
            plain = threading.Thread(target=logging.getLogger("mlc_pipeline.test").warning,
                                     args=(f"a line of run {which} from a thread without its context",))
            plain.start()                   # whose it is cannot be told: in neither run, not the other's
            plain.join()
            both_done.wait()
        downloader.close()
        return get_run_context().flow_run.id

    threads = [threading.Thread(target=lambda w=w: ran.update({w: downloads(w)})) for w in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert set(ran) == {"a", "b"}, ran
    for which, other in (("a", "b"), ("b", "a")):
        said = [r.message for r in logs_of(ran[which]) if r.name == "mlc_pipeline.collect.hosts"]
        assert any(m.startswith(f"image host {hosts[which]} answered none of") for m in said), (which, said)
        assert not any(hosts[other] in m for m in said), (which, said)
        assert not any("without its context" in r.message for r in logs_of(ran[which])), which


def test_a_line_from_a_thread_without_a_run_context_goes_to_the_one_run_of_the_process(harness):
    """OfThisRun: a library thread started without its starter's context (not through
    collect/connections.start_thread) has its line credited to the flow run while it is the only run
    of the process in library_logs_in_run."""
    import logging
    import threading

    from prefect.context import get_run_context

    from flows.runtime import library_logs_in_run

    @flow_decorator(name="alone-in-its-process")
    def alone():
        with library_logs_in_run():
            plain = threading.Thread(target=logging.getLogger("mlc_pipeline.test").warning,
                                     args=("a line from a thread without a run context",))
            plain.start()
            plain.join()
        return get_run_context().flow_run.id

    said = [r.message for r in logs_of(alone())]
    assert "a line from a thread without a run context" in said, said
