"""One writer per data root: real `mlc` processes against a small curated data root."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from mlc_pipeline.dataset.build import remove_stale_builds
from mlc_pipeline.dataset.verify import verify_version
from mlc_pipeline.locking import DataRootBusy, data_root_lock, holder
from storage_world import MLC, curated_root, last_line, mlc, mlc_start

HOLD = """
import sys
from mlc_pipeline.locking import data_root_lock
with data_root_lock(sys.argv[1], "test holder"):
    print("held", flush=True)
    sys.stdin.readline()          # hold until the test says so
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return curated_root(tmp_path_factory.mktemp("lock"))


def data_dir(cfg_path: Path) -> Path:
    return Path(yaml.safe_load(cfg_path.read_text())["data_dir"])


@pytest.fixture
def held(root):
    """Another process holding the data root's lock until the fixture ends."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(data_dir(root))], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield proc
    if proc.poll() is None:
        proc.stdin.write("\n")
        proc.stdin.flush()
    proc.wait(timeout=30)


def release(proc: subprocess.Popen) -> None:
    proc.stdin.write("\n")
    proc.stdin.flush()
    proc.wait(timeout=30)


def test_no_wait_fails_at_once_naming_the_holder(root, held):
    # The holder never lets go during this test: a command that returns at all did not wait.
    # (mine: with a pool configured; without one it is a config error before any lock, issue 17)
    for command in (["build"], ["curate"], ["train"], ["mine", "--set", "mine.pool={queries: [ants], count: 1}"],
                    ["collect", "--no-progress"], ["run"]):
        res = mlc(*command, "-c", str(root), "--no-wait")
        assert res.returncode == 75, (command, res.stderr)
        line = last_line(res.stderr)
        assert f"pid {held.pid}" in line and "test holder" in line and "in use" in line, line
        assert "Traceback" not in res.stderr, res.stderr


def test_a_second_writer_waits_then_goes_ahead(root, held):
    waiting = mlc_start("build", "-c", str(root))
    time.sleep(3)
    assert waiting.poll() is None                    # still waiting for the holder
    release(held)
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, err
    assert f"in use by pid {held.pid}" in err and "waiting" in err
    assert "dataset default v" in out


def waits_once(root: Path, held: subprocess.Popen, stdin) -> str:
    """`mlc build` beside the holder, with the given stdin; its stderr once it went ahead."""
    waiting = subprocess.Popen(MLC + ["build", "-c", str(root)], stdin=stdin, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    time.sleep(3)
    assert waiting.poll() is None                    # still waiting for the holder
    release(held)
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, err
    assert err.count("in use by") == 1 and err.count("free now") == 1, err      # one line each
    assert re.search(r"free now: mlc build goes ahead \(after waiting \d+ s\)", err), err
    return err


def test_the_wait_offers_ctrl_c_only_in_a_terminal(root, held):
    """The nightly25 audit: a worker's flow run was told "(Ctrl-C to stop)", which it cannot press."""
    err = waits_once(root, held, subprocess.DEVNULL)
    assert "waiting for it to finish" in err and "Ctrl-C" not in err, err


def test_the_wait_offers_ctrl_c_in_a_terminal(root, held):
    import pty

    main, terminal = pty.openpty()
    try:
        err = waits_once(root, held, terminal)
    finally:
        os.close(main)
        os.close(terminal)
    assert "waiting for it to finish (Ctrl-C to stop)" in err, err


def test_read_only_commands_never_take_the_lock(root, held):
    res = mlc("inspect", "-c", str(root), timeout=60)
    assert res.returncode == 0, res.stderr
    assert "in use" not in res.stderr


