"""One writer per data root: an advisory lock held by every command that writes into it; and a
narrower lock on its files, for takedowns.

collect, curate, build, train, mine, run and remove on an object-store root (and the Prefect flows)
take `data_root_lock`; inspect and predict never do. A second writer waits, after logging who holds
the lock, or with `wait=False` fails at once with `DataRootBusy`, a one-line message naming the holder.

`files_lock` is held by what moves or copies image files (curate, build) and by a takedown, which
deletes them. A takedown takes only this one on a local data root, so it never waits for a run's
training or mining (hours), only for a curate or a build in progress (minutes). Collect does not
take it: a file it downloads for a photo taken down meanwhile is deleted as its row is found
removed (collect/stage.py). Order: a process holding both takes the data root's lock first.

Each lock is the `filelock` library's FileLock (fcntl.flock on Unix) on `<data_dir>/.mlc.lock` (and
`.mlc.files.lock`). The kernel drops it when its holder exits, even after kill -9, so a crashed run
never leaves the data root locked. The holder (pid, command, start time, host) is written to
`<lock>.json` for the message only: it is never trusted as the lock itself. flock is per host: two
machines sharing a data root over NFS are not excluded.

The locks are re-entrant within a process: a command that holds one may call stages that take it
again (`mlc run` calls build_dataset, the flow's tasks run in threads of the flow's process).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout
from mlc_pipeline.fsutil import write_text_atomic

log = logging.getLogger(__name__)

LOCK_NAME = ".mlc.lock"
INFO_NAME = ".mlc.lock.json"
FILES_LOCK_NAME = ".mlc.files.lock"


class DataRootBusy(RuntimeError):
    """Another process holds the data root's write lock (raised only with wait=False)."""


class FilesBusy(DataRootBusy):
    """Another process holds the lock on the data root's files (a curate or a build; wait=False)."""


def _root(data_dir: str | Path) -> Path:
    return Path(os.path.realpath(data_dir))


def holder(data_dir: str | Path, info_name: str = INFO_NAME) -> dict | None:
    """What the lock's info file says about the current holder (None if unknown)."""
    try:
        return json.loads((_root(data_dir) / info_name).read_text())
    except (OSError, ValueError):     # no holder recorded yet, or being rewritten right now
        return None


def lock_is_held(data_dir: str | Path, name: str = LOCK_NAME) -> bool:
    """Whether the lock is held now (by another process, or by this one), asked without creating the
    data root or the lock file: a probe of the same flock on a descriptor of its own, let go at once."""
    try:
        fd = os.open(_root(data_dir) / name, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):     # no lock file; no data root (a file in its path)
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)          # closing the descriptor lets a probe's lock go


def describe(info: dict | None) -> str:
    if not info:
        return "another process (its details are not recorded yet)"
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(info.get("started_at", 0)))
    return f"pid {info.get('pid')} ({info.get('command')}, started {started} on {info.get('host')})"


def _write_info(root: Path, info_name: str, command: str) -> None:
    info = {"pid": os.getpid(), "command": command, "started_at": time.time(), "host": socket.gethostname()}
    write_text_atomic(root / info_name, json.dumps(info))


def _clear_info(root: Path, info_name: str) -> None:
    info = holder(root, info_name)
    if info and info.get("pid") == os.getpid():
        (root / info_name).unlink(missing_ok=True)


def _lock(root: Path, name: str = LOCK_NAME) -> FileLock:
    # One object per path in a process (is_singleton), counting its holders across threads
    # (thread_local=False): that is what makes the lock re-entrant for a flow and its task threads.
    # preserve_lock_file: never unlink the lock file, so every process locks the same inode.
    return FileLock(root / name, thread_local=False, is_singleton=True, preserve_lock_file=True)


class ReadOnlyDataRoot(OSError):
    """A writer pointed at a data root it cannot write to (one line, naming it)."""


def stop_hint(how_to_stop: str | None = None) -> str:
    """What the waiting line says about stopping: the caller's words (a flow run: cancel it), else
    Ctrl-C where there is a terminal to press it in, else nothing."""
    if how_to_stop is None:
        stdin = sys.stdin
        how_to_stop = "Ctrl-C to stop" if stdin is not None and stdin.isatty() else ""
    return f" ({how_to_stop})" if how_to_stop else ""


@contextmanager
def data_root_lock(data_dir: str | Path, command: str, wait: bool = True,
                   how_to_stop: str | None = None) -> Iterator[None]:
    """Hold the data root's write lock for the duration of the block (re-entrant in a process).
    A wait is logged once (WARNING, naming the holder and `how_to_stop`: see stop_hint), and its end
    once (INFO, with how long it waited)."""
    with _held(data_dir, LOCK_NAME, command, wait, "data root {root} is", DataRootBusy, how_to_stop):
        yield


@contextmanager
def files_lock(data_dir: str | Path, command: str, wait: bool = True,
               how_to_stop: str | None = None) -> Iterator[None]:
    """Hold the lock on the data root's image files (moved or copied by curate and build, deleted by a
    takedown) for the duration of the block (re-entrant in a process)."""
    with _held(data_dir, FILES_LOCK_NAME, command, wait, "the files of data root {root} are", FilesBusy,
               how_to_stop):
        yield


@contextmanager
def _held(data_dir: str | Path, name: str, command: str, wait: bool, what: str, busy: type,
          how_to_stop: str | None = None) -> Iterator[None]:
    root = _root(data_dir)
    info_name, what = name + ".json", what.format(root=root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except (NotADirectoryError, FileExistsError) as exc:        # a file where a folder must be
        blocker = next((p for p in (root, *root.parents) if p.exists() and not p.is_dir()), exc.filename)
        raise ReadOnlyDataRoot(f"data root {root} cannot be made: {blocker} is a file, not a folder; check "
                               f"data_dir") from None
    except OSError as exc:          # a new data root on a read-only mount: not "free space or fix the disk"
        if exc.errno != errno.EROFS:
            raise
        raise ReadOnlyDataRoot(f"data root {root} cannot be made: it is on a read-only file system "
                               f"({exc.strerror}): {command} writes to it; name a data_dir on a writable disk, "
                               f"or make this one writable") from None
    lock = _lock(root, name)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        who = describe(holder(root, info_name))
        if not wait:
            raise busy(f"{what} in use by {who}; wait for it to finish, or rerun without --no-wait to queue"
                       ) from None
        log.warning("%s in use by %s; waiting for it to finish%s", what, who, stop_hint(how_to_stop))
        waited = time.monotonic()
        lock.acquire()
        log.info("%s free now: %s goes ahead (after waiting %.0f s)", what, command, time.monotonic() - waited)
    except OSError as exc:          # after Timeout, which is an OSError too
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        raise ReadOnlyDataRoot(f"data root {root} is read-only ({exc.strerror}): {command} writes to it (catalog "
                               f"{root / 'catalog.sqlite'}). Read-only commands (`mlc inspect`) work; make the "
                               f"data root writable to run this one") from None
    if lock.lock_counter == 1:       # the outermost holder in this process
        try:
            _write_info(root, info_name, command)
        except PermissionError as exc:      # a folder made immutable (chattr +i): its lock file opened, no new file
            lock.release()
            raise ReadOnlyDataRoot(f"data root {root} is not writable ({exc.strerror}): {command} writes to it. "
                                   f"Read-only commands (`mlc inspect`) work; make the data root writable to run "
                                   f"this one") from None
    try:
        yield
    finally:
        if lock.lock_counter == 1:
            _clear_info(root, info_name)
        lock.release()
