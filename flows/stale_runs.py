"""Flow runs of a work pool that no process will ever finish, and how they are ended.

A run's state lives on the server; only its process reports the final one. When that process dies
without reporting (its worker stopped mid-run, kill -9, power loss) the run stays Running forever and
holds the deployment's concurrency slot (concurrency_limit 1), so every later run of it waits in
AwaitingConcurrencySlot. scripts/prefect_local.sh calls this module:

- `stop-runs`, before it stops its worker: cancels the pool's in-flight runs (the worker kills each
  flow process and reports it Cancelled), waits for them, and crashes any that did not get there;
- `crash-orphans`, before it starts its worker: crashes the pool's runs left unfinished when no worker
  of the pool is alive (a previous worker that is gone: nothing will ever report them). A worker counts
  as alive when it sent a heartbeat in the last 90 s, unless named with --dead-worker.

Each run it ends gets a `mlc-run-summary` artifact saying so, and what is published now.
Usage: python -m flows.stale_runs stop-runs|crash-orphans [--pool mlc-local] [--wait 60] [--dead-worker NAME]
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timedelta, timezone

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType,
                                            WorkPoolFilter, WorkPoolFilterName)
from prefect.client.schemas.objects import StateType
from prefect.states import Cancelling, Crashed

from flows.artifacts import write_stopped_summary

POOL = "mlc-local"
UNFINISHED = [StateType.PENDING, StateType.RUNNING, StateType.CANCELLING]
# A worker heartbeats every 30 s (PREFECT_WORKER_HEARTBEAT_SECONDS); three missed ones = gone.
WORKER_GONE_AFTER_S = 90


def unfinished_runs(client, pool: str) -> list:
    return client.read_flow_runs(
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=UNFINISHED))),
        work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])))


def live_workers(client, pool: str, dead: tuple[str, ...] = ()) -> list[str]:
    """Names of the pool's workers that sent a heartbeat recently, less those known to be dead."""
    since = datetime.now(timezone.utc) - timedelta(seconds=WORKER_GONE_AFTER_S)
    return [w.name for w in client.read_workers_for_work_pool(pool)
            if w.name not in dead and w.last_heartbeat_time and w.last_heartbeat_time >= since]


def crash(client, run, why: str) -> None:
    state = Crashed(message=why)
    # force: a Cancelling run may not go to Crashed by the normal rules; the transition out of
    # Running/Cancelling is what frees the deployment's concurrency slot.
    client.set_flow_run_state(run.id, state, force=True)
    print(f"stale_runs: {run.name} ({run.id}) was {run.state.name}: now Crashed ({why})", flush=True)
    try:
        write_stopped_summary(client, client.read_flow(run.flow_id).name, run, state)
    except Exception as exc:   # the summary is a report; the run is ended either way
        print(f"stale_runs: no summary artifact for {run.name}: {type(exc).__name__}: {exc}", flush=True)


def crash_orphans(pool: str, dead: tuple[str, ...] = ()) -> int:
    """Crash the pool's unfinished runs when no worker of the pool is alive. Returns how many.
    `dead`: workers known to be gone although their last heartbeat is recent (prefect_local.sh's own
    previous worker, which it has just stopped or found dead)."""
    with get_client(sync_client=True) as client:
        runs = unfinished_runs(client, pool)
        if not runs:
            return 0
        alive = live_workers(client, pool, dead)
        if alive:
            print(f"stale_runs: {len(runs)} unfinished run(s) in pool {pool}, and worker(s) {alive} still "
                  "alive: left to them", flush=True)
            return 0
        for run in runs:
            crash(client, run, f"its process is gone: no worker of pool {pool} was alive to finish it "
                               "(stopped mid-run, killed, or the machine went down); ended so later runs "
                               "of the deployment are not blocked")
        return len(runs)


def stop_runs(pool: str, wait_s: float) -> int:
    """Cancel the pool's in-flight runs, wait up to `wait_s` for them to end, crash what is left."""
    with get_client(sync_client=True) as client:
        runs = unfinished_runs(client, pool)
        for run in runs:
            if run.state.type != StateType.CANCELLING:
                print(f"stale_runs: cancelling {run.name} ({run.id}): the worker is being stopped", flush=True)
                client.set_flow_run_state(run.id, Cancelling(message="cancelled: prefect_local.sh is stopping "
                                                                      "its worker"), force=True)
        deadline = time.monotonic() + wait_s
        while runs and time.monotonic() < deadline:
            time.sleep(1)
            runs = unfinished_runs(client, pool)
        for run in runs:
            crash(client, run, f"not finished {wait_s:.0f} s after it was cancelled, when prefect_local.sh "
                               "stopped its worker")
        if not runs:
            print(f"stale_runs: no run of pool {pool} left in flight", flush=True)
        return len(runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.stale_runs", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["stop-runs", "crash-orphans"])
    parser.add_argument("--pool", default=POOL)
    parser.add_argument("--wait", type=float, default=60.0, help="stop-runs: seconds to wait for the runs to end")
    parser.add_argument("--dead-worker", action="append", default=[],
                        help="crash-orphans: a worker known to be gone, whatever its last heartbeat")
    args = parser.parse_args(argv)
    if args.action == "stop-runs":
        stop_runs(args.pool, args.wait)
    else:
        crash_orphans(args.pool, tuple(args.dead_worker))
    return 0


if __name__ == "__main__":
    sys.exit(main())
