"""The executor seam (mlc_pipeline/executor.py) on a real `distributed.LocalCluster` of two worker
processes on loopback: chunk order, a worker dying under a chunk, the per-host download bound held
across workers, and a collect + curate + build that gives the same catalog and manifest as the
single-process path."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
import cloudpickle  # noqa: E402  (comes with distributed)
import dask  # noqa: E402

from helpers import needs_namespaces, write_config  # noqa: E402
from mlc_pipeline.config import load_config  # noqa: E402
from mlc_pipeline.executor import ADDRESS_ENV, cluster_address, map_chunks  # noqa: E402

# The chunk functions below live in this test module, which workers cannot import: ship them by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def cluster():
    # allowed-failures 0: a chunk whose worker dies is reported at once (KilledWorker), not retried.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            distributed.LocalCluster(n_workers=2, threads_per_worker=2, processes=True, host="127.0.0.1",
                                     dashboard_address=None) as lc:
        yield lc.scheduler_address


def tag_with_pid(items: list[int]) -> list[tuple[int, int]]:
    return [(i, os.getpid()) for i in items]


def die_on_13(items: list[int]) -> list[int]:
    if 13 in items:
        os._exit(1)          # a worker process killed outright, as a decoder segfault would
    return [i * 2 for i in items]


def test_local_runs_the_local_function_once_on_everything():
    calls = []
    out = map_chunks(lambda xs: [x + 1 for x in xs], [1, 2, 3], 1,
                     local=lambda xs: calls.append(list(xs)) or [x * 10 for x in xs])
    assert out == [10, 20, 30] and calls == [[1, 2, 3]]
    with pytest.raises(RuntimeError, match="2 results for 3 items"):
        map_chunks(lambda xs: xs[:2], [1, 2, 3], 2)


def test_address_comes_from_the_environment_first(tmp_path, monkeypatch):
    cfg = load_config(write_config(tmp_path))
    monkeypatch.delenv(ADDRESS_ENV, raising=False)
    assert cluster_address(cfg) is None
    cfg.cluster.address = "tcp://10.0.0.1:8786"
    assert cluster_address(cfg) == "tcp://10.0.0.1:8786"
    monkeypatch.setenv(ADDRESS_ENV, "tcp://127.0.0.1:1")
    assert cluster_address(cfg) == "tcp://127.0.0.1:1"


def test_a_probe_file_left_by_a_killed_process_is_removed_by_the_next_one(tmp_path):
    """The scale26 audit (finding 8): kill -9 of a collect on a cluster left `.mlc.cluster-probe.<host>-<pid>-*`
    in the data root for good (the docs: "removed at exit"). The next process that probes that data root
    removes a dead process's probe of this host; a live process's, or another host's (the data root is
    a shared filesystem: its process cannot be checked from here), is kept."""
    import socket
    import subprocess
    import textwrap
    from mlc_pipeline.executor import PROBE_PREFIX, probe_for
    data = tmp_path / "data"
    writes_a_probe = textwrap.dedent(f"""
        import sys, time
        from mlc_pipeline.executor import probe_for
        print(probe_for("tcp://127.0.0.1:1", {str(data)!r})[0], flush=True)
        time.sleep(600)
    """)
    killed = subprocess.Popen([sys.executable, "-c", writes_a_probe], stdout=subprocess.PIPE, text=True)
    live = subprocess.Popen([sys.executable, "-c", writes_a_probe], stdout=subprocess.PIPE, text=True)
    try:
        left, kept = Path(killed.stdout.readline().strip()), Path(live.stdout.readline().strip())
        assert left.is_file() and kept.is_file()
        killed.kill()                   # kill -9: no atexit
        killed.wait(timeout=30)
        assert left.is_file()
        elsewhere = data / f"{PROBE_PREFIX}not-{socket.gethostname()}-{killed.pid}-0123abcd"
        elsewhere.write_text("another machine's")
        mine, _ = probe_for("tcp://127.0.0.1:2", str(data))
        assert not left.exists() and kept.is_file() and elsewhere.is_file() and Path(mine).is_file()
    finally:
        live.kill()
        live.wait(timeout=30)


def test_chunks_run_on_both_workers_and_come_back_in_order(cluster):
    seen = []
    out = map_chunks(tag_with_pid, list(range(40)), 3, address=cluster, on_chunk=lambda xs, rs: seen.append(xs))
    assert [i for i, _ in out] == list(range(40))
    assert len({pid for _, pid in out}) == 2 and os.getpid() not in {pid for _, pid in out}
    assert sorted(x for xs in seen for x in xs) == list(range(40)) and len(seen) == 14


def stage_on_a_worker(address: str, items: list[int]) -> list[tuple[int, int]]:
    """What a flow's stage task does on a Dask worker: map its own chunks over the same cluster."""
    return map_chunks(tag_with_pid, items, 2, address=address)


