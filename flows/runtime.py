"""Run-time settings of the flows: the default config, the task runner, the Flickr concurrency limit,
retry rules."""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
from contextlib import ExitStack, contextmanager
from typing import Iterator

from prefect.concurrency.sync import concurrency
from prefect.logging.handlers import APILogHandler
from prefect.task_runners import ThreadPoolTaskRunner

from mlc_pipeline.executor import ADDRESS_ENV

# The flows' `config_path` when a run names none (prefect.yaml passes it too); also what a stopped
# run's summary reads (flows/artifacts.py)
DEFAULT_CONFIG = "configs/offline.yaml"

# e.g. tcp://scheduler:8786 -> DaskTaskRunner(address=...); the stages read it too and map their work
# (downloads, verify + hash, mining's scoring) in chunks over the same cluster (mlc_pipeline/executor.py)
DASK_ADDRESS_ENV = ADDRESS_ENV
TASK_WORKERS_ENV = "MLC_TASK_WORKERS"       # threads of the default ThreadPoolTaskRunner
# A global concurrency limit of 1: one collect at a time across every run and deployment on the
# server. Its name: $MLC_FLICKR_CONCURRENCY_LIMIT in the flow run's environment, read when the collect
# starts; a collect that finds no limit of that name creates it (limit 1), so a renamed limit nobody
# created still serialises collects (it was skipped: strict=False, one log line; the docs27 audit).
FLICKR_LIMIT_ENV = "MLC_FLICKR_CONCURRENCY_LIMIT"
FLICKR_LIMIT = "mlc-flickr"          # the name when the variable is unset or empty
# The slot's lease. Prefect renews a held lease every 3/4 of it (prefect/concurrency/_leases.py), so a
# collect of hours keeps its slot; a run that dies mid-collect frees it when the lease expires. 60 s
# is the server's minimum (Prefect's default, 300 s, made the next collect wait ~5 minutes after a crash).
FLICKR_LEASE_S = 60


def flickr_limit() -> str:
    """The Flickr limit's name now: $MLC_FLICKR_CONCURRENCY_LIMIT, else `mlc-flickr`."""
    return os.environ.get(FLICKR_LIMIT_ENV) or FLICKR_LIMIT


def flickr_slot_busy(logger=None) -> bool:
    """Whether every slot of the Flickr limit is held now. A limit of that name that does not exist is
    created first (limit 1; a collect creating it at the same moment is no error), and said. A limit
    made inactive on purpose stays as it is."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    log = logger or logging.getLogger(__name__)
    name = flickr_limit()
    try:
        with get_client(sync_client=True) as client:
            try:
                limit = client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                try:
                    client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
                    log.info("collect: created the global concurrency limit %r (limit 1): one collect at a "
                             "time on this server", name)
                except ObjectAlreadyExists:     # another collect created it first
                    pass
                limit = client.read_global_concurrency_limit_by_name(name)
    except Exception as exc:    # the slot itself is taken below, as before; without the limit it is skipped
        log.warning("could not read the %r limit (%s: %s); taking its slot anyway (if the limit does not "
                    "exist, collects are not serialised)", name, type(exc).__name__, exc)
        return False
    return limit.active and limit.active_slots >= limit.limit


@contextmanager
def flickr_slot(logger) -> Iterator[None]:
    """Hold the Flickr limit's slot (the limit created if missing); say so when it has to wait for it,
    and for how long it waited."""
    name = flickr_limit()
    busy = flickr_slot_busy(logger)
    if busy:
        logger.warning("collect: waiting for the %r concurrency slot: another collect holds it, or a run that "
                       "stopped mid-collect does until its lease expires (within %d s)", name, FLICKR_LEASE_S)
    waited = time.monotonic()
    with concurrency(name, occupy=1, strict=False, lease_duration=FLICKR_LEASE_S,
                     raise_on_lease_renewal_failure=False):
        if busy:
            logger.info("collect: got the %r slot after %.0f s", name, time.monotonic() - waited)
        yield


# How a flow run waiting for the data root's lock is stopped (the lock's warning says so; not Ctrl-C)
CANCEL_TO_STOP = "cancel the flow run to stop waiting"
LIBRARY_LOGGER = "mlc_pipeline"


@contextmanager
def library_logs_in_run(level: int = logging.INFO) -> Iterator[None]:
    """The library's own log lines at INFO and above (a stage's progress: epochs, mining rounds, the
    data root's lock) in the flow run's logs while the block runs; DEBUG lines (per request) stay out.

    PREFECT_LOGGING_EXTRA_LOGGERS=mlc_pipeline (prefect.yaml) gives the `mlc_pipeline` logger Prefect's
    API handler but no level, so it inherited the root logger's WARNING (prefect/logging/logging.yml)
    and only warnings reached the run's logs (the nightly25 audit). Here the logger gets INFO unless
    something set a level of its own (a logging config: that stands), and the handler that setting
    attaches, when it is not set (a flow called in-process); both are put back when the last run of
    this process in such a block leaves it (two runs in one process: the first to end took the handler
    and the level from the other), so no library line outside a run goes to the API. Known secrets are
    masked in every record (secrets.install_log_redaction, a record factory), these included."""
    from prefect.context import get_run_context

    from mlc_pipeline.secrets import install_log_redaction

    install_log_redaction()
    run_id = get_run_context().flow_run.id
    with OfThisRun.lock:
        if not OfThisRun.runs:
            OfThisRun.put_back = library_logs_to_api(level)
        OfThisRun.runs.append(run_id)
    try:
        yield
    finally:
        with OfThisRun.lock:
            OfThisRun.runs.remove(run_id)
            if not OfThisRun.runs:
                OfThisRun.put_back()


def library_logs_to_api(level: int):
    """Give the library's logger the API handler, `level` and the OfThisRun filter; what puts them back."""
    lib = logging.getLogger(LIBRARY_LOGGER)
    added = [h for h in logging.getLogger("prefect.extra").handlers if h not in lib.handlers]
    own_level = lib.level
    for handler in added:
        lib.addHandler(handler)
    if own_level == logging.NOTSET:
        lib.setLevel(level)
    in_run = OfThisRun()
    api = [h for h in lib.handlers if isinstance(h, APILogHandler)]
    for handler in api:
        handler.addFilter(in_run)

    def put_back() -> None:
        lib.setLevel(own_level)
        for handler in api:
            handler.removeFilter(in_run)
        for handler in added:
            lib.removeHandler(handler)
    return put_back


