"""The deployment end to end, the way scripts/prefect_local.sh runs it: a real Prefect server on a free
loopback port with its own PREFECT_HOME, a process work pool, `prefect --no-prompt deploy --all` from
this project's prefect.yaml (parameters pointed at a tiny config), a worker, and
`prefect deployment run collect-and-train/nightly --watch`. Also: the nightly cron schedule creates
scheduled runs. Every process started here is stopped (worker before server), even on failure.

The server, the pool and the deployment are the module's (`server`), made once: each test starts its own
worker, and the runs of the tests after the first name their own config (`--param config_path=`, their
own data root). After each test its workers are stopped and taken off the pool, and any run it left
unfinished is cancelled, so the next test finds the pool as the deploy left it (`stack`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from helpers import free_port, tiny_config
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PREFECT = str(BIN / "prefect") if (BIN / "prefect").exists() else "prefect"
POOL = "mlc-local"
pytestmark = pytest.mark.slow


def tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else "(no log)"


class Stack:
    """The processes of a local Prefect setup; stop() ends them worker first, then the server."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        self.env.update(PREFECT_HOME=str(tmp / "prefect-home"), PREFECT_API_URL=self.api,
                        PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_WORKER_QUERY_SECONDS="2",
                        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="5", PYTHONUNBUFFERED="1",
                        PREFECT_LOGGING_EXTRA_LOGGERS="mlc_pipeline")
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.logs: dict[str, Path] = {}
        self.started = 0

    def start(self, name: str, *args: str) -> subprocess.Popen:
        self.started += 1
        log = self.tmp / f"{self.started}-{name}.log"         # each test's worker a log of its own
        self.logs[name] = log
        # SIGINT restored to its default, as prefect_local.sh does: pytest run in the background (CI) hands
        # its children SIGINT ignored, and Prefect turns the SIGTERM that stops a worker into a SIGINT,
        # which then did nothing: each worker stopped only at the SIGKILL 30 s later (two 31 s teardowns).
        proc = subprocess.Popen([PREFECT, *args], cwd=self.tmp, env=self.env, stdout=open(log, "wb"),
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.procs.append((name, proc))
        return proc

    def cli(self, *args: str, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
        out = subprocess.run([PREFECT, *args], cwd=cwd or self.tmp, env=self.env, capture_output=True,
                             text=True, timeout=timeout)
        assert out.returncode == 0, f"prefect {' '.join(args)} -> {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        return out

    def wait_healthy(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            name, server = self.procs[0]
            assert server.poll() is None, f"server exited:\n{tail(self.logs[name])}"
            try:
                if httpx.get(f"{self.api}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"server not healthy after {timeout}s:\n{tail(self.logs['server'])}")

    def get(self, path: str):
        r = httpx.get(f"{self.api}{path}", timeout=30)
        r.raise_for_status()
        return r.json()

    def post(self, path: str, body: dict):
        r = httpx.post(f"{self.api}{path}", json=body, timeout=30)
        r.raise_for_status()
        return r.json()

    def stop(self, since: int = 0) -> list[str]:
        """Stop the processes started since the `since`-th, the last started first (a worker before the
        server); the names of those that SIGTERM did not stop within 30 s (killed)."""
        killed = []
        for name, proc in reversed(self.procs[since:]):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    killed.append(name)
                    proc.kill()
                    proc.wait(timeout=10)
            try:                                          # anything it left in its own session
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        del self.procs[since:]
        return killed

    def end_the_tests_leftovers(self) -> None:
        """The pool as the deploy left it: no worker on record (a stopped one would count as alive for
        `crash-orphans` for 90 s), no run of a test's left unfinished for the next test's worker (the
        cron schedule's own future runs stay)."""
        for worker in self.post(f"/work_pools/{POOL}/workers/filter", {}):
            httpx.delete(f"{self.api}/work_pools/{POOL}/workers/{worker['name']}", timeout=30).raise_for_status()
        left = self.post("/flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": [
            "SCHEDULED", "PENDING", "RUNNING", "CANCELLING", "PAUSED"]}}}})
        for run in left:
            if not run["auto_scheduled"]:
                self.post(f"/flow_runs/{run['id']}/set_state",
                          {"state": {"type": "CANCELLED", "message": "left by a failed test"}, "force": True})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A Prefect server up, the pool and the `mlc-flickr` limit made, and prefect.yaml as shipped, its
    parameters pointed at a tiny config (`Stack.config`), deployed from this checkout."""
    tmp = tmp_path_factory.mktemp("prefect")
    s = Stack(tmp)
    try:
        s.config = tiny_config(tmp, free_port())
        s.start("server", "server", "start", "--host", "127.0.0.1", "--port", str(s.port), "--no-ui")
        s.wait_healthy()
        spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
        for d in spec["deployments"]:
            d["parameters"] = {"config_path": str(s.config), "overrides": {}}
        (tmp / "prefect.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        s.cli("work-pool", "create", POOL, "--type", "process")
        s.cli("gcl", "create", "mlc-flickr", "--limit", "1")
        s.cli("--no-prompt", "deploy", "--all", "--prefect-file", str(tmp / "prefect.yaml"), cwd=ROOT, timeout=180)
        yield s
    finally:
        s.stop()


@pytest.fixture
def stack(server):
    """The module's server for one test: the workers it starts are stopped after it, by SIGTERM (one
    only SIGKILL stops fails the test), and what it left on the server is ended (Stack.end_the_tests_leftovers)."""
    started = len(server.procs)
    yield server
    killed = server.stop(since=started)
    server.end_the_tests_leftovers()
    assert not killed, f"{killed} did not stop at SIGTERM within 30 s"


def run_id_in(cli_output: str) -> str:
    """The flow run id that `prefect deployment run` printed (`└── UUID: <id>`)."""
    words = cli_output.split()
    return words[words.index("UUID:") + 1]


def test_nightly_deployment_runs_on_a_worker_and_is_scheduled(stack, tmp_path):
    """The deployment's own parameters (the module's tiny config), as the schedule would run it."""
    t0 = time.monotonic()
    nightly = stack.get("/deployments/name/collect-and-train/nightly")
    assert stack.get("/deployments/name/rebuild-report/rebuild-report")["work_pool_name"] == POOL
    assert nightly["work_pool_name"] == POOL
    limit = nightly.get("concurrency_limit") or (nightly.get("global_concurrency_limit") or {}).get("limit")
    assert limit == 1
    [schedule] = nightly["schedules"]
    assert schedule["schedule"]["cron"] == "0 2 * * *" and schedule["schedule"]["timezone"] == "UTC"
    [pull] = nightly["pull_steps"]
    assert pull["prefect.deployments.steps.set_working_directory"]["directory"] == str(ROOT)

    stack.start("worker", "worker", "start", "--pool", POOL)
    run = subprocess.run([PREFECT, "deployment", "run", "collect-and-train/nightly", "--watch",
                          "--watch-timeout", "300"], cwd=tmp_path, env=stack.env, capture_output=True,
                         text=True, timeout=330)
    assert run.returncode == 0, (f"{run.stdout[-4000:]}\n{run.stderr[-2000:]}\n--- worker log ---\n"
                                 f"{tail(stack.logs['worker'], 8000)}")
    assert "Completed" in run.stdout

    done = [stack.get(f"/flow_runs/{run_id_in(run.stdout)}")]
    assert done[0]["deployment_id"] == nightly["id"] and done[0]["state"]["type"] == "COMPLETED", done[0]
    arts = stack.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [done[0]["id"]]}}})
    by_key = {a["key"]: a for a in arts}
    assert {"mlc-run-summary", "mlc-per-class-metrics", "mlc-rejected-by-reason", "mlc-mined-negatives",
            "mlc-download-progress"} <= set(by_key), sorted(by_key)
    assert "Completed" in by_key["mlc-run-summary"]["data"]
    assert float(by_key["mlc-download-progress"]["data"]) == 100.0
    assert (stack.config.parent / "data" / "reports" / "latest.html").is_file()
    # The library's INFO lines reach the run's logs on a worker, as docs/orchestration.md says (the
    # nightly25 audit: only its warnings did, the `mlc_pipeline` logger inheriting the root's WARNING)
    logs: list[dict] = []
    while page := stack.post("/logs/filter", {"logs": {"flow_run_id": {"any_": [done[0]["id"]]}},
                                              "limit": 200, "offset": len(logs)}):
        logs += page
    library = [(r["level"], r["name"], r["message"]) for r in logs if r["name"].startswith("mlc_pipeline")]
    assert [m for level, _, m in library if level == 20 and m.startswith("epoch 1: train loss")], library
    assert min(level for level, _, _ in library) == 20, library

    # The cron schedule: the scheduler service fills in the next runs, each at 02:00 UTC.
    deadline = time.monotonic() + 60
    scheduled: list = []
    while time.monotonic() < deadline and not scheduled:
        scheduled = stack.post("/flow_runs/filter", {
            "deployments": {"id": {"any_": [nightly["id"]]}},
            "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}})
        if not scheduled:
            time.sleep(2)
    assert scheduled, "the nightly schedule created no scheduled runs"
    for r in scheduled:
        start = datetime.fromisoformat(r["expected_start_time"].replace("Z", "+00:00"))
        assert (start.hour, start.minute, start.utcoffset().total_seconds()) == (2, 0, 0), start
    print(f"deployment test: {time.monotonic() - t0:.0f} s; {len(scheduled)} scheduled runs; "
          f"{json.dumps([r['expected_start_time'] for r in scheduled])}")


# ------------------------------------------------------------------ runs whose process is gone

def flow_run_pids(flow_run_id: str) -> list[int]:
    """Processes of this user that run the given flow run (the worker passes its id in the environment)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            marker = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
            if proc.name.isdigit() and marker in (proc / "environ").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            pass
    return pids


def run_state(stack: Stack, flow_run_id: str) -> dict:
    return stack.get(f"/flow_runs/{flow_run_id}")["state"]


def wait_for_state(stack: Stack, flow_run_id: str, types: set[str], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = run_state(stack, flow_run_id)
        if state["type"] in types:
            return state
        time.sleep(0.5)
    raise AssertionError(f"run {flow_run_id} still {run_state(stack, flow_run_id)} after {timeout}s:\n"
                         f"{tail(stack.logs['worker'], 6000)}")


def stale_runs(stack: Stack, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "flows.stale_runs", *args], cwd=ROOT, env=stack.env,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_runs_of_a_stopped_or_dead_worker_do_not_block_the_deployment(stack, tmp_path):
    """What prefect_local.sh does when it stops (cancel the pool's runs, then its worker) and when it
    starts after a worker died mid-run (crash what it left Running): either way the run ends in a final
    state, the deployment's concurrency slot is free, and the run has a summary saying what happened.
    The runs are held mid-flow by the data root's lock (held here), as a long stage would hold them."""
    from mlc_pipeline.locking import data_root_lock

    config = tiny_config(tmp_path, free_port())
    nightly = stack.get("/deployments/name/collect-and-train/nightly")

    # Pausing the nightly schedule as docs/orchestration.md says (`pause <deployment> --all` is refused)
    listed = stack.cli("deployment", "schedule", "ls", "collect-and-train/nightly", "-o", "json").stdout
    [schedule] = json.loads(listed)
    stack.cli("deployment", "schedule", "pause", "collect-and-train/nightly", schedule["id"])
    assert [s["active"] for s in stack.get(f"/deployments/{nightly['id']}")["schedules"]] == [False]
    stack.cli("deployment", "schedule", "resume", "collect-and-train/nightly", schedule["id"])
    assert [s["active"] for s in stack.get(f"/deployments/{nightly['id']}")["schedules"]] == [True]

    def start_held_run() -> str:
        run_id = run_id_in(stack.cli("deployment", "run", "collect-and-train/nightly", "--param",
                                     f"config_path={config}").stdout)
        wait_for_state(stack, run_id, {"RUNNING"}, 180)
        deadline = time.monotonic() + 120   # into the flow body, waiting for the data root
        while not [r for r in stack.post("/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}})
                   if "in use by" in r["message"] and "waiting for it to finish" in r["message"]]:
            assert time.monotonic() < deadline, f"no wait for the data root:\n{tail(stack.logs['worker'], 6000)}"
            time.sleep(0.5)
        return run_id

    def slot_free() -> bool:
        limit = stack.get(f"/deployments/{nightly['id']}").get("global_concurrency_limit") or {}
        return limit.get("active_slots", 0) == 0

    def summary_of(run_id: str) -> str:
        arts = stack.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]},
                                                              "key": {"any_": ["mlc-run-summary"]}}})
        assert arts, f"no mlc-run-summary for {run_id}"
        return arts[0]["data"]

    with data_root_lock(tmp_path / "data", "test: a long stage"):
        # 1. The script stops: the pool's in-flight run is cancelled and ends before its worker stops.
        worker = stack.start("worker", "worker", "start", "--pool", POOL, "--name", "mlc-local-test")
        run_id = start_held_run()
        assert not slot_free()
        stale_runs(stack, "stop-runs", "--pool", POOL, "--wait", "90")
        assert run_state(stack, run_id)["type"] == "CANCELLED", run_state(stack, run_id)
        assert slot_free()
        assert "Cancelled" in summary_of(run_id) and "latest dataset version: **none**" in summary_of(run_id)

        # 2. The worker and its flow process are killed (-9): the run stays Running, holding the slot...
        run_id = start_held_run()
        for pid in [worker.pid, *flow_run_pids(run_id)]:
            for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
                try:
                    kill()
                except ProcessLookupError:
                    pass
        time.sleep(3)
        assert run_state(stack, run_id)["type"] == "RUNNING" and not slot_free()
        # ...while the dead worker's heartbeat is recent, only a worker named as dead does not count
        assert "still alive" in stale_runs(stack, "crash-orphans", "--pool", POOL)
        assert run_state(stack, run_id)["type"] == "RUNNING"
        out = stale_runs(stack, "crash-orphans", "--pool", POOL, "--dead-worker", "mlc-local-test")
        assert "now Crashed" in out, out
        assert run_state(stack, run_id)["type"] == "CRASHED" and slot_free()
        assert "Crashed" in summary_of(run_id)