def test_a_stage_running_on_a_worker_maps_its_chunks_without_deadlock(cluster):
    # Four "stage tasks" hold all four worker threads (2 workers x 2 threads); their chunks can only
    # run because a waiting stage secedes from its worker's thread pool.
    with distributed.Client(cluster, set_as_default=False) as client:
        stages = [client.submit(stage_on_a_worker, cluster, list(range(k, k + 8)), pure=False) for k in range(4)]
        results = [f.result(timeout=120) for f in stages]
    assert [[i for i, _ in r] for r in results] == [list(range(k, k + 8)) for k in range(4)]


def test_a_chunk_whose_worker_dies_is_computed_here_or_reported(cluster):
    lost = []
    out = map_chunks(die_on_13, list(range(20)), 5, address=cluster,
                     on_lost=lambda xs: lost.append(list(xs)) or [-1 if x == 13 else x * 2 for x in xs])
    # Chunks that ran beside the culprit on the dying worker are lost with it (retried elsewhere by
    # the scheduler's allowed-failures, here 0): computed here too, with the same results.
    assert [10, 11, 12, 13, 14] in lost
    assert out == [-1 if i == 13 else i * 2 for i in range(20)]
    with pytest.raises(distributed.KilledWorker):
        map_chunks(die_on_13, list(range(20)), 5, address=cluster)


def test_per_host_bound_holds_across_workers(cluster, tmp_path):
    from mlc_pipeline.collect.cluster import download_chunk
    from mlc_pipeline.collect.download import DownloadJob
    from mlc_pipeline.config import SourceSettings
    from mlc_pipeline.flickr_server import FaultSpec, FlickrServer, WorldSpec
    from functools import partial

    # 2 workers x 2 threads, each chunk's downloader opening up to 3 connections: 12 at once
    # without a shared bound; the server counts what it really sees.
    settings = SourceSettings(per_host_concurrency=3)
    with FlickrServer(WorldSpec(seed=0, scale=0.1), FaultSpec(image_latency_ms=150)) as srv:
        photos = [p for p in srv.world.photos if "n" in p.sizes][:48]
        jobs = [DownloadJob(k, p.id, f"http://{srv.static_host}/static/{p.server}/{p.id}_{p.secret}_n.jpg")
                for k, p in enumerate(photos)]
        fn = partial(download_chunk, settings, [srv.static_host], str(tmp_path / "raw"))
        results = map_chunks(fn, jobs, 6, address=cluster)
        peak = srv.max_overlapping_images(0.05)     # a slot's handoff is not two requests (a CI run saw 4)
    assert [r.cid for r in results] == [j.cid for j in jobs] and all(r.ok for r in results)
    assert all(Path(r.path).is_file() for r in results)
    assert peak == 3


CATALOG_VOLATILE = {"run_id", "first_seen_at", "updated_at"}


def catalog_rows(cfg) -> list[dict]:
    """Every candidate, with paths relative to the data root and without times and run ids."""
    from mlc_pipeline.catalog import Catalog

    data_dir = cfg.data_dir
    with Catalog(cfg.catalog_path) as catalog:
        rows = catalog.candidates()
    for r in rows:
        for key in CATALOG_VOLATILE:
            r.pop(key)
        if r["file_path"]:
            r["file_path"] = str(Path(r["file_path"]).relative_to(data_dir))
    return rows


def collect_curate_build(cfg) -> Path:
    from mlc_pipeline.collect.stage import collect_in_rounds
    from mlc_pipeline.curate.stage import curate
    from mlc_pipeline.dataset.build import build_dataset

    collect_in_rounds(cfg, curate, progress=False)
    return Path(build_dataset(cfg).path)


