"""Where the work inside a stage runs: this process by default, or a Dask cluster.

A stage hands `map_chunks` a function over a list (verify + hash a list of files, download a list of
jobs, score a list of images) and the whole list. Without a cluster the function runs here on the
whole list, with whatever local parallelism it has (curate's process pool, collect's download
threads). With a cluster address (`$MLC_DASK_ADDRESS`, else the config's `cluster.address`) the list
is cut into chunks, each chunk runs as one task on a `distributed` worker, and the results come back
in input order. The functions are deterministic per item, so either way gives the same results.

Writes to the catalog stay in the calling process: workers return results, the caller records them
(one writer per stage, and a chunk lost with its worker changes nothing; on PostgreSQL several
stages or runs may write at once, tests/test_cluster_postgres.py). Workers read and
write files under the data root, so they must see it at the same path (a shared filesystem): a stage
checks that before its first chunk (`cluster_ready`), since a worker that sees another folder there
downloads into it, and the caller finds nothing (an object-store root's cache is one machine's folder).

While a stage waits for its chunks it watches the cluster: a scheduler lost mid-stage, or no worker
connected for `cluster.no_workers_timeout_s` (warned about every `cluster.no_workers_warn_s`), ends
the stage with one line (`ClusterLost`); what the caller recorded stays, and a rerun resumes.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from mlc_pipeline.config import ClusterSettings, ConfigError
from mlc_pipeline.fsutil import remove_dead_leftovers

log = logging.getLogger(__name__)

ADDRESS_ENV = "MLC_DASK_ADDRESS"     # e.g. tcp://scheduler:8786; wins over the config's cluster.address

T = TypeVar("T")
R = TypeVar("R")

_clients: dict[str, Any] = {}        # address -> distributed.Client, one per process (connecting costs ~0.3 s)
_clients_lock = threading.Lock()
_checked: set[tuple[str, str, frozenset]] = set()   # (address, data root, workers) whose view was checked
_probes: dict[str, tuple[str, str]] = {}            # address -> (probe file under the data root, its content)
_settings: dict[str, ClusterSettings] = {}          # address -> the cluster settings of the stage that checked it
_told_no_workers: set[tuple[str, str]] = set()      # (address, data root) already logged as having no workers
POLL_S = 0.05            # while no chunk is ready: how often to look again
WORKERS_EVERY_S = 1.0    # ... and how often to ask the scheduler how many workers it has

PROBE_PREFIX = ".mlc.cluster-probe."


class ClusterUnusable(ConfigError):
    """The cluster cannot do the stage's work: its scheduler cannot be reached, or a worker does not
    see the data root at this path (one line, naming which and what to do)."""


class ClusterLost(RuntimeError):
    """The cluster stopped doing the stage's work mid-stage: the scheduler went away, or no worker was
    connected for `cluster.no_workers_timeout_s`. One line; what the caller recorded is kept, and
    rerunning the same command resumes."""


def scheduler_lost(address: str, done: int | None = None, total: int = 0) -> str:
    where = "" if done is None else f" mid-stage ({done} of {total} chunks done)"
    return (f"lost the connection to the Dask scheduler at {address}{where}; what was recorded is kept: once the "
            f"scheduler is back (or with cluster.address and ${ADDRESS_ENV} unset, to work in this process), "
            f"rerun the same command to resume")


def cluster_address(cfg=None) -> str | None:
    """The Dask scheduler to spread work over, or None for this process."""
    env = os.environ.get(ADDRESS_ENV, "").strip()
    if env:
        return env
    cluster = getattr(cfg, "cluster", None)
    return cluster.address if cluster is not None and cluster.address else None


def in_dask_worker() -> bool:
    """Whether this code runs inside a task on a Dask worker (the flow's stage task on the cluster)."""
    try:
        from distributed import get_worker
    except ImportError:
        return False
    try:
        get_worker()
    except ValueError:
        return False
    return True


@contextmanager
def cluster_client(address: str) -> Iterator[Any]:
    """A client of the cluster at `address`. Inside a Dask worker, the worker's own client, seceded
    from the worker's thread pool while it waits (otherwise a stage task waiting on its chunks holds
    a thread they may need: with one thread per worker that is a deadlock)."""
    try:
        from distributed import Client, worker_client
    except ImportError as exc:
        raise RuntimeError(f"a cluster address ({address}) needs the `distributed` package: "
                           "pip install -e '.[dask]'") from exc
    if in_dask_worker():
        with worker_client() as client:
            yield client
        return
    with _clients_lock:
        client = _clients.get(address)
        if client is not None and client.status == "connecting":     # it was connected: its scheduler went away
            raise ClusterLost(scheduler_lost(address))
        if client is None or client.status not in ("running", "connecting"):
            try:
                client = _clients[address] = Client(address, set_as_default=False)
            except (OSError, ValueError, TypeError) as exc:    # refused, timed out, not an address
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ClusterUnusable(f"cannot connect to the Dask scheduler at {address}: {reason} (check "
                                      f"cluster.address and ${ADDRESS_ENV}, or unset both to work in this "
                                      f"process)") from None
    yield client


def cluster_ready(cfg) -> str | None:
    """`cluster_address(cfg)`, connected, with every worker seeing cfg's data root at the same path;
    None to work in this process. Stages call it before their first chunk (collect before searching),
    so a cluster that cannot do the work is one line before any work, not files lost after it."""
    address = cluster_address(cfg)
    if address:
        _settings[address] = cfg.cluster     # how long map_chunks waits for workers, and how often it warns
        with cluster_client(address) as client:
            check_workers_see(client, address, str(cfg.data_dir))
    return address


def check_workers_see(client, address: str, data_dir: str) -> None:
    """Every worker must read back, with the same content, a probe file written here under `data_dir`
    (once per process for a given set of workers): a worker on another machine without the shared
    filesystem would otherwise write its downloads where nobody reads them. The probe stays for the
    process's life, and each chunk checks it on the worker that runs it (`map_chunks`), so a worker
    that joins later (an adaptive cluster has none before the first chunks) is held to the same rule."""
    path, token = probe_for(address, data_dir)
    workers = frozenset(client.scheduler_info().get("workers", {}))
    if not workers:
        if (address, data_dir) not in _told_no_workers:     # a stage checks before each batch: said once
            _told_no_workers.add((address, data_dir))
            log.info("the Dask scheduler at %s has no workers yet: each chunk checks that its worker sees %s",
                     address, data_dir)
        return
    if (address, data_dir, workers) in _checked:
        return
    try:
        seen = client.run(read_probe, path, workers=list(workers))
    except Exception as exc:    # e.g. a worker without this project installed cannot unpickle read_probe
        reason = (str(exc).strip().splitlines() or [""])[0]
        raise ClusterUnusable(f"the Dask workers at {address} cannot run this project's code ({type(exc).__name__}: "
                              f"{reason}): start them in this project's environment") from None
    blind = sorted(w for w, text in seen.items() if text != token)
    if blind:
        raise ClusterUnusable(blind_workers(blind, data_dir))
    _checked.add((address, data_dir, workers))


def probe_for(address: str, data_dir: str) -> tuple[str, str]:
    """This process's probe file under `data_dir` for the cluster at `address`: (path, content),
    written once, removed when the process exits; those a killed process of this host left are removed
    first (the scale26 audit: a kill -9 left one for good)."""
    if address not in _probes or os.path.dirname(_probes[address][0]) != data_dir:
        token = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex}"
        path = os.path.join(data_dir, PROBE_PREFIX + token)
        os.makedirs(data_dir, exist_ok=True)
        remove_dead_leftovers(Path(data_dir).glob(PROBE_PREFIX + "*"), probe_writer)
        with open(path, "w") as f:
            f.write(token)
        atexit.register(_remove_probe, path)
        _probes[address] = (path, token)
    return _probes[address]