class OfThisRun(logging.Filter):
    """Names the flow run on a library record that has no Prefect run context, while one run of this
    process sends the library's lines (library_logs_in_run): Prefect's API handler dropped such records
    ("attempted to send logs to the API without a flow run id"; the prefect28 audit). The library's own
    threads (a download worker, the downloads' watchdog) run in their starter's context
    (collect/connections.start_thread), so their records name their run themselves; this covers a
    thread started otherwise. With two runs in the process it cannot tell whose such a record is, and
    leaves it (Prefect drops it, with its warning) rather than credit the wrong run: one filter per run
    credited every such record to the run whose filter came first (the review of 2026-12-07)."""

    lock = threading.Lock()
    runs: list = []                 # the flow runs of this process in library_logs_in_run, oldest first
    put_back = None                 # undoes library_logs_to_api once the last of them ends

    def filter(self, record: logging.LogRecord) -> bool:
        from prefect.context import FlowRunContext, TaskRunContext

        runs = list(self.runs)
        if (len(runs) == 1 and not getattr(record, "flow_run_id", None) and FlowRunContext.get() is None
                and TaskRunContext.get() is None):
            record.flow_run_id = runs[0]
        return True


# How long a stopping run waits for a task it submitted (an alternative's training, a stage on a Dask
# worker) to end before it lets the data root's lock go; below Prefect's 30 s grace before its SIGKILL.
TASK_END_WAIT_S = 20.0
HELD_UNTIL_EXIT: list[ExitStack] = []      # locks a stopping run could not let go (let_go)


def let_go(held: ExitStack, submitted: list, logger, why: str = "the flow run stopped") -> None:
    """Let the data root's lock (`held`) go once nothing the run started can write there any more.

    Stage tasks run in the flow's own thread (collect_and_train.TaskStages.call), so they have ended by
    now. A task submitted to the runner (`submitted`: (task, future) pairs; the alternatives, every stage
    on a Dask cluster) is a thread or a worker a cancel's SIGTERM does not stop: one not started yet is
    cancelled (its task run recorded Cancelled, saying `why`: not_started), one running is waited for
    (TASK_END_WAIT_S). One still running then keeps the lock until this process ends (the kernel drops
    it then, even after SIGKILL): never a second writer while it writes (the prefect28 audit)."""
    deadline = time.monotonic() + TASK_END_WAIT_S
    futures = [future for _, future in submitted]
    # A thread's future: cancel() only drops one not started. A Dask future reads done once
    # cancelled while its worker goes on running the stage: waited for, never cancelled.
    dropped = [(task, future) for task, future in submitted
               if isinstance(future.wrapped_future, concurrent.futures.Future) and future.wrapped_future.cancel()]
    if dropped:
        not_started(dropped, why, logger)
    while (running := sum(not f.wrapped_future.done() for f in futures)) and time.monotonic() < deadline:
        time.sleep(0.2)             # their outcome is their task runs'
    if running:
        logger.error("%d task(s) of this run still running after %.0f s: the data root's lock stays held "
                     "until this process ends", running, TASK_END_WAIT_S)
        # Kept, never closed: the lock goes with the process. A stack dropped here would be collected and
        # its lock's finally run at once (the review of 2026-12-07: pop_all() alone released it).
        HELD_UNTIL_EXIT.append(held.pop_all())
        return
    held.close()