def test_two_builds_at_once_publish_one_complete_version(tmp_path):
    """Before the lock, one build deleted the other's .build-* folder and a version missing up to
    half its images was published with exit code 0."""
    cfg = curated_root(tmp_path, per_class=20)
    procs = [mlc_start("build", "-c", str(cfg)) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    root = data_dir(cfg) / "datasets" / "default"
    published = sorted(p.name for p in root.glob("v*"))
    assert published == ["v1"], published                      # the second one found it identical
    assert sum("published" in o and "unchanged" not in o for o, _ in outs) == 1
    rows = verify_version(root / "v1")                        # every manifest file present, hashes match
    assert len(rows) > 30 and all((root / "v1" / r["path"]).is_file() for r in rows)
    assert not list(root.glob(".build-*"))


def test_a_live_builds_folder_is_never_removed(tmp_path):
    live = tmp_path / f".build-v1-{__import__('os').getpid()}-abc"     # this process: alive
    live.mkdir()
    dead_proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f".build-v1-{dead_proc.stdout.strip()}"             # old naming, writer gone
    dead.mkdir()
    assert remove_stale_builds(tmp_path) == [dead]
    assert live.is_dir() and not dead.exists()


def test_lock_is_reentrant_in_a_process_and_released_after(tmp_path):
    with data_root_lock(tmp_path, "outer"):
        with data_root_lock(tmp_path, "inner", wait=False):      # mlc run -> build_dataset
            assert holder(tmp_path)["command"] == "outer"
        done = threading.Event()
        # a flow's task runs in a worker thread of the flow's process: it must not deadlock
        t = threading.Thread(target=lambda: (data_root_lock(tmp_path, "task", wait=False).__enter__(), done.set()))
        t.start()
        t.join(10)
        assert done.is_set()
    assert holder(tmp_path) is None
    probe = subprocess.run([sys.executable, "-c",
                            "import sys; from mlc_pipeline.locking import data_root_lock\n"
                            "with data_root_lock(sys.argv[1], 'probe', wait=False): print('ok')", str(tmp_path)],
                           capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "ok", probe.stderr


def test_a_killed_holder_leaves_the_root_free(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(DataRootBusy):
        with data_root_lock(tmp_path, "me", wait=False):
            pass
    proc.kill()
    proc.wait()
    with data_root_lock(tmp_path, "me", wait=False):
        assert holder(tmp_path)["pid"] != proc.pid


def test_lock_is_held_asks_without_creating_anything(tmp_path):
    """The probe `mlc curate` uses on a root with no catalog yet: it creates neither the root nor the
    lock file, and sees the lock held by another process or by its own."""
    from helpers import holding, release
    from mlc_pipeline.locking import lock_is_held
    assert not lock_is_held(tmp_path / "new") and not (tmp_path / "new").exists()
    holder_proc = holding("data_root_lock", tmp_path / "new", "mlc collect")
    try:
        assert lock_is_held(tmp_path / "new")
    finally:
        release(holder_proc)
    assert not lock_is_held(tmp_path / "new")
    with data_root_lock(tmp_path / "new", "mlc curate"):
        assert lock_is_held(tmp_path / "new")      # its own descriptor: this process's lock counts too


def test_a_data_root_that_takes_no_new_file_is_one_line_and_the_lock_is_let_go(tmp_path, monkeypatch):
    """The verify20 audit: a folder made immutable (chattr +i) opens its existing lock file but takes
    no new one; the holder's record (a temp file renamed into place) raised a raw PermissionError."""
    from mlc_pipeline import locking
    from mlc_pipeline.locking import ReadOnlyDataRoot, lock_is_held

    def refused(*args):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(locking, "_write_info", refused)
    with pytest.raises(ReadOnlyDataRoot, match=f"data root {tmp_path} is not writable .*make the data root writable"):
        with data_root_lock(tmp_path, "mlc curate"):
            pass
    assert not lock_is_held(tmp_path)


def test_the_lock_probe_on_a_data_root_under_a_file_says_not_held(tmp_path):
    from mlc_pipeline.locking import lock_is_held
    (tmp_path / "afile").write_text("not a folder")
    assert not lock_is_held(tmp_path / "afile" / "data")      # mlc curate then says what is wrong, in one line
