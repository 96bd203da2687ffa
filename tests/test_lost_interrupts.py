"""A Ctrl-C that lands in a finalizer is not lost (audit dayone26 D2).

`mlc run` on a fresh data root: Ctrl-C a second after training started printed "Exception ignored
in: <finalize object ...> KeyboardInterrupt" (the signal had landed in urllib3's pool finalizers,
which the garbage collector ran as training allocated), and the run trained, mined and exited 0.
Real `mlc run` processes on the bundled server's tiny world; the signals are real signals."""

import gc
import os
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pytest
from helpers import ENV, MLC, free_port, tiny_config, write_config

from mlc_pipeline import interrupts


def default_sigint() -> None:
    """In the child: Ctrl-C as in a terminal (a shell's background job starts with SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def signal_inside_a_finalizer() -> None:
    """What a Ctrl-C arriving while the garbage collector runs a finalizer does: Python's handler
    raises KeyboardInterrupt at the next bytecode, here, inside the finalizer."""
    os.kill(os.getpid(), signal.SIGINT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pass


class Garbage:
    """Something only the cycle collector frees (as collect's connection pools were)."""

    def __init__(self):
        self.me = self


def test_an_interrupt_raised_inside_a_finalizer_is_raised_again_at_the_next_check(monkeypatch):
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)      # put back after the test
    # Python's own Ctrl-C handler, whatever an earlier test in this process left (an in-process `mlc`
    # installs the CLI's): in the whole suite the signal was not raised in the finalizer at all
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        kept_and_raised_again()
    finally:
        signal.signal(signal.SIGINT, previous)


def kept_and_raised_again() -> None:
    interrupts.install()
    interrupts.check()                      # nothing kept: nothing raised
    junk = Garbage()
    weakref.finalize(junk, signal_inside_a_finalizer)
    del junk
    gc.collect()                            # the finalizer runs, the interrupt is raised in it: and swallowed
    with pytest.raises(KeyboardInterrupt):
        interrupts.check()
    interrupts.check()                      # raised once, then forgotten
    # any other exception in a finalizer still goes to the hook that was there before
    seen = []
    hook, interrupts._previous_hook = interrupts._previous_hook, seen.append
    junk = Garbage()
    weakref.finalize(junk, lambda: 1 / 0)
    del junk
    gc.collect()
    interrupts._previous_hook = hook
    assert [type(u.exc_value) for u in seen] == [ZeroDivisionError]
    interrupts.check()


def test_collect_closes_its_connection_pools(tmp_path):
    """Left open, collect's pools were closed by their finalizers in the next stage (49 of them,
    0.56 s, in the audit's run): a Ctrl-C was likely to land in one."""
    from urllib3 import HTTPConnectionPool

    from mlc_pipeline.collect.stage import collect
    from mlc_pipeline.config import load_config
    before = {id(o) for o in gc.get_objects() if isinstance(o, HTTPConnectionPool)}
    summary = collect(load_config(write_config(tmp_path, count=12)), progress=False)
    assert summary.downloaded > 0 and summary.api_calls > 0
    made = [o for o in gc.get_objects() if isinstance(o, HTTPConnectionPool) and id(o) not in before]
    assert made, "collect made connection pools (the API's and the downloads')"
    left_open = [f"{o.host}:{o.port}" for o in made if o.pool is not None]
    assert not left_open, f"pools collect left to the garbage collector: {left_open}"


HARNESS = f"""
import gc, logging, sys, weakref
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_lost_interrupts import Garbage, signal_inside_a_finalizer
from mlc_pipeline import cli

class AtTrainingStart(logging.Handler):
    def emit(self, record):
        if record.getMessage().startswith("training "):
            junk = Garbage()
            weakref.finalize(junk, signal_inside_a_finalizer)
            del junk
            gc.collect()

logging.getLogger("mlc_pipeline.model.train").addHandler(AtTrainingStart())
sys.argv[0] = "mlc"
cli.entry()
"""


def assert_interrupted_in_one_line(res: subprocess.CompletedProcess) -> None:
    assert res.returncode == 130, res.stderr[-3000:]
    assert res.stderr.strip().splitlines()[-1].startswith("mlc: interrupted; rerun the same command"), res.stderr[-3000:]
    assert "Exception ignored" not in res.stderr and "Traceback" not in res.stderr, res.stderr[-3000:]


@pytest.mark.slow
def test_ctrl_c_swallowed_by_a_finalizer_at_training_start_still_stops_the_run(tmp_path):
    """Deterministic: the SIGINT is sent from inside a finalizer the garbage collector runs just as
    training starts, where the audit's landed by chance."""
    cfg = tiny_config(tmp_path, free_port())
    res = subprocess.run([sys.executable, "-c", HARNESS, "run", "-c", str(cfg), "--no-progress",
                          "--set", "train.epochs=2"], env=ENV, text=True, capture_output=True,
                         preexec_fn=default_sigint, timeout=600)
    assert "training " in res.stderr, res.stderr[-3000:]
    assert_interrupted_in_one_line(res)
    assert "epoch 1:" not in res.stderr, "stopped at the first batch, not after the epoch"
    assert not (tmp_path / "data" / "models" / "LATEST").exists(), "no model shipped"


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.3])    # one delay: each run is a whole collect (~40-70 s); the test above is the proof
def test_ctrl_c_as_a_fresh_run_starts_training_exits_130_in_one_line(tmp_path, delay):
    """The audit's case: a real Ctrl-C from outside, `delay` s after a fresh `mlc run` (collect in the
    same process) says it is training."""
    cfg = tiny_config(tmp_path, free_port())
    err_path = tmp_path / "err.txt"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(MLC + ["run", "-c", str(cfg), "--no-progress", "--set", "train.epochs=3"], env=ENV,
                                text=True, stdout=subprocess.DEVNULL, stderr=err, preexec_fn=default_sigint)
        t0 = time.monotonic()
        while "INFO mlc_pipeline.model.train: training " not in err_path.read_text():
            assert proc.poll() is None, err_path.read_text()[-3000:]
            assert time.monotonic() - t0 < 300, "no training within 300 s"
            time.sleep(0.02)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    res = subprocess.CompletedProcess(proc.args, proc.returncode, "", err_path.read_text())
    assert_interrupted_in_one_line(res)