@pytest.mark.slow    # ~30-55 s on 2 busy cores: two whole collect + curate + build runs
def test_collect_curate_build_on_two_workers_equals_single_process(cluster, tmp_path, monkeypatch):
    monkeypatch.delenv(ADDRESS_ENV, raising=False)
    single_yaml = write_config(tmp_path, faults="truncated=0.08,html=0.05,dup_exact=0.06,dup_near=0.06",
                               count=20, data="single")
    cluster_yaml = tmp_path / "cluster.yaml"     # the same server port: the recorded URLs are equal too
    cluster_yaml.write_text(single_yaml.read_text().replace(str(tmp_path / "single"), str(tmp_path / "cluster")))
    single = load_config(single_yaml)
    spread = load_config(cluster_yaml, {"cluster": {"address": cluster, "download_chunk": 16, "hash_chunk": 16}})

    single_version = collect_curate_build(single)
    cluster_version = collect_curate_build(spread)

    rows = catalog_rows(single)
    assert rows == catalog_rows(spread)
    statuses = {r["status"] for r in rows}
    assert {"accepted", "rejected", "duplicate", "failed"} <= statuses, statuses   # bad files, copies, html
    for name in ("manifest.csv", "SHA256SUMS"):
        assert (single_version / name).read_bytes() == (cluster_version / name).read_bytes()


@pytest.mark.slow    # the session's tiny model (shared), and torch loaded on 2 workers
def test_mining_scores_on_two_workers_equal_the_local_scores(cluster, trained_shapes_bundle, tmp_path, monkeypatch):
    from mlc_pipeline.manifest import read_manifest
    from mlc_pipeline.model.bundle import load_bundle
    from mlc_pipeline.model.mine import score_spread

    monkeypatch.delenv(ADDRESS_ENV, raising=False)
    manifest, bundle_dir = trained_shapes_bundle
    paths = [str(manifest.parent / r["path"]) for r in read_manifest(manifest)][:150]
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    paths.insert(70, str(tmp_path / "broken.jpg"))           # an error row travels back too
    cfg = load_config(write_config(tmp_path))
    bundle = load_bundle(bundle_dir)
    local_probs, local_errors = score_spread(cfg, bundle, bundle_dir, paths)
    cfg.cluster.address, cfg.cluster.score_chunk = cluster, 64     # 3 chunks over the 2 workers
    spread_probs, spread_errors = score_spread(cfg, bundle, bundle_dir, paths)
    assert list(local_errors) == list(spread_errors) == [70]
    assert spread_probs.shape == (151, len(bundle.vocab))
    assert np.array_equal(np.isnan(local_probs), np.isnan(spread_probs))
    assert np.allclose(local_probs, spread_probs, atol=1e-6, equal_nan=True)


