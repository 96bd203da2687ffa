"""Where downloaded files go under raw/, their temp files, and the leftovers of killed downloads
(temp files, and finished files no row names: `reconcile_raw`); and what a failed write means (a
full or read-only disk stops the run: `StorageError`)."""

from __future__ import annotations

import errno
import logging
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import requests

from mlc_pipeline.fsutil import remove_dead_leftovers, sha256_file
from mlc_pipeline.imageformat import HEAD_BYTES, MEDIA_TYPES, image_extension
from mlc_pipeline.layout import photo_shard

log = logging.getLogger(__name__)


class StorageError(Exception):
    """Images cannot be written (disk full, read-only, no permission...): every later image would
    fail the same way, so the run stops instead of burning through the search results."""


WRITE_PROBLEMS = {
    errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
    errno.EPERM: "permission denied", errno.EFBIG: "the file size limit was reached",
    errno.EXDEV: "a rename across file systems", errno.EIO: "an I/O error of the disk",
}

# What to do about each (a read-only disk was told to "free space": audit collect27 D9).
REMEDIES = {errno.ENOSPC: "free space", errno.EDQUOT: "free space", errno.EIO: "check the disk",
            errno.EFBIG: "raise the file size limit (ulimit -f)",
            errno.EROFS: "make it writable or name a data_dir on a writable disk",
            errno.EACCES: "fix the folder's permissions", errno.EPERM: "fix the folder's permissions"}


def storage_error(exc: OSError, folder: Path) -> StorageError:
    what = WRITE_PROBLEMS.get(exc.errno, exc.strerror or type(exc).__name__)
    code = errno.errorcode.get(exc.errno, "?") if exc.errno else type(exc).__name__
    remedy = REMEDIES.get(exc.errno, "fix the folder")
    return StorageError(f"cannot write images to {folder}: {what} ({code}); {remedy}, "
                        f"then rerun the same command (downloads that finished are recorded)")


def shard_dir(raw_dir: Path, photo_id: str) -> Path:
    return raw_dir / photo_shard(photo_id)


def final_path(raw_dir: Path, photo_id: str, ext: str) -> Path:
    return shard_dir(raw_dir, photo_id) / f"{photo_id}.{ext}"


def temp_path(raw_dir: Path, photo_id: str) -> Path:
    """Beside its final path (same folder, so the same file system: the rename never hits EXDEV);
    hidden, and named by the writing process so a later run can tell whether it is stale."""
    return shard_dir(raw_dir, photo_id) / f".{photo_id}.{os.getpid()}-{uuid.uuid4().hex[:8]}.part"


def clean_stale_temp(root: Path) -> int:
    """Remove partial files (`*.part`) of download processes that are no longer alive (killed runs):
    the hidden ones beside the images, and those of older versions in <pid>-<hex> folders."""
    if not root.exists():
        return 0

    def writer(f: Path) -> str:
        return (f.name.split(".")[-2] if f.name.startswith(".") else f.parent.name).split("-")[0]

    removed = len(remove_dead_leftovers(root.rglob("*.part"), writer, spare_own=False))
    for d in root.iterdir():         # the empty <pid>-<hex> folders older versions wrote into
        if d.is_dir() and "-" in d.name and d.name.split("-")[0].isdigit() and not any(d.iterdir()):
            d.rmdir()
    return removed


def reconcile_raw(catalog, raw_dir: Path, source: str, max_bytes: int, run_id: str) -> tuple[int, int]:
    """The finished files under raw/<source>/ that no row names: a worker renames a download into place
    and the main thread records it a moment later, so a run killed in between (kill -9, the OOM
    killer) or one whose catalog write failed (a full disk) leaves complete images the catalog does not
    know (the collect27 audit: up to 186 after one kill). Each is adopted when its photo's candidate
    is pending and the file is what a download would have kept (the image its extension says, within
    max_image_bytes; its sha256 and size recorded as a download records them), else deleted: its
    photo was taken down, failed for good, has its file elsewhere, or is not in the catalog at all.
    A name that is no photo file of ours (wrong shard, a hidden file) is left alone. Idempotent.
    Returns (adopted, deleted)."""
    files: dict[str, list[Path]] = {}
    for shard in sorted(raw_dir.iterdir()) if raw_dir.is_dir() else []:
        for f in sorted(shard.iterdir()) if shard.is_dir() else []:
            photo_id = f.name.split(".")[0]
            if photo_id and not f.name.startswith(".") and photo_shard(photo_id) == shard.name and f.is_file():
                files.setdefault(photo_id, []).append(f)
    adopted = deleted = 0
    ids = sorted(files)
    for i in range(0, len(ids), 500):
        rows = {r["photo_id"]: r for r in catalog.candidates(source=source, photo_id=set(ids[i:i + 500]))}
        for photo_id in ids[i:i + 500]:
            row = rows.get(photo_id)
            for f in files[photo_id]:
                mine = row is not None and row["file_path"] and os.path.abspath(row["file_path"]) == os.path.abspath(f)
                if mine:
                    continue
                if row is not None and row["status"] == "pending" and (found := adoptable(f, max_bytes)):
                    size, digest = found
                    if catalog.set_status(row["id"], "downloaded", None, run_id, "adopt", file_path=str(f), bytes=size,
                                          sha256=digest, content_type=MEDIA_TYPES.get(f.suffix[1:])):
                        row = {**row, "status": "downloaded", "file_path": str(f)}
                        adopted += 1
                        continue
                if row is not None and row["status"] != "pending" and row["file_path"] \
                        and not os.path.exists(row["file_path"]) and row["status"] not in ("removed", "failed", "skipped"):
                    continue        # its recorded file is missing: curate's to judge (stage.set_aside_damaged)
                f.unlink(missing_ok=True)
                deleted += 1
    if adopted or deleted:
        log.warning("raw/%s: %d finished download(s) a stopped run had not recorded were adopted; %d file(s) "
                    "no candidate waits for were deleted", source, adopted, deleted)
    return adopted, deleted


def adoptable(path: Path, max_bytes: int) -> tuple[int, str] | None:
    """(size, sha256) of a file a download would have kept under this name, else None."""
    size = path.stat().st_size
    if not 0 < size <= max_bytes:
        return None
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    return (size, sha256_file(path)) if image_extension(head) == path.suffix[1:] else None


@contextmanager
def disk_errors(folder: Path) -> Iterator[None]:
    """Turn an OSError of a local file operation into a StorageError naming the folder. Network
    errors (requests' exceptions are OSErrors too) pass through unchanged."""
    try:
        yield
    except requests.RequestException:
        raise
    except OSError as exc:
        raise storage_error(exc, folder) from None


def keep_out_removed_owners(catalog, run_id: str) -> set[int]:
    """A photo of an owner taken down with `mlc remove --owner` is never downloaded nor counted usable:
    found later, it is removed too, with a reason naming that takedown (and a `removals` record). A
    file a collect before this rule downloaded for one is deleted, as the takedown would have.
    Returns the ids of the candidates removed now."""
    removed = set()
    for row in catalog.later_photos_of_removed_owners():
        deleted = []
        if row["file_path"]:
            try:
                os.remove(row["file_path"])
                deleted.append(row["file_path"])
            except FileNotFoundError:
                pass
        reason = f"owner {row['owner']} was taken down ({row['takedown_reason']})"
        with catalog.transaction():
            catalog.record_removal(row, row["takedown_selector"], reason, run_id, deleted)
        log.info("%s:%s not collected: %s", row["source"], row["photo_id"], reason)
        removed.add(row["id"])
    return removed
