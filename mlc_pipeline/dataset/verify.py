"""Verifying a published dataset version: is it still exactly what `mlc build` published?

The manifest must match the fingerprint in dataset.json (a relabelled, added or removed row changes
it), every path must stay inside the version folder, and every image must exist with the sha256
recorded in SHA256SUMS, and nothing else may be there (a file added is damage). A damaged version is a `VersionDamaged` error naming the version and the
file, and what helps: for the latest, `mlc build --repair` (it publishes a fresh version from the
catalog); an older one is never rebuilt, so the answer names the latest version and whether it is
intact. Build, train, inspect and export verify a version before they use it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

from mlc_pipeline.config import DEFAULT_SUBSAMPLING
from mlc_pipeline.fsutil import sha256_file
from mlc_pipeline.manifest import (ADDED_COLUMNS, MANIFEST_COLUMNS, VersionMetaUnreadable, latest_version, read_manifest,
                                   read_version_meta, withdrawn_meanwhile)

SUMS_NAME = "SHA256SUMS"
# What a build writes beside the images (the images: SHA256SUMS)
VERSION_FILES = {"manifest.csv", "dataset.json", SUMS_NAME, "ATTRIBUTION.md", "README.md"}
REPAIR_HINT = "run `mlc build --repair -c <config>` to publish a fresh version from the catalog"


class VersionDamaged(RuntimeError):
    """A published dataset version whose files no longer match what was published (one line)."""


def rows_fingerprint(rows: list[dict], max_side: int, jpeg_quality: int, jpeg_subsampling: str | None = None) -> str:
    """What a version holds: its rows and the build settings its copies were made with. The chroma
    subsampling counts only when it is not the default, so versions built before the setting existed
    (all 4:2:0) keep their fingerprint, and an unchanged config rebuilds nothing."""
    params = [max_side, jpeg_quality] + ([jpeg_subsampling] if jpeg_subsampling not in (None, DEFAULT_SUBSAMPLING) else [])
    h = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    for r in rows:
        h.update(f"{r['path']}|{r['labels']}|{r['split']}|{r['sha256']}|{r['license_id']}\n".encode())
    return h.hexdigest()


def safe_member(folder: Path, rel: str) -> Path | None:
    """`folder/rel` if `rel` is a plain relative path that stays inside `folder`, else None."""
    parts = Path(rel).parts
    if not rel or Path(rel).is_absolute() or "\\" in rel or any(p in ("..", "") for p in parts):
        return None
    path = folder / rel
    try:
        path.resolve().relative_to(folder.resolve())    # a symlink inside may not point outside either
    except ValueError:
        return None
    return path


def damaged_version(folder: Path, what: str) -> VersionDamaged:
    """The one-line error for a damaged version: which one, what is wrong, and what helps; or that it
    was withdrawn while it was read (its files going one by one looked damaged: the concurrency28 audit)."""
    if gone := withdrawn_meanwhile(folder.parent, folder.name):
        return VersionDamaged(gone)
    return VersionDamaged(f"dataset {folder.parent.name} {folder.name} is damaged: {what}; {what_helps(folder)}")


def read_version(folder: str | Path) -> tuple[dict, list[dict]]:
    """A version's dataset.json and manifest rows, read as far as a reader needs them to be sound: both
    files parse, dataset.json is an object, every row has the manifest's columns and a path inside the
    folder. VersionDamaged otherwise (a reader that parsed them itself crashed on a damaged version).
    Their contents against the fingerprint and SHA256SUMS: verify_version."""
    folder = Path(folder)
    try:
        meta = read_version_meta(folder)
        rows = read_manifest(folder / "manifest.csv")
    except VersionMetaUnreadable as exc:
        raise damaged_version(folder, exc.problem) from None
    except FileNotFoundError as exc:
        raise damaged_version(folder, f"{Path(exc.filename).name} is missing") from None
    except (ValueError, csv.Error, UnicodeDecodeError) as exc:
        raise damaged_version(folder, f"manifest.csv is unreadable ({exc})") from None
    for n, r in enumerate(rows, start=2):               # line 1 is the header
        if None in r.values() or None in r or set(MANIFEST_COLUMNS) - set(ADDED_COLUMNS) - set(r):
            raise damaged_version(folder, f"manifest.csv line {n} does not have the manifest's columns")
        if safe_member(folder, r["path"]) is None:
            raise damaged_version(folder, f"manifest.csv line {n} has path {r['path']!r}, outside the version folder")
    return meta, rows


def verify_version(folder: str | Path) -> list[dict]:
    """Check a published version against its manifest, fingerprint and SHA256SUMS; return its rows.

    Raises VersionDamaged, a one-line message naming the version and the first problem found.
    Versions published before SHA256SUMS existed are checked for the manifest and the files' presence.
    """
    return verified_version(folder)[1]


def verified_version(folder: str | Path) -> tuple[dict, list[dict]]:
    """verify_version, returning the dataset.json it checked the rows against too (read once)."""
    folder = Path(folder)

    def damaged(what: str) -> VersionDamaged:
        return damaged_version(folder, what)

    meta, rows = read_version(folder)
    params = meta.get("params")
    build = params.get("build", {}) if isinstance(params, dict) else {}
    # The CSV writes a missing licence id as '', the fingerprint was computed on None.
    as_built = [{**r, "license_id": r["license_id"] or None} for r in rows]
    if rows_fingerprint(as_built, build.get("max_side"), build.get("jpeg_quality"),
                        build.get("jpeg_subsampling")) != meta.get("fingerprint"):
        raise damaged("manifest.csv was changed since publication (its fingerprint does not match dataset.json)")
    for r in rows:
        if not (folder / r["path"]).is_file():
            raise damaged(f"file {r['path']} is missing")
    if "files_sha256" in meta:
        try:
            sums = (folder / SUMS_NAME).read_text()
        except FileNotFoundError:
            raise damaged(f"{SUMS_NAME} is missing") from None
        if hashlib.sha256(sums.encode()).hexdigest() != meta["files_sha256"]:
            raise damaged(f"{SUMS_NAME} was changed since publication")
        recorded = dict(reversed(line.split("  ", 1)) for line in sums.splitlines() if line)
        if set(recorded) != {r["path"] for r in rows}:
            raise damaged(f"{SUMS_NAME} and manifest.csv list different files")
        # Immutable means exactly what was published: a file added (an image a tool reading images/
        # would take for a labelled one) is damage too, not a warning.
        extra = unlisted_files(folder, set(recorded) | VERSION_FILES)
        if extra:
            more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
            raise damaged(f"file {extra[0]}{more} is not one of its files (not in {SUMS_NAME}: added since "
                          f"publication; deleting it restores the version)")
        for r in rows:
            if sha256_file(folder / r["path"]) != recorded[r["path"]]:
                raise damaged(f"file {r['path']} was changed since publication")
    return meta, rows


# What a file browser leaves in a folder it shows: no image loader reads these (docs/curation.md, 8).
BROWSER_FILES = {".DS_Store", "Thumbs.db", "desktop.ini"}


def unlisted_files(folder: Path, listed: set[str]) -> list[str]:
    """Everything in `folder` but directories (files, links, anything else) not in `listed`, relative
    and sorted; links to directories are not followed. A file browser's BROWSER_FILES are let be."""
    out = []
    for top, dirs, files in os.walk(folder):
        here = Path(top).relative_to(folder)
        out += [(here / name).as_posix() for name in files + [d for d in dirs if (Path(top) / d).is_symlink()]
                if name not in BROWSER_FILES or (Path(top) / name).is_symlink()]
    return sorted(p for p in out if p not in listed)


def what_helps(damaged: Path) -> str:
    """`mlc build --repair` republishes only a damaged latest version (versions are immutable), so for
    an older one the way out is the latest version, verified here (only on this error path)."""
    latest = latest_version(damaged.parent)
    if latest in (None, damaged.name):
        return REPAIR_HINT
    try:
        verify_version(damaged.parent / latest)
    except VersionDamaged:
        return f"the latest, {latest}, is damaged too: {REPAIR_HINT}"
    return (f"the latest, {latest}, is intact: use it (a published version is never rebuilt; "
            f"`mlc build --repair` republishes only a damaged latest version)")
