"""Withdrawing a published dataset version (`mlc withdraw`): a version that must no longer be used (it
holds a photo taken down, or was built from a bad config) is deleted whole, and its name is kept.

Published versions are otherwise immutable, and a name is never given to other contents: the name
goes into datasets/<name>/WITHDRAWN (when, its fingerprint, why) and PUBLISHED (so the next build
numbers past it) before the folder is touched; the folder is then renamed aside in one step, so no
reader ever sees half of it, and deleted; `latest` moves to the newest version left. Killed anywhere,
a rerun finishes it. On an object-store data root the store's copy is withdrawn first
(storeversions.withdraw_in_store), and every other cache drops its copy at its next fetch or publish.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

from mlc_pipeline.fsutil import pid_alive, remove_dead_leftovers
from mlc_pipeline.manifest import latest_version, point_latest, record_withdrawal, recorded_fingerprint, versions
from mlc_pipeline.objectstore import remove_dead_fetches

log = logging.getLogger(__name__)
ASIDE = ".withdrawn-"     # <root>/.withdrawn-<version>-<pid>-<id>: a folder being deleted


def withdraw_folder(root: Path, version: str, reason: str, fingerprint: str | None = None,
                    at: str | None = None) -> int:
    """Withdraw `version` under `root` (a data root's datasets/<name>, or a cache's): the files deleted
    (0 when its folder was already gone)."""
    folder = root / version
    record_withdrawal(root, version, fingerprint or recorded_fingerprint(folder), reason, at)
    # What a killed withdrawal left aside, and a fetch of this version that was cut short (objectstore's
    # `.fetch-vN-<pid>-<id>`: only a later fetch of the version would clean it, and none comes).
    leftovers = [p for p in root.glob(f"{ASIDE}*") if p.is_dir()]
    deleted = sum(1 for p in leftovers if p.name.startswith(f"{ASIDE}{version}-") and not pid_alive_in(p)
                  for f in p.rglob("*") if f.is_file())
    remove_dead_leftovers(leftovers, aside_pid)
    remove_dead_fetches(root, version)
    if folder.is_symlink():           # the version moved elsewhere (another disk) and linked here
        target = folder.resolve()
        os.rename(folder, link := root / f"{aside_name(version)}.link")
        link.unlink()                 # gone for every reader at once; then what it pointed at, if a version
        if target.is_dir() and (target / "dataset.json").is_file():
            deleted += delete_aside(target, target.parent / aside_name(version))
    elif folder.is_dir():
        deleted += delete_aside(folder, root / aside_name(version))
    repoint_latest(root, version)
    return deleted


def delete_aside(folder: Path, aside: Path) -> int:
    "Rename `folder` to `aside` (gone for every reader at once), delete it; the files it held."
    os.rename(folder, aside)
    deleted = sum(1 for p in aside.rglob("*") if p.is_file())
    shutil.rmtree(aside)
    return deleted


def aside_name(version: str) -> str:
    "This process's name for a folder (or link) of `version` being deleted: .withdrawn-<version>-<pid>-<id>."
    return f"{ASIDE}{version}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def aside_pid(aside: Path) -> str:
    "The pid in an `aside_name` ('' when the name holds none)."
    return aside.name[len(ASIDE):].split("-")[1] if aside.name.count("-") >= 3 else ""


def pid_alive_in(aside: Path) -> bool:
    "Whether the process that put `aside` there is still running."
    return (pid := aside_pid(aside)).isdigit() and pid_alive(int(pid))


def repoint_latest(root: Path, withdrawn: str) -> str | None:
    """`latest` (and LATEST) moved off a version withdrawn: to the newest version left, or removed when
    none is left. Left alone when it names another version. Returns what it names now."""
    link, pointer = root / "latest", root / "LATEST"
    named = pointer.read_text().strip() if pointer.is_file() else None
    target = os.readlink(link) if link.is_symlink() else None
    if withdrawn not in (named, target) and (named is None or named in versions(root)):
        return named
    newest = latest_version(root)
    if newest is None:
        for path in (link, pointer):
            if path.is_symlink() or path.is_file():
                path.unlink()
        return None
    point_latest(root, newest)
    return newest
