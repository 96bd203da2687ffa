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
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, TypeVar

from mlc_pipeline.config import ConfigError

log = logging.getLogger(__name__)

ADDRESS_ENV = "MLC_DASK_ADDRESS"     # e.g. tcp://scheduler:8786; wins over the config's cluster.address

T = TypeVar("T")
R = TypeVar("R")

_clients: dict[str, Any] = {}        # address -> distributed.Client, one per process (connecting costs ~0.3 s)
_clients_lock = threading.Lock()
_checked: set[tuple[str, str, frozenset]] = set()   # (address, data root, workers) whose view was checked
_probes: dict[str, tuple[str, str]] = {}            # address -> (probe file under the data root, its content)

PROBE_PREFIX = ".mlc.cluster-probe."


class ClusterUnusable(ConfigError):
    """The cluster cannot do the stage's work: its scheduler cannot be reached, or a worker does not
    see the data root at this path (one line, naming which and what to do)."""


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
    written once, removed when the process exits."""
    if address not in _probes or os.path.dirname(_probes[address][0]) != data_dir:
        token = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex}"
        path = os.path.join(data_dir, PROBE_PREFIX + token)
        os.makedirs(data_dir, exist_ok=True)
        with open(path, "w") as f:
            f.write(token)
        atexit.register(_remove_probe, path)
        _probes[address] = (path, token)
    return _probes[address]


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
    from distributed import KilledWorker, as_completed

    chunks = [items[i:i + chunk] for i in range(0, len(items), chunk)]
    if address in _probes:          # cluster_ready wrote one: every chunk's worker must see it
        fn = partial(on_a_worker_that_sees, fn, *_probes[address])
    out: list[Sequence[R] | None] = [None] * len(chunks)
    with cluster_client(address) as client:
        # pure=False: the same chunk mapped twice (a rerun) must run again, not reuse a cached result.
        futures = client.map(fn, chunks, pure=False)
        index = {fut.key: k for k, fut in enumerate(futures)}
        try:
            for fut in as_completed(futures, loop=client.loop):
                k = index[fut.key]
                try:
                    results = fut.result()
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
            client.cancel([f for f in futures if not f.done()])
            raise
    return [r for part in out for r in part]   # type: ignore[union-attr]  # every slot is filled


def _check_length(items: list, results: list) -> None:
    if len(results) != len(items):      # a chunk function must return one result per item
        raise RuntimeError(f"chunk function returned {len(results)} results for {len(items)} items")