def not_started(dropped: list, why: str, logger) -> None:
    """Tasks cancelled before they started, recorded Cancelled ("not started: <why>") under their
    futures' task run ids, and named in the run's log. Prefect's engine never ran for them, so the
    server had no task run of theirs at all: the UI listed the tasks that ran and nothing said an
    alternative was never trained (the review of 2026-12-07). A failure to record them is a warning:
    the lock is let go all the same."""
    from uuid import uuid4

    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext
    from prefect.states import Cancelled

    context = FlowRunContext.get()
    flow_run_id = context.flow_run.id if context and context.flow_run else None
    message = f"not started: {why}"
    names = []
    try:
        with get_client(sync_client=True) as client:
            for task, future in dropped:
                key = str(uuid4())              # as the engine's for a run it creates (dynamic_key_for_task_run)
                names.append(client.create_task_run(task, flow_run_id, key, id=future.task_run_id,
                                                    name=f"{task.name}-{key[:3]}",
                                                    state=Cancelled(message=message)).name)
    except Exception as exc:
        logger.warning("could not record the task runs not started as Cancelled (%s: %s)", type(exc).__name__, exc)
    logger.warning("%d task(s) of this run cancelled before they started (%s): %s", len(dropped), why,
                   ", ".join(names) or ", ".join(task.name for task, _ in dropped))


def task_runner(address: str | None = None):
    """Threads by default; a Dask cluster when an address is given (argument or $MLC_DASK_ADDRESS).

    Stage tasks run one after another (each stage needs the previous one's output); what the runner
    spreads out is the independent work inside a run (the alternative models trained for the report).
    The work inside a stage is spread by the stage itself (`mlc_pipeline.executor.map_chunks`), from
    the stage task running on a worker, over the same cluster.
    On a 2-core box one thread at a time is right: torch already uses both cores.
    """
    address = address or os.environ.get(DASK_ADDRESS_ENV) or None
    if address:
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as exc:   # optional extra: pip install -e '.[dask]'
            raise RuntimeError(f"{DASK_ADDRESS_ENV}={address} needs prefect-dask: "
                               "pip install -e '.[dask]'") from exc
        return DaskTaskRunner(address=address)
    return ThreadPoolTaskRunner(max_workers=int(os.environ.get(TASK_WORKERS_ENV, "1")))


def is_retryable(exc: BaseException) -> bool:
    """Whether a failed collect is worth another attempt later (Prefect task retries).

    The library already retries every API call and download with backoff; a collect that still fails
    is retried by Prefect only when the cause can go away (the API down for longer than the in-library
    retries waited, a network error). A wrong config (an API URL where nothing listens too), a missing
    or rejected key, or a request Flickr refuses outright fail at once: retrying them only burns the
    call budget, and holds the deployment's one slot.
    """
    from mlc_pipeline.catalog import CatalogBusy, CatalogLost
    from mlc_pipeline.config import ConfigError
    from mlc_pipeline.collect.flickr import InvalidKeyError, RetriesExhausted, SourceError
    from mlc_pipeline.collect.hosts import ImageHostDown
    from mlc_pipeline.secrets import MissingCredentials

    if isinstance(exc, (ConfigError, MissingCredentials, InvalidKeyError, ValueError, TypeError,
                        KeyError, AttributeError)):
        return False
    if isinstance(exc, SourceError):    # a transient fault outlasted the retries; an image host was down
        # not an API nothing listens at (every connection refused, no reply ever): source.rest_url's
        return isinstance(exc, (RetriesExhausted, ImageHostDown)) and not getattr(exc, "unreachable", False)
    # network, disk; RuntimeError e.g. a dead pool; another catalog writer held its lock too long, or won
    # a deadlock; the catalog server's connection lost (restarted, a network fault)
    return isinstance(exc, (OSError, RuntimeError, CatalogBusy, CatalogLost))


def fixed_by_hand(exc: BaseException) -> bool:
    """A failure no rerun gets past: a config or key a user must correct (a failed run's message says so)."""
    from mlc_pipeline.collect.flickr import InvalidKeyError
    from mlc_pipeline.config import ConfigError
    from mlc_pipeline.locking import ReadOnlyDataRoot
    from mlc_pipeline.secrets import MissingCredentials
    return isinstance(exc, (ConfigError, InvalidKeyError, MissingCredentials, ReadOnlyDataRoot))


def retry_condition(task, task_run, state) -> bool:
    """`retry_condition_fn` for Prefect: retry only what `is_retryable` accepts."""
    exc = state.data if isinstance(getattr(state, "data", None), BaseException) else None
    if exc is None:
        try:
            exc = state.result(raise_on_failure=False)
        except Exception as err:     # the result could not be read: judged by that error, and said
            again = is_retryable(err)
            logging.getLogger(__name__).warning("could not read why %s failed (%s: %s): %s",
                                                getattr(task, "name", "the task"), type(err).__name__, err,
                                                "retrying it" if again else "not retrying it")
            return again
    return not isinstance(exc, BaseException) or is_retryable(exc)
