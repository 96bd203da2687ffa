"""Helpers shared by the tests (importable because tests/conftest.py puts tests/ on sys.path).
Fixtures built on them are in conftest.py; the synthetic image world for model tests is shapes.py."""

from __future__ import annotations

import hashlib
import os
import select
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest


def tree_digest(folder: Path) -> str:
    "One sha256 over every file below `folder`: relative path and bytes, in sorted order."
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            h.update(f.relative_to(folder).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the `mlc` command as a user runs it: a subprocess, with no Flickr key in its environment
MLC = [sys.executable, "-m", "mlc_pipeline.cli"]
ENV = {k: v for k, v in os.environ.items() if not k.startswith("FLICKR_")}
# `mlc` that prints its own peak memory (VmHWM, KB) as the last line of stderr: `PEAK_KB <n>`.
# VmHWM, not ru_maxrss: ru_maxrss survives fork + exec, so late in the suite it reported the pytest
# parent's ~2 GB instead of this process's peak (measured: a 2.4 GB parent, a child reading 2397 MB).
MEASURED = [sys.executable, "-c", "import sys\nfrom mlc_pipeline.cli import main\nrc = main(sys.argv[1:])\n"
            "hwm = next(line for line in open('/proc/self/status') if line.startswith('VmHWM:'))\n"
            "print('PEAK_KB', hwm.split()[1], file=sys.stderr)\nsys.exit(rc)"]


def write_config(tmp_path: Path, faults: str = "", count: int = 40, data: str = "data", **source) -> Path:
    extra = "".join(f"\n  {k}: {v}" for k, v in source.items())
    p = tmp_path / f"{data}.yaml"
    p.write_text(f"""
data_dir: {tmp_path / data}
source:
  kind: local
  local: {{seed: 3, scale: 0.3, port: {free_port()}, faults: "{faults}"}}
  sizes: [url_n, url_m]
  retry: {{attempts: 3, base_delay_s: 0.01, max_delay_s: 0.05}}{extra}
classes:
  balloon: {{queries: [balloon], count: {count}}}
  kite: {{queries: [kite], count: {count}}}
other: {{queries: [landscape, texture], count: {count}}}
""")
    return p


def tiny_config(folder: Path, port: int) -> Path:
    """The tiny project of the end-to-end tests (flow, deployment, `mlc run`): two classes of 20, a
    handful of negatives, probes and pool images from the bundled server; 1 epoch at 32 px."""
    path = folder / "tiny.yaml"
    path.write_text(textwrap.dedent(f"""\
        data_dir: {folder / 'data'}
        source:
          kind: local
          local: {{seed: 0, scale: 0.1, port: {port}}}
          sizes: [url_n, url_m]
          retry: {{attempts: 2, base_delay_s: 0.05, max_delay_s: 0.2}}
        classes:
          balloon: {{queries: ["balloon"], count: 20}}
          kite: {{queries: ["kite"], count: 20}}
        other: {{queries: ["landscape", "texture"], count: 24}}
        probe: {{queries: ["house"], count: 6}}
        # One epoch at 32 px scores everything alike: the default cap on unknowns would then accept no
        # pool image, and the default hold (a class's typical validation score) would hold every one
        # it accepts, leaving nothing to mine. These tests are about the flow's wiring (mining -> v2);
        # the cap is tested in model/test_metrics and test_train, the hold in model/test_mine.
        train: {{epochs: 1, image_size: 32, batch_size: 32, pretrained: none,
                 max_unknown_accepted: null}}
        mine:
          rounds: 1
          pool: {{queries: ["toys", "shapes"], count: 24}}
          hold_above: 1.01
        """))
    return path


def bucket_config(folder: Path, endpoint: str, bucket: str, cache: str) -> Path:
    """`tiny_config`'s project with its data root in `bucket` (an S3 server at `endpoint`) and its cache
    in `folder/cache`: the config file `folder/<cache>.yaml`."""
    import yaml
    base = yaml.safe_load((folder / "tiny.yaml").read_text())     # one offline world (and port) for all
    base.update(data_dir=f"s3://{bucket}/proj", cache_dir=str(folder / cache),
                storage_options={"endpoint_url": endpoint})
    path = folder / f"{cache}.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


# --- another process holding a data root's lock --------------------------------------------

def holding(lock: str, data_dir: Path, command: str) -> subprocess.Popen:
    """Another process holding `lock` (a locking function's name) until `release(it)`: no timing
    assumption, so a loaded machine cannot let it go before the test has looked."""
    code = (f"import sys, time\nfrom mlc_pipeline.locking import {lock}\n"
            f"with {lock}(sys.argv[1], {command!r}):\n    print('held', flush=True)\n    sys.stdin.read()\n"
            "print(time.time(), flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(data_dir)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def release(holder: subprocess.Popen) -> float:
    """Let a `holding` process's lock go; the time it did."""
    holder.stdin.close()
    released = float(holder.stdout.readline())
    holder.wait(timeout=30)
    return released


def queued(argv: list[str], timeout: float = 60) -> subprocess.Popen:
    """A command started beside a held lock, returned once it has said that it waits for the lock
    (stderr read up to that line; `communicate()` gives the rest). A command that neither says so
    nor exits within `timeout` seconds is killed and fails the test instead of hanging it."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    fd, said, deadline = proc.stderr.fileno(), b"", time.monotonic() + timeout
    # Raw reads under select, not `for line in proc.stderr`: a command that hangs silently would
    # block that loop forever. The command blocks on the lock right after its line, so nothing it
    # writes later is read here (and lost to communicate()).
    while b"waiting for it to finish" not in said:
        left = deadline - time.monotonic()
        ready = select.select([fd], [], [], max(left, 0))[0] if left > 0 else []
        chunk = os.read(fd, 65536) if ready else None
        if not chunk:
            if chunk is None:
                proc.kill()
            proc.wait(timeout=30)
            why = f"exit {proc.returncode}" if chunk is not None else f"no lock wait within {timeout:.0f} s (killed)"
            raise AssertionError(f"{why} without waiting for the lock: {said.decode(errors='replace')[-2000:]}")
        said += chunk
    return proc


# --- TCP servers on loopback in front of a real one (the object-store fault tests) --------------

class Listener:
    """A TCP server on a free loopback port (`address`, as an http URL) that hands each connection to
    `connected`, in its accept thread, until `close()`."""

    def __init__(self, backlog: int = 64):
        self.server = socket.create_server(("127.0.0.1", 0), backlog=backlog)
        self.address = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:         # closed: the test is over
                return
            self.connected(client)

    def connected(self, client: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.server.close()


class Gateway(Listener):
    """A front to the server on loopback `port`, with a connection to it for each of its own (unless
    `admit` says no). Each chunk of a request and of an answer is shown to `request` and `answer`, with
    the connection's namespace (`client`, `upstream`), before it passes; one that raises an OSError ends
    the connection. An ended connection's two sockets are `hang_up`'s (closed). Subclasses set their
    own fields before calling __init__: the accept thread starts in it."""

    def __init__(self, port: int, backlog: int = 64):
        self.port, self.lock = port, threading.Lock()
        super().__init__(backlog)

    def connected(self, client: socket.socket) -> None:
        if not self.admit(client):
            return
        conn = SimpleNamespace(client=client, upstream=socket.create_connection(("127.0.0.1", self.port)))
        for src, dst, seen in ((client, conn.upstream, self.request), (conn.upstream, client, self.answer)):
            threading.Thread(target=self._pipe, args=(conn, src, dst, seen), daemon=True).start()

    def _pipe(self, conn: SimpleNamespace, src: socket.socket, dst: socket.socket, seen) -> None:
        try:
            while data := src.recv(65536):
                seen(conn, data)
                dst.sendall(data)
        except OSError:             # refused by a hook, or the other direction ended both
            pass
        self.hang_up(src, dst)

    def admit(self, client: socket.socket) -> bool:
        return True

    def request(self, conn: SimpleNamespace, data: bytes) -> None:
        pass

    def answer(self, conn: SimpleNamespace, data: bytes) -> None:
        pass

    @staticmethod
    def hang_up(*socks: socket.socket) -> None:
        for s in socks:
            s.close()


# --- what a flow run left on the Prefect API (the in-process flow tests, tests/test_flow*.py) ------

def artifacts_of(flow_run_id) -> dict[str, list]:
    """The run's artifacts by key."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    out: dict[str, list] = {}
    for a in found:
        out.setdefault(a.key or f"(no key: {a.type})", []).append(a)
    return out


def logs_of(flow_run_id) -> list:
    """The run's log records as the API holds them (what the UI and `prefect flow-run logs` show)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()         # the records still queued in this process are sent first
    with get_client(sync_client=True) as client:
        return client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))


# --- disk faults, in a user + mount namespace ---------------------------------------------------

def namespaces_work() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null || "
                            "mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True, timeout=30)
    return probe.returncode == 0


needs_namespaces = pytest.mark.skipif(not namespaces_work(), reason="unprivileged user+mount namespaces unavailable")


REPO = Path(__file__).resolve().parents[1]               # the project's root
FIXTURES = REPO.parent / "shared" / "fixtures"           # real photos, beside the checkout (never copied in)


def hymenoptera_world(tmp_path: Path, ants: int, bees: int, extra: dict | None = None):
    """A folder-mode world of the first fixture ants and bees (classes "ants", "bees") and a few
    scenery photos ("other"), with `extra` images saved into it by relative path; (cfg, world)."""
    from mlc_pipeline.config import parse_config
    hymenoptera = FIXTURES / "hymenoptera"
    world = tmp_path / "world"
    for name, files in (("ants", sorted((hymenoptera / "ants").glob("*.jpg"))[:ants]),
                        ("bees", sorted((hymenoptera / "bees").glob("*.jpg"))[:bees]),
                        ("scenery", sorted((hymenoptera / "ants").glob("*.jpg"))[100:103])):
        (world / name).mkdir(parents=True)
        for f in files:
            shutil.copy(f, world / name / f.name)
    for rel, im in (extra or {}).items():
        im.save(world / rel)
    return parse_config({
        "data_dir": str(tmp_path / "data"),
        "source": {"kind": "local", "licenses": "any", "sizes": ["url_m", "url_n", "url_s"],
                   "local": {"port": 0, "folder": str(world),
                             "query_map": {"ants": "ants", "bees": "bees", "scenery": "scenery"}}},
        "classes": {"ants": {"queries": ["ants"], "count": 100}, "bees": {"queries": ["bees"], "count": 100}},
        "other": {"queries": ["scenery"], "count": 3}, "build": {"max_side": 96}}), world


def named_for(cfg, stem: str, suffix: str, split: str) -> str:
    "A path under ants/ whose photo id `split_of` puts in `split`."
    from mlc_pipeline.dataset.splits import split_of
    from mlc_pipeline.flickr_server.folder import photo_id_for
    return next(rel for k in range(1000)
                if split_of("local", photo_id_for(rel := f"ants/{stem}_{k}{suffix}"), cfg.build.split) == split)


def copy_of_a_training_ant(tmp_path: Path):
    """A hymenoptera world (16 ants, 6 bees) with a 3/4-size re-encode of an ant that its photo id puts
    in train, at a path whose photo id is test's; collected and curated, so the copy is a duplicate of
    the ant. (cfg, the ant's source_file, the copy's, {source_file: candidate id})."""
    from PIL import Image
    from mlc_pipeline.catalog import Catalog
    from mlc_pipeline.collect.stage import collect
    from mlc_pipeline.curate.stage import curate
    from mlc_pipeline.dataset.splits import split_of
    from mlc_pipeline.flickr_server.folder import photo_id_for
    cfg, world = hymenoptera_world(tmp_path, ants=16, bees=6)
    ant = next(f for f in sorted((world / "ants").glob("*.jpg"))
               if split_of("local", photo_id_for(f"ants/{f.name}"), cfg.build.split) == "train")
    copy = named_for(cfg, "copy", ".jpg", "test")
    im = Image.open(ant).convert("RGB")
    im.resize((im.width * 3 // 4, im.height * 3 // 4), Image.Resampling.LANCZOS).save(world / copy, quality=85)
    original = f"ants/{ant.name}"
    collect(cfg, progress=False)
    curate(cfg)
    with Catalog(cfg.catalog_path) as c:
        rows = {r["source_file"]: r for r in c.candidates()}
    assert rows[copy]["status"] == "duplicate" and rows[copy]["duplicate_of"] == rows[original]["id"], rows[copy]
    return cfg, original, copy, {f: r["id"] for f, r in rows.items()}


def kill_after_its_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next takedown (curate.takedown.remove_photos) raises KeyboardInterrupt right after its
    commit, before it deletes the files it recorded (undo with `monkeypatch.undo()`)."""
    from mlc_pipeline.curate import takedown
    real, calls = takedown.delete_recorded_files, []

    def killed_after_commit(catalog):
        calls.append(1)
        if len(calls) == 2:             # the first call finishes earlier takedowns; the second is this one's
            raise KeyboardInterrupt
        return real(catalog)
    monkeypatch.setattr(takedown, "delete_recorded_files", killed_after_commit)
