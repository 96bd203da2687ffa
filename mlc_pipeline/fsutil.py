"""File-system primitives every stage shares: atomic writes, checksums, and removing what killed
runs left behind.

Atomic: a reader sees the old file or the new one, never half of one. Every temp file sits beside
its target (same folder, so the same file system: the rename never crosses devices), is hidden, and
carries the writer's pid, so a later run can tell a dead writer's leftover from a live one's work.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check, nothing is sent
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file read in 1 MiB chunks (model exports run to megabytes; never held whole)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def temp_beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def temp_target(path: Path) -> Path | None:
    "The path a `temp_beside` name is written for; None when `path` is not such a name."
    found = re.fullmatch(r"\.(.+)\.tmp-\d+-[0-9a-f]{8}", path.name)
    return path.with_name(found.group(1)) if found else None


# Errors only a write gives: one that names no file is the destination's (a tar's or an image's write).
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


@contextmanager
def errors_name(target: Path, aside: Path) -> Iterator[None]:
    """An OSError raised while the hidden folder `aside` is written for `target` (a build's for the
    datasets folder, an export's for its --out) names `target`: not the file being copied from
    (shutil's sendfile copy puts the source in `filename`, the destination in `filename2`), nor
    nothing (a write to an open file), nor the hidden folder; what the user named, and has to free or
    fix (the export26 audit). An error about another file only (a source that cannot be read) keeps
    its name."""
    try:
        yield
    except OSError as exc:
        named = [Path(os.path.abspath(os.fsdecode(f))) for f in (exc.filename, exc.filename2)
                 if isinstance(f, (str, bytes, os.PathLike))]
        whole = Path(os.path.abspath(aside))
        if exc.errno is None or not (any(p == whole or whole in p.parents for p in named)
                                     or (not named and exc.errno in WRITE_ERRNOS)):
            raise
        raise OSError(exc.errno, exc.strerror, str(target)) from exc


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it replaces `path`, on any error it is removed."""
    path = Path(path)
    tmp = temp_beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv_atomic(path: str | os.PathLike, rows: Iterable[dict], columns: list[str]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def remove_dead_leftovers(paths: Iterable[Path], writer_pid: Callable[[Path], str],
                          spare_own: bool = True) -> list[Path]:
    """Remove each path (file or folder) whose writer, the pid `writer_pid` reads from its name, is
    no longer alive. A live writer's work is never touched, whoever it belongs to; a name without a
    pid is not a leftover of ours and is kept. `spare_own=False` also removes this process's own
    earlier leftovers (a stage that cleans before it starts writing)."""
    removed = []
    for path in paths:
        pid = writer_pid(path)
        if not pid.isdigit():
            continue
        if pid_alive(int(pid)) and (spare_own or int(pid) != os.getpid()):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed
