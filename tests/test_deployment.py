"""The deployment end to end, the way scripts/prefect_local.sh runs it: a real Prefect server on a free
loopback port with its own PREFECT_HOME, a process work pool, `prefect --no-prompt deploy --all` from
this project's prefect.yaml (parameters pointed at a tiny config), a worker, and
`prefect deployment run collect-and-train/nightly --watch`. Also: the nightly cron schedule creates
scheduled runs. Every process started here is stopped (worker before server), even on failure.
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

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = self.tmp / f"{name}.log"
        self.logs[name] = log
        proc = subprocess.Popen([PREFECT, *args], cwd=self.tmp, env=self.env, stdout=open(log, "wb"),
                                stderr=subprocess.STDOUT, start_new_session=True)
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

    def stop(self) -> None:
        for name, proc in reversed(self.procs):          # the worker (started last) first
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            try:                                          # anything it left in its own session
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path)
    try:
        yield s
    finally:
        s.stop()


def test_nightly_deployment_runs_on_a_worker_and_is_scheduled(stack, tmp_path):
    t0 = time.monotonic()
    config = tiny_config(tmp_path, free_port())
    stack.start("server", "server", "start", "--host", "127.0.0.1", "--port", str(stack.port), "--no-ui")
    stack.wait_healthy()

    # prefect.yaml as shipped, with the parameters pointed at the tiny config.
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    for d in spec["deployments"]:
        d["parameters"] = {"config_path": str(config), "overrides": {}}
    project_file = tmp_path / "prefect.yaml"
    project_file.write_text(yaml.safe_dump(spec, sort_keys=False))

    stack.cli("work-pool", "create", POOL, "--type", "process")
    stack.cli("gcl", "create", "mlc-flickr", "--limit", "1")
    stack.cli("--no-prompt", "deploy", "--all", "--prefect-file", str(project_file), cwd=ROOT, timeout=180)

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

    done = stack.post("/flow_runs/filter", {
        "deployments": {"id": {"any_": [nightly["id"]]}},
        "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}})
    assert len(done) == 1
    arts = stack.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [done[0]["id"]]}}})
    by_key = {a["key"]: a for a in arts}
    assert {"mlc-run-summary", "mlc-per-class-metrics", "mlc-rejected-by-reason", "mlc-mined-negatives",
            "mlc-download-progress"} <= set(by_key), sorted(by_key)
    assert "Completed" in by_key["mlc-run-summary"]["data"]
    assert float(by_key["mlc-download-progress"]["data"]) == 100.0
    assert (tmp_path / "data" / "reports" / "latest.html").is_file()

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
