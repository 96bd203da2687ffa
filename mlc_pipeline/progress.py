"""Progress bars and end-of-stage summaries for the long stages (collect, curate, build, train,
mine, predict), drawn with rich on stderr so stdout stays the command's output.

Shown only to a person: off when stdout or stderr is not a terminal (a pipe, a log file, a Prefect
worker, a test), and off with `--no-progress` (`configure(False)`). Bars of nested stages (collect's
downloads, then the curate round inside `collect_in_rounds`) share one live display; a finished bar
stays on screen with its count and time, the summary table follows it.
"""

from __future__ import annotations

import logging
import sys
import threading
from contextlib import contextmanager
from typing import Any, Iterator

_forced: bool | None = None      # configure(): True / False, or None = decide from the terminal
_live = None                     # the shared rich Progress while a bar is open
_open = 0                        # bars open on it (nested stages)
_handlers: list[tuple[logging.StreamHandler, Any]] = []
_lock = threading.Lock()         # stages may run in threads (Prefect's thread pool): one display for all


def configure(enabled: bool | None) -> None:
    """False: no bar and no summary (--no-progress); True: always (screenshots, tests); None: a terminal decides."""
    global _forced
    _forced = enabled


def enabled() -> bool:
    if _forced is not None:
        return _forced
    return sys.stdout.isatty() and sys.stderr.isatty()


_console = None


def _get_console():
    global _console
    if _console is None:
        from rich.console import Console
        _console = Console(stderr=True)
    return _console


def use_console(new) -> None:
    """Draw on `new` (a rich Console, e.g. one with record=True for a screenshot); None: stderr again."""
    global _console
    _console = new


class Bar:
    """One bar of the display: `advance()` per item, `note()` for a short status after it."""

    def __init__(self, live=None, task_id=None):
        self.live, self.task_id = live, task_id

    def advance(self, n: int = 1) -> None:
        if self.live is not None:
            self.live.advance(self.task_id, n)

    def note(self, text: str) -> None:
        if self.live is not None:
            self.live.update(self.task_id, note=text)

    def total(self, total: int | None) -> None:
        if self.live is not None:
            self.live.update(self.task_id, total=total)


@contextmanager
def bar(description: str, total: int | None = None, unit: str = "img", show: bool = True) -> Iterator[Bar]:
    """A progress bar for one loop; a Bar whose methods do nothing when progress is off (or `show` is False)."""
    if not (show and enabled()):
        yield Bar()
        return
    with _lock:
        _start()
        live = _live
        task_id = live.add_task(description, total=total, unit=unit, note="")
    try:
        yield Bar(live, task_id)
    finally:
        with _lock:
            live.stop_task(task_id)
            _stop()


def bar_columns(width: int) -> list:
    """A bar's columns. The note (an epoch's losses) gets what the counts and times leave of `width`,
    cut with an ellipsis: unbounded, it made rich squeeze them to '285… batches 0:06… left 0:0…' in an
    80-column terminal (the day24 audit)."""
    from rich.progress import (
        BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
    )
    from rich.table import Column
    return [SpinnerColumn(finished_text="[green]✓"), TextColumn("{task.description:<22}"), BarColumn(),
            MofNCompleteColumn(table_column=Column(no_wrap=True)), TextColumn("{task.fields[unit]}"),
            TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
            TextColumn("{task.fields[note]}", table_column=Column(no_wrap=True, overflow="ellipsis",
                                                                  max_width=max(6, width - 74)))]


def _start() -> None:
    global _live, _open
    if _open == 0:
        from rich.progress import Progress
        _live = Progress(*bar_columns(_get_console().width), console=_get_console(), transient=False,
                         redirect_stderr=False, redirect_stdout=False)
        _live.start()
        _route_logging()
    _open += 1


def _stop() -> None:
    global _live, _open
    _open -= 1
    if _open == 0:
        _live.stop()
        _live = None
        for handler, stream in _handlers:
            handler.setStream(stream)
        _handlers.clear()


class _AboveTheBars:
    """A stream for log handlers while bars are drawn: each log line is printed above the bars
    instead of through them."""

    def write(self, text: str) -> int:
        if text.strip():
            _live.console.print(text.rstrip("\n"), markup=False, highlight=False, soft_wrap=True)
        return len(text)

    def flush(self) -> None:
        pass


def _route_logging() -> None:
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler and handler.stream in (sys.stderr, sys.__stderr__):
            _handlers.append((handler, handler.setStream(_AboveTheBars())))


def summary(title: str, rows: list[tuple[str, Any]], show: bool = True) -> None:
    """A stage's one-screen summary: a two-column table on the progress console (only when progress is on)."""
    if not (show and enabled()):
        return
    from rich.table import Table
    from rich.text import Text
    table = Table(show_header=False, box=None, padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for name, value in rows:
        if value not in (None, "", {}, []):
            table.add_row(Text(name), Text(_text(value)))   # Text: no markup in names or reasons
    out = _live.console if _live is not None else _get_console()
    out.print(Text(title, style="bold underline"))
    out.print(table)


def _text(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