def probe_writer(path: Path) -> str:
    """The pid of the process that wrote a probe file (<host>-<pid>-<id>), where it is this host's:
    another host's process, on a shared filesystem, cannot be checked from here ('' keeps its file)."""
    host, _, rest = path.name[len(PROBE_PREFIX):].rpartition("-")[0].rpartition("-")
    return rest if host == socket.gethostname() else ""


def _remove_probe(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass          # already gone (removed by hand, or the data root with it): nothing to clean


def blind_workers(names: list[str], data_dir: str) -> str:
    return (f"Dask worker{'s' if len(names) > 1 else ''} {', '.join(names)} cannot see the data root {data_dir} "
            f"at that path: workers read and write its files there, so it must be on a filesystem they share "
            f"(an object-store data root's cache is a folder of this machine); run the workers where they see "
            f"it, or unset cluster.address and ${ADDRESS_ENV} to work in this process")


def read_probe(path: str) -> str | None:
    """On a worker: what the probe file at `path` says there (None where there is no such file)."""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def on_a_worker_that_sees(fn: Callable, path: str, token: str, items: list):
    """A chunk's task: `fn(items)`, once this worker has read the caller's probe (ClusterUnusable if not)."""
    if read_probe(path) != token:
        from distributed import get_worker
        raise ClusterUnusable(blind_workers([get_worker().address], os.path.dirname(path)))
    return fn(items)


def map_chunks(fn: Callable[[list[T]], Sequence[R]], items: Sequence[T], chunk: int, *,
               address: str | None = None, local: Callable[[list[T]], Sequence[R]] | None = None,
               on_chunk: Callable[[list[T], Sequence[R]], None] | None = None,
               on_lost: Callable[[list[T]], Sequence[R]] | None = None) -> list[R]:
    """`fn` over `items`, one result per item, in input order.

    - `address` None: `local(items)` (or `fn(items)`) once, in this process.
    - `address` set: `fn(chunk_of_items)` as one task per `chunk` items on the cluster.
    `on_chunk(items, results)` is called in this thread as each chunk finishes (completion order), so
    the caller can record results as they come; locally it is called once with everything.
    `on_lost(items)`: results for a chunk whose worker died under it more often than the scheduler
    allows (`KilledWorker`: a decoder segfault, the OOM killer), computed here instead; without it the
    loss is an error. On any exception (Ctrl-C, an error from `on_chunk`) the chunks not started yet
    are cancelled, and the exception goes on; chunks already running finish on their workers.
    The scheduler lost mid-stage, or no worker for `no_workers_timeout_s` of the settings `cluster_ready`
    recorded for `address`: `ClusterLost` (see `WorkerWatch`).
    """
    items = list(items)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if not items:
        return []
    if not address:
        results = list((local or fn)(items))
        _check_length(items, results)
        if on_chunk:
            on_chunk(items, results)
        return results
    from distributed import CancelledError, KilledWorker

    chunks = [items[i:i + chunk] for i in range(0, len(items), chunk)]
    if address in _probes:          # cluster_ready wrote one: every chunk's worker must see it
        fn = partial(on_a_worker_that_sees, fn, *_probes[address])
    out: list[Sequence[R] | None] = [None] * len(chunks)
    with cluster_client(address) as client:
        # pure=False: the same chunk mapped twice (a rerun) must run again, not reuse a cached result.
        futures = client.map(fn, chunks, pure=False)
        index = {fut.key: k for k, fut in enumerate(futures)}
        watch = WorkerWatch(client, address, len(chunks), _settings.get(address) or ClusterSettings())
        try:
            for fut in watch.finished(futures):
                k = index[fut.key]
                try:
                    results = fut.result()
                except (CancelledError, OSError) as exc:   # OSError: CommClosedError, or the chunk's own error
                    if isinstance(exc, OSError) and not watch.lost:
                        raise                                  # the chunk's own (a full disk on the worker)
                    raise ClusterLost(watch.cancelled(k, exc)) from None
                except KilledWorker:
                    if on_lost is None:
                        raise
                    log.warning("workers kept dying on chunk %d of %d (%d items, KilledWorker): computing it here",
                                k + 1, len(chunks), len(chunks[k]))
                    results = on_lost(chunks[k])
                results = list(results)
                _check_length(chunks[k], results)
                out[k] = results
                if on_chunk:
                    on_chunk(chunks[k], results)
        except BaseException:
            if not watch.lost:      # without a scheduler there is nothing to cancel (and no reply to wait for)
                client.cancel([f for f in futures if not f.done()])
            raise
    return [r for part in out for r in part]   # type: ignore[union-attr]  # every slot is filled


class WorkerWatch:
    """A stage's wait for its chunks, watched: chunks yielded as they finish (completion order), and
    while none is ready, the scheduler asked every WORKERS_EVERY_S how many workers it has. With none
    (all died mid-stage, or an adaptive cluster that has not started one), a warning every
    `no_workers_warn_s`, and ClusterLost after `no_workers_timeout_s` (None: waits for ever);
    a worker connecting resets the clock. A lost scheduler is ClusterLost at once.

    `client.status` alone does not tell a lost scheduler: a worker's own client can read "connecting"
    while it works (two stage tasks starting at once on one worker); a client seen "running" that no
    longer is has lost it (and is reconnecting, which a call would wait on for the connect timeout)."""

    def __init__(self, client, address: str, total: int, settings: ClusterSettings) -> None:
        self.client, self.address, self.total, self.s = client, address, total, settings
        self.pending = total
        self.was_running = client.status == "running"
        self.gone = False                    # a call to the scheduler failed: it went away
        self.since: float | None = None      # when no worker was first seen connected
        self.warned = 0                      # warnings given since then
        self.next_ask = 0.0

    @property
    def lost(self) -> bool:
        return self.gone or (self.was_running and self.client.status != "running")

    def finished(self, futures: list) -> Iterator[Any]:
        from distributed import as_completed
        ready = as_completed(futures, loop=self.client.loop)
        while not ready.is_empty():
            batch = ready.next_batch(block=False)
            for fut in batch:
                yield fut
                self.pending -= 1        # the caller has its results (not counted if it raised)
            if not batch:
                self.check()
                time.sleep(POLL_S)

    def check(self) -> None:
        now = time.monotonic()
        if now < self.next_ask:
            return
        self.next_ask = now + min(WORKERS_EVERY_S, self.s.no_workers_warn_s)
        if self.workers():
            self.since, self.warned = None, 0
            return
        if self.since is None:
            self.since = now
        waited, timeout = now - self.since, self.s.no_workers_timeout_s
        if timeout is not None and waited >= timeout:
            raise ClusterLost(
                f"no Dask worker connected to the scheduler at {self.address} for {timeout:g} s with {self.pending} "
                f"of {self.total} chunks to do (cluster.no_workers_timeout_s); what was recorded is kept: start "
                f"workers (dask worker {self.address}), or raise that bound (null waits for ever), or unset "
                f"cluster.address and ${ADDRESS_ENV} to work in this process, then rerun the same command to resume")
        if waited >= (self.warned + 1) * self.s.no_workers_warn_s:
            self.warned = int(waited // self.s.no_workers_warn_s)
            bound = f"gives up after {timeout:g} s" if timeout is not None else "waits for ever (null)"
            log.warning("waiting for Dask workers at %s: none connected for %g s, %d of %d chunks to do; the "
                        "stage %s without one (cluster.no_workers_timeout_s)", self.address,
                        self.warned * self.s.no_workers_warn_s, self.pending, self.total, bound)

    def workers(self) -> int:
        """How many workers the scheduler has (ClusterLost if the scheduler is gone)."""
        self.was_running = self.was_running or self.client.status == "running"
        if not self.lost:
            try:
                return len(self.client.nthreads())
            except OSError:       # CommClosedError: it went away while answering
                self.gone = True
        raise ClusterLost(scheduler_lost(self.address, self.total - self.pending, self.total))

    def cancelled(self, k: int, exc: BaseException) -> str:
        """Why chunk k came back cancelled, as one line: the scheduler lost, or cancelled by someone."""
        reason = getattr(exc, "reason", "") or type(exc).__name__
        if self.lost or reason == "scheduler-connection-lost":
            self.gone = True             # nothing left to cancel there
            return scheduler_lost(self.address, self.total - self.pending, self.total)
        return (f"chunk {k + 1} of {self.total} was cancelled on the Dask cluster at {self.address} ({reason}); what "
                f"was recorded is kept: rerun the same command to resume")


def _check_length(items: list, results: list) -> None:
    if len(results) != len(items):      # a chunk function must return one result per item
        raise RuntimeError(f"chunk function returned {len(results)} results for {len(items)} items")