def test_an_unreachable_scheduler_is_one_line_before_any_search(tmp_path, monkeypatch):
    """cluster.address where nothing listens: one line naming it, exit 2, before collect has searched
    or written anything (it was a 67-line traceback, after the searches had spent API calls)."""
    import subprocess
    from helpers import ENV, MLC, free_port
    monkeypatch.delenv(ADDRESS_ENV, raising=False)
    config = write_config(tmp_path, count=5)
    env = {**ENV, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"}
    env.pop(ADDRESS_ENV, None)
    for address in (f"tcp://127.0.0.1:{free_port()}", "tcp//127.0.0.1:8786"):
        res = subprocess.run([*MLC, "collect", "-c", str(config), "--no-progress", "--set", f"cluster.address={address}"],
                             env=env, capture_output=True, text=True, timeout=120)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1, res.stderr[-3000:]
        assert lines[0].startswith(f"mlc: cannot connect to the Dask scheduler at {address}: "), lines[0]
        assert not (tmp_path / "data" / "catalog.sqlite").exists()       # nothing searched, nothing recorded


@needs_namespaces
def test_a_worker_that_does_not_see_the_data_root_stops_the_stage_before_it_loses_files(tmp_path, monkeypatch):
    """A worker on "another machine" (its own mount namespace, a blank folder over the data root's
    parent): collect refuses in one line naming that worker, instead of downloading into a folder
    nobody reads and reporting the images as downloaded (an object-store root's cache is such a folder)."""
    import subprocess
    from helpers import ENV, MLC
    monkeypatch.delenv(ADDRESS_ENV, raising=False)
    config = write_config(tmp_path, count=5)
    hidden = tmp_path / "machine-b"
    hidden.mkdir()
    worker_cmd = (f"mount -t tmpfs tmpfs {tmp_path} && exec {sys.executable} -m distributed.cli.dask_worker "
                  "\"$0\" --nthreads 1 --no-dashboard --name blind")
    env = {k: v for k, v in ENV.items() if k != ADDRESS_ENV}
    with distributed.LocalCluster(n_workers=0, processes=True, host="127.0.0.1", dashboard_address=None) as lc, \
            distributed.Client(lc.scheduler_address) as client:
        blind = subprocess.Popen(["unshare", "-rm", "sh", "-c", worker_cmd, lc.scheduler_address], env=env,
                                 cwd=hidden.parent.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client.wait_for_workers(1, timeout=60)
            res = subprocess.run([*MLC, "collect", "-c", str(config), "--no-progress",
                                  "--set", f"cluster.address={lc.scheduler_address}"],
                                 env=env, capture_output=True, text=True, timeout=180)
        finally:
            blind.terminate()
            blind.wait(timeout=30)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr[-3000:]
    assert "cannot see the data root" in lines[0] and str(tmp_path / "data") in lines[0], lines[0]
    assert not (tmp_path / "data" / "catalog.sqlite").exists()
    assert not list((tmp_path / "data").glob(".mlc.cluster-probe.*"))          # the probe is cleaned up


@needs_namespaces
def test_a_worker_that_joins_after_the_check_is_held_to_it_by_each_chunk(tmp_path, monkeypatch):
    """An adaptive cluster has no worker when the stage checks: each chunk then checks its own worker,
    and a chunk on a worker that does not see the data root fails the stage with the same line."""
    import subprocess
    from helpers import ENV
    from mlc_pipeline.executor import ClusterUnusable, cluster_ready
    monkeypatch.delenv(ADDRESS_ENV, raising=False)
    cfg = load_config(write_config(tmp_path, count=5))
    (tmp_path / "machine-b").mkdir()
    worker_cmd = (f"mount -t tmpfs tmpfs {tmp_path} && exec {sys.executable} -m distributed.cli.dask_worker "
                  "\"$0\" --nthreads 1 --no-dashboard --name late-and-blind")
    with distributed.LocalCluster(n_workers=0, processes=True, host="127.0.0.1", dashboard_address=None) as lc, \
            distributed.Client(lc.scheduler_address) as client:
        cfg.cluster.address = lc.scheduler_address
        assert cluster_ready(cfg) == lc.scheduler_address          # no worker yet: nothing to check now
        env = {**ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), ENV.get("PYTHONPATH")]))}
        late = subprocess.Popen(["unshare", "-rm", "sh", "-c", worker_cmd, lc.scheduler_address], env=env,
                                cwd=tmp_path.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client.wait_for_workers(1, timeout=60)
            with pytest.raises(ClusterUnusable, match=r"cannot see the data root .*at that path"):
                map_chunks(tag_with_pid, list(range(4)), 2, address=lc.scheduler_address)
        finally:
            late.terminate()
            late.wait(timeout=30)


# --- the cluster going away mid-stage ------------------------------------------------------------

@contextmanager
def dask_processes(workers: int):
    """A scheduler and `workers` one-thread workers (no nanny: a killed one stays dead), each its own
    process as `dask scheduler` / `dask worker` run them, on loopback: yields (address, [scheduler,
    worker...] processes), each of which a test may kill -9."""
    import subprocess
    from helpers import ENV, free_port
    address = f"tcp://127.0.0.1:{free_port()}"
    run = [sys.executable, "-m"]
    cmds = [[*run, "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
             "--no-dashboard"]]
    cmds += [[*run, "distributed.cli.dask_worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard",
              "--host", "127.0.0.1"]] * workers
    # This module's chunk functions go by reference inside a partial: the processes import it from here.
    env = {**ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), ENV.get("PYTHONPATH")]))}
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for cmd in cmds]
    try:
        with distributed.Client(address, timeout="60s", set_as_default=False) as client:
            client.wait_for_workers(workers, timeout=60)
        yield address, procs
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=30)


def slow_double(items: list[int]) -> list[int]:
    import time
    time.sleep(0.5)
    return [i * 2 for i in items]


def last_run(cfg) -> dict:
    from mlc_pipeline.catalog import Catalog
    with Catalog(cfg.catalog_path, readonly=True) as catalog:
        return catalog.runs(1)[0]


def downloaded(cfg) -> int:
    """How many candidates the catalog records as downloaded (0 before the first image is on disk,
    when the catalog may not have its tables yet)."""
    from mlc_pipeline.catalog import Catalog
    if not list((cfg.data_dir / "raw").rglob("*.jpg")):
        return 0
    with Catalog(cfg.catalog_path, readonly=True) as catalog:
        return catalog.db.execute("SELECT COUNT(*) AS n FROM candidates WHERE status='downloaded'").fetchone()["n"]


