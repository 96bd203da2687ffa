"""Downloads spread over a Dask cluster, with the per-host bound held cluster-wide.

Each task downloads a chunk of jobs on a worker with the ordinary `Downloader` (same validation,
retries, deadlines, atomic writes under raw/), except that a connection to a host first takes a lease
of a `distributed.Semaphore` named after the host: `source.per_host_concurrency` connections per
host across all workers together, not per worker. Why the scheduler's semaphore and not a limiter in
the catalog: a lease is one round trip to a service the cluster already runs, it blocks without
polling, and the scheduler takes back the leases of a worker that dies (after
`distributed.scheduler.locks.lease-timeout`, 30 s by default), where a row in the catalog would
stay taken until someone cleans it up.

The results travel back to the calling process, which records them in the catalog as they come
(`Collector.download`), so the catalog keeps a single writer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path

from mlc_pipeline.collect.download import Downloader, DownloadJob, DownloadResult
from mlc_pipeline.config import Config, SourceSettings
from mlc_pipeline.executor import map_chunks

_semaphores: dict[str, object] = {}     # per worker process: one Semaphore client object per name
_semaphores_lock = threading.Lock()


def host_semaphore_name(host: str, leases: int) -> str:
    # The bound is part of the name: the scheduler refuses one name with two different bounds, and
    # two runs configured differently should each keep their own bound rather than fail.
    return f"mlc-download:{host}:{leases}"


def host_semaphore(host: str, leases: int, worker):
    """The cluster-wide semaphore of `host`, bound to `worker` explicitly: the download threads that
    ask for it are not task threads, where distributed would find the worker by itself."""
    from distributed import Semaphore

    name = host_semaphore_name(host, leases)
    with _semaphores_lock:
        if name not in _semaphores:
            _semaphores[name] = Semaphore(max_leases=leases, name=name, scheduler_rpc=worker.scheduler,
                                          loop=worker.loop)
        return _semaphores[name]


class ClusterDownloader(Downloader):
    """A Downloader whose per-host slots are leases of a cluster-wide semaphore."""

    def __init__(self, *args, worker, **kwargs):
        super().__init__(*args, **kwargs)
        self.worker = worker

    def slot(self, host: str):
        super().slot(host)          # this worker's bookkeeping (in-flight counts)
        return host_semaphore(host, self.s.per_host_concurrency, self.worker)


def download_chunk(settings: SourceSettings, allowed_hosts: list[str], raw_dir: str,
                   jobs: list[DownloadJob]) -> list[DownloadResult | None]:
    """Run on a worker: one result per job, in job order; None for a job that did not finish (the
    run was stopping): its candidate stays pending."""
    from distributed import get_worker

    downloader = ClusterDownloader(settings, allowed_hosts, Path(raw_dir), worker=get_worker())
    results: dict[int, DownloadResult] = {}
    downloader.run_into(jobs, lambda res: results.__setitem__(res.cid, res))
    for cid, _, reason in downloader.hosts.take_back():      # a host down for everyone: not the photos' fault
        results[cid].reason = reason
    return [results.get(job.cid) for job in jobs]


def download_on_cluster(cfg: Config, downloader: Downloader, jobs: list[DownloadJob],
                        record: Callable[[DownloadResult], None], address: str) -> None:
    """`downloader.run_into(jobs, record)`, with the jobs spread over the cluster at `address`."""
    fn = partial(download_chunk, downloader.s, list(downloader.allowed), str(downloader.raw_dir))

    def on_chunk(_jobs, results) -> None:
        for res in results:
            if res is not None:
                downloader.hosts.learn(res.reason)      # the collect stops as it would here
                record(res)

    map_chunks(fn, jobs, cfg.cluster.download_chunk, address=address, on_chunk=on_chunk)