def test_a_cancelled_collect_stops_before_the_data_root_is_let_go(stack, tmp_path):
    """`prefect flow-run cancel` mid-collect (the prefect28 audit, D1 and D2): the flow let the data root's
    lock go at once while its collect, in a task-runner thread the SIGTERM did not stop, downloaded for
    30 s more (until Prefect's SIGKILL), so another writer got the lock beside it; and the collect was
    recorded `crashed`. Now the collect stops at the cancel, as `mlc collect` does at SIGTERM, is recorded
    interrupted, and nothing is written into the data root once its lock is free."""
    from mlc_pipeline.catalog import Catalog
    from mlc_pipeline.config import load_config
    from mlc_pipeline.locking import lock_is_held

    config = tiny_config(tmp_path, free_port())
    stack.start("worker", "worker", "start", "--pool", POOL)
    data, raw = tmp_path / "data", tmp_path / "data" / "raw"
    slow = {"source": {"per_host_concurrency": 1, "local": {"faults": "image_latency_ms=400"}}}
    run_id = run_id_in(stack.cli("deployment", "run", "collect-and-train/nightly", "--param", f"config_path={config}",
                                 "--param", f"overrides={json.dumps(slow)}").stdout)

    def files() -> set[str]:
        return {p.name for p in raw.rglob("*") if p.is_file() and not p.name.startswith(".")}

    deadline = time.monotonic() + 240
    while len(files()) < 5:                 # mid-collect: downloading, ~2.5 images a second
        assert time.monotonic() < deadline, f"no downloads:\n{tail(stack.logs['worker'], 6000)}"
        assert run_state(stack, run_id)["type"] in ("SCHEDULED", "PENDING", "RUNNING"), run_state(stack, run_id)
        time.sleep(0.5)
    assert lock_is_held(data)
    cancelled = time.monotonic()
    stack.cli("flow-run", "cancel", run_id)
    while lock_is_held(data):               # what another writer (`mlc curate --no-wait`) would see
        assert time.monotonic() - cancelled < 90, f"lock still held:\n{tail(stack.logs['worker'], 6000)}"
        time.sleep(0.1)
    freed, at_free = time.monotonic() - cancelled, files()
    with Catalog(load_config(config).catalog_path, readonly=True) as catalog:
        rows_at_free = catalog.counts()
    state = wait_for_state(stack, run_id, {"CANCELLED", "CRASHED", "COMPLETED", "FAILED"}, 120)
    time.sleep(3)
    assert state["type"] == "CANCELLED", state
    assert files() == at_free, f"{len(files() - at_free)} files written after the lock was let go"
    with Catalog(load_config(config).catalog_path, readonly=True) as catalog:
        assert catalog.counts() == rows_at_free
        [collect] = [r for r in catalog.runs() if r["command"] == "collect"]
    assert collect["status"] == "interrupted", collect
    assert freed < 20, f"the collect went on {freed:.0f} s after the cancel"
