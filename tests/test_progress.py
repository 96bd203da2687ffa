"""Progress bars and stage summaries (mlc_pipeline/progress.py): drawn for a person at a terminal,
never into a pipe, off with --no-progress; log lines go above the bars, not through them."""

import io
import logging
import os
import pty
import subprocess
import sys

import pytest
from rich.console import Console

from helpers import ENV, MLC

from mlc_pipeline import progress
from mlc_pipeline.catalog import Catalog


@pytest.fixture
def recorded():
    """Progress forced on, drawn on a recording console; everything back as it was afterwards."""
    console = Console(record=True, file=io.StringIO(), width=120)
    progress.configure(True)
    progress.use_console(console)
    yield console
    progress.configure(None)
    progress.use_console(None)


def test_bars_summaries_and_log_lines_share_the_screen(recorded):
    handler = logging.StreamHandler(sys.stderr)
    logging.getLogger().addHandler(handler)
    try:
        with progress.bar("download kite", total=3) as outer:
            with progress.bar("verify + hash", total=2, unit="files") as inner:
                inner.advance(2)
                logging.getLogger("mlc_pipeline.test").warning("a log line while bars are drawn")
            outer.advance(3)
            outer.note("done")
        assert handler.stream is sys.stderr, "the handler writes to stderr again once the bars are gone"
        progress.summary("curate r1", [("accepted", 40), ("rejected", {"truncated": 1}), ("empty", None)])
    finally:
        logging.getLogger().removeHandler(handler)
    text = recorded.export_text()
    assert "download kite" in text and "3/3" in text and "verify + hash" in text and "2/2" in text
    assert "a log line while bars are drawn" in text
    assert "curate r1" in text and "truncated 1" in text and "empty" not in text


def test_off_a_bar_does_nothing_and_a_summary_prints_nothing(capsys):
    progress.configure(False)
    try:
        with progress.bar("x", total=2) as bar:
            bar.advance()
            bar.note("n")
        progress.summary("s", [("a", 1)])
    finally:
        progress.configure(None)
    assert capsys.readouterr() == ("", "")


def run_in_terminal(args: list[str], cwd) -> str:
    """Run `mlc ARGS` with stdout and stderr on a pseudo-terminal; return what it drew."""
    main, child = pty.openpty()
    proc = subprocess.Popen(MLC + args, stdin=subprocess.DEVNULL, stdout=child, stderr=child, env=ENV, cwd=cwd)
    os.close(child)
    out = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:         # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    assert proc.wait(timeout=120) == 0, out.decode(errors="replace")[-2000:]
    os.close(main)
    return out.decode(errors="replace")


def test_curate_shows_its_bars_and_summary_in_a_terminal_only(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\nclasses: {{kite: {{queries: [kite], count: 5}}}}\n"
                      "other: {queries: [sky], count: 5}\n")
    (tmp_path / "data").mkdir()
    Catalog(tmp_path / "data" / "catalog.sqlite").close()    # nothing collected yet: curate inspects nothing
    shown = run_in_terminal(["curate", "-c", str(config)], tmp_path)
    assert "deduplicate" in shown and "inspected" in shown and "curate " in shown
    quiet = run_in_terminal(["curate", "-c", str(config), "--no-progress"], tmp_path)
    assert "deduplicate" not in quiet and "inspected\x1b" not in quiet and '"inspected": 0' in quiet
    piped = subprocess.run(MLC + ["curate", "-c", str(config)], env=ENV, capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0 and "deduplicate" not in piped.stderr + piped.stdout


def test_training_shows_epochs_with_loss_and_time_left(recorded, tmp_path):
    from shapes import FAST, make_shapes_dataset
    from mlc_pipeline.model.train import TrainConfig, train_model
    manifest = make_shapes_dataset(tmp_path / "ds", n_per_kind=8)
    train_model(manifest, tmp_path / "bundle", TrainConfig(**{**FAST, "epochs": 2}))
    text = recorded.export_text()
    assert "train mlcnet" in text
    assert "epoch 2 train loss" in text and "valid loss" in text and "left" in text
    assert "score images" in text                           # the test split, scored for the bundle's metrics
    assert "macro F1 (test)" in text and "epochs" in text   # the summary


def test_collect_bars_stay_on_screen_with_the_summary_after_them(recorded, tmp_path):
    from helpers import write_config
    from mlc_pipeline.collect.stage import collect
    from mlc_pipeline.config import load_config
    summary = collect(load_config(write_config(tmp_path, count=4)))
    lines = recorded.export_text().splitlines()
    bars = [line for line in lines if line.startswith("✓ download train/")]
    assert len(bars) == 3 and all("4/4 img" in line for line in bars), lines   # finished, still on screen
    title = lines.index(f"collect {summary.run_id}")
    assert title > lines.index(bars[-1])                                          # the summary follows them
    assert any(line.split() == ["downloaded", str(summary.downloaded)] for line in lines[title:])


@pytest.mark.parametrize("width", [80, 100, 132])
def test_a_long_epoch_note_never_squeezes_the_count_and_times(width):
    """In an 80-column terminal the training bar read 'train mlcnet  batches left  epoch 2 train loss
    ...': rich squeezed the count and the times to make room for the note (the day24 audit)."""
    from rich.progress import Progress
    console = Console(width=width, file=io.StringIO(), force_terminal=True, color_system=None)
    bar = Progress(*progress.bar_columns(width), console=console)
    task = bar.add_task("train mlcnet", total=2850, unit="batches", note="epoch 2 train loss 0.5394 valid loss 0.7280")
    bar.update(task, advance=300)
    console.print(bar.get_renderable())
    line = console.file.getvalue().splitlines()[0]
    assert "300/2850 batches 0:00:00 left -:--:-- epoch" in line and len(line) <= width, line
    assert ("valid loss 0.7280" in line) == (width >= 132), line