def test_losing_the_scheduler_mid_stage_is_one_line_and_the_run_is_recorded_failed(tmp_path, monkeypatch):
    """The scheduler killed -9 while collect's downloads run on the cluster: one line naming it and
    saying to rerun (it was a traceback and `mlc: FutureCancelledError ...`), exit 1, the run recorded
    as failed, what was downloaded recorded and the rest still pending."""
    import signal
    import subprocess
    import time
    from helpers import ENV, MLC
    monkeypatch.delenv(ADDRESS_ENV, raising=False)
    config = write_config(tmp_path, faults="image_latency_ms=300", count=12, per_host_concurrency=2)
    with dask_processes(workers=1) as (address, (scheduler, _)):
        collect = subprocess.Popen([*MLC, "collect", "-c", str(config), "--no-progress", "--set",
                                    f"cluster.address={address}", "--set", "cluster.download_chunk=2"],
                                   env={k: v for k, v in ENV.items() if k != ADDRESS_ENV}, stderr=subprocess.PIPE,
                                   stdout=subprocess.DEVNULL, text=True)
        deadline = time.monotonic() + 90
        while not downloaded(load_config(config)) and time.monotonic() < deadline:
            time.sleep(0.1)      # a chunk's images are recorded: the stage is under way
        os.kill(scheduler.pid, signal.SIGKILL)
        _, err = collect.communicate(timeout=120)
    last = err.strip().splitlines()[-1]
    assert collect.returncode == 1 and "Traceback" not in err and "CancelledError" not in err, err[-3000:]
    assert last.startswith(f"mlc: lost the connection to the Dask scheduler at {address}"), last
    assert "what was recorded is kept" in last and last.endswith("rerun the same command to resume"), last
    cfg = load_config(config)
    assert last_run(cfg)["status"] == "failed"
    statuses = {r["status"] for r in catalog_rows(cfg)}
    assert {"downloaded", "pending"} <= statuses, statuses


def test_a_scheduler_without_workers_warns_then_fails_the_stage_after_the_bound(tmp_path, monkeypatch):
    """A scheduler with no worker at all: collect waited silently for ever. Now it warns every
    cluster.no_workers_warn_s and gives up after cluster.no_workers_timeout_s, in one line."""
    import subprocess
    from helpers import ENV, MLC
    monkeypatch.delenv(ADDRESS_ENV, raising=False)
    config = write_config(tmp_path, count=3)
    with distributed.LocalCluster(n_workers=0, processes=True, host="127.0.0.1", dashboard_address=None) as lc:
        address = lc.scheduler_address
        res = subprocess.run([*MLC, "collect", "-c", str(config), "--no-progress", "--set", f"cluster.address={address}",
                              "--set", "cluster.no_workers_warn_s=1", "--set", "cluster.no_workers_timeout_s=3"],
                             env={k: v for k, v in ENV.items() if k != ADDRESS_ENV}, capture_output=True, text=True,
                             timeout=90)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert sum("has no workers yet" in line for line in lines) == 1       # it was said once per check
    waiting = [line for line in lines if f"WARNING mlc_pipeline.executor: waiting for Dask workers at {address}" in line]
    assert len(waiting) >= 2 and "none connected for 1 s" in waiting[0], lines
    assert lines[-1].startswith(f"mlc: no Dask worker connected to the scheduler at {address} for 3 s"), lines[-1]
    assert "cluster.no_workers_timeout_s" in lines[-1] and lines[-1].endswith("rerun the same command to resume")
    assert last_run(load_config(config))["status"] == "failed"


def test_when_every_worker_dies_mid_stage_the_wait_warns_then_fails(tmp_path, monkeypatch, caplog):
    """The only worker killed -9 after the first chunk: the chunks left wait for a worker, warned
    about, and the stage fails after the bound instead of waiting for ever."""
    import signal
    from mlc_pipeline.executor import ClusterLost, cluster_ready
    monkeypatch.delenv(ADDRESS_ENV, raising=False)
    with dask_processes(workers=1) as (address, (_, worker)):
        cfg = load_config(write_config(tmp_path), {"cluster": {"address": address, "no_workers_warn_s": 0.5,
                                                               "no_workers_timeout_s": 2}})
        assert cluster_ready(cfg) == address
        done = []

        def kill_the_worker(items, results):
            done.append(items)
            os.kill(worker.pid, signal.SIGKILL)

        with pytest.raises(ClusterLost, match=rf"^no Dask worker connected to the scheduler at {address} for 2 s "
                                              r"with [23] of 4 chunks to do"):
            map_chunks(slow_double, list(range(8)), 2, address=address, on_chunk=kill_the_worker)
    assert done[0] == [0, 1]      # chunks run in order on the one thread; the next may finish before the kill
    assert any("waiting for Dask workers" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
