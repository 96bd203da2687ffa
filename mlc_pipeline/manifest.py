"""A published dataset version as its readers see it: the version folders, the manifest's columns
and splits, reading a manifest and its dataset.json (`read_version_meta`), and the markers of the
exports made of it (`read_export_markers`).

This is the contract between `build` (which writes versions) and everything downstream of it
(training, mining, the report, takedowns, the cross-version test check), so it sits in the core and
imports nothing of the stages.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mlc_pipeline.fsutil import remove_dead_leftovers, write_text_atomic
from mlc_pipeline.secrets import CONTROLS, code_points

if TYPE_CHECKING:
    import pandas as pd

MANIFEST_COLUMNS = ["path", "labels", "split", "candidate_id", "source", "photo_id", "url", "license_id",
                    "license", "owner", "title", "date_taken", "sha256", "phash", "purpose", "mined_round",
                    "query", "source_file", "license_url", "page"]
# Columns added after versions were published without them: reading an older version, they are absent.
# license_url: the licence's deed; page: the photo's page at its source (the real Flickr's), or empty.
ADDED_COLUMNS = ("source_file", "license_url", "page")
SPLITS = ("train", "valid", "test")
log = logging.getLogger(__name__)
LATEST = "latest"                       # names the newest version wherever a version is named
MANIFEST_SPLITS = SPLITS + ("probe",)   # probe rows: unseen kinds, scored for "none of these" only


def versions(root: Path) -> list[str]:
    found = [p.name for p in root.glob("v*") if p.is_dir() and p.name[1:].isdigit()]
    return sorted(found, key=lambda v: int(v[1:]))


def latest_version(root: Path) -> str | None:
    """The newest version folder. A version folder only ever appears whole: build writes it as
    `.build-*` and renames it into place, a fetch from an object store as `.fetch-*` (neither is a
    `vN` name), so the pointer files are derived from the folders, and a build killed between the
    rename and the pointer update is repaired by the next build. A `vN` folder that lacks a file
    (dataset.json included) is therefore a damaged version, and still the latest: verify_version
    says so, rather than an older version silently standing in for it."""
    vs = versions(root)
    return vs[-1] if vs else None


PUBLISHED = "PUBLISHED"      # datasets/<name>/PUBLISHED: every version ever published, one line each


VERSION_META = "dataset.json"            # a version's parameters, counts and fingerprint (dataset/build.py)


class VersionMetaUnreadable(ValueError):
    """A version's dataset.json missing, unreadable or not a JSON object: one line naming the file.
    `problem` says it relative to the version folder, for a caller's own message (VersionDamaged)."""

    def __init__(self, path: Path, problem: str):
        self.path, self.problem = path, f"{VERSION_META} {problem}"
        super().__init__(f"{path} {problem}")


def read_version_meta(folder: str | Path) -> dict:
    """A version's dataset.json: every reader of it reads it here. VersionMetaUnreadable when it is
    missing, cannot be read or parsed, or holds no JSON object; what that means for the reader (a
    damaged version, a fingerprint unknown) is the reader's to say."""
    path = Path(folder) / VERSION_META
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise VersionMetaUnreadable(path, "is missing") from None
    except (OSError, ValueError) as exc:            # ValueError: bad JSON, bytes that are not UTF-8
        raise VersionMetaUnreadable(path, f"is unreadable ({exc})") from None
    if not isinstance(meta, dict):
        raise VersionMetaUnreadable(path, "is not a JSON object")
    return meta


def recorded_fingerprint(folder: Path) -> str | None:
    """The fingerprint a version's dataset.json records; None when there is none to read (damaged)."""
    try:
        return read_version_meta(folder).get("fingerprint")
    except VersionMetaUnreadable:
        return None


EXPORT_MARKER = "export.json"    # in every export of a version (`mlc export`): which version, what it left out


def read_export_markers(exports: Path) -> dict[Path, dict]:
    """The markers of the exports in `exports` (<data_dir>/exports/, `mlc export`'s default place):
    export folder -> its export.json. A marker that cannot be read, or holds no JSON object, is left
    out with a warning naming it: the command listing exports (`mlc remove`, `mlc withdraw`) goes on."""
    found = {}
    for marker in sorted(exports.glob(f"*/{EXPORT_MARKER}")) if exports.is_dir() else []:
        try:
            info = json.loads(marker.read_text())
        except (OSError, ValueError) as exc:
            log.warning("%s: not read (%s); check that export by hand", marker, exc)
            continue
        if not isinstance(info, dict):
            log.warning("%s: not read (not a JSON object); check that export by hand", marker)
            continue
        found[marker.parent] = info
    return found


def highest_published(root: Path) -> int:
    """The highest version number ever published under `root` (folders and the PUBLISHED ledger): a
    version withdrawn by deleting its folder keeps its number, so no later build reuses its name."""
    return max((int(v[1:]) for v in versions(root) + sorted(published_names(root))), default=0)


WITHDRAWN = "WITHDRAWN"      # datasets/<name>/WITHDRAWN: `mlc withdraw`'s record, one line a version


def withdrawn_versions(root: Path) -> dict[str, dict]:
    """The versions withdrawn under `root` (`mlc withdraw`; on an object-store root, also withdrawn on
    another machine and seen by this cache): name -> when, fingerprint and reason."""
    ledger, out = root / WITHDRAWN, {}
    for line in ledger.read_text().splitlines() if ledger.is_file() else []:
        if m := re.match(r"(v\d+) (\S+) (\S+) ?(.*)$", line):
            out.setdefault(m.group(1), {"at": m.group(2), "fingerprint": m.group(3), "reason": m.group(4)})
    return out


def withdrawal(root: Path, version: str | None) -> dict | None:
    """`mlc withdraw`'s record of `version` under `root` (when, fingerprint, reason), None when it was not
    withdrawn: each command that finds a version withdrawn words it its own way from this one record."""
    return withdrawn_versions(root).get(version) if version else None


def withdrawn_meanwhile(root: Path, version: str) -> str | None:
    """What to say of a version a reader found gone or half-deleted, when `mlc withdraw` took it (its
    name is in the ledger before its folder goes): None when it was not withdrawn."""
    gone = withdrawal(root, version)
    if gone is None:
        return None
    return (f"dataset version {version} was withdrawn ({gone['at']}: {gone['reason'] or 'no reason given'}) "
            f"while this command read it: rerun it for the versions left (no withdrawal running: `mlc withdraw "
            f"{version}` again finishes that one)")


def record_withdrawal(root: Path, version: str, fingerprint: str | None, reason: str, at: str | None = None) -> None:
    """The version's name in both ledgers (PUBLISHED too: a cache that never held it numbers past it),
    before its folder goes: killed after this, a rerun finishes the withdrawal."""
    root.mkdir(parents=True, exist_ok=True)
    if version not in withdrawn_versions(root):
        at = at or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with open(root / WITHDRAWN, "a") as ledger:
            ledger.write(f"{version} {at} {fingerprint or '-'} {' '.join(reason.split())}\n")
    if version not in published_names(root):
        with open(root / PUBLISHED, "a") as ledger:
            ledger.write(f"{version} {fingerprint or '-'} withdrawn\n")


def published_names(root: Path) -> set[str]:
    ledger = root / PUBLISHED
    return {m.group(1) for line in (ledger.read_text().splitlines() if ledger.is_file() else [])
            if (m := re.match(r"(v\d+)\b", line))}


def withdrawn_latest(root: Path) -> str | None:
    """The version the LATEST pointer names when its folder is gone (withdrawn), else None."""
    pointer = root / "LATEST"
    named = pointer.read_text().strip() if pointer.is_file() else ""
    return named if named and named not in versions(root) else None


class UnknownVersion(ValueError):
    """A version name that names no published version here (one line: the versions there, the one meant)."""


def requested_version(spec: str | None) -> str | None:
    """A version as named on the command line, for fetching it: None (the newest) for latest."""
    return None if spec in (None, LATEST) else spec


def resolve_version(root: Path, spec: str | None) -> str:
    """The version folder under `root` that `spec` names: vN, or latest (or None) for the newest
    version. Every command that takes a version name resolves it here, so each answers a wrong name
    alike: the versions there, and the one probably meant ("2" or "V2": did you mean v2?). A vN folder
    resolves even when damaged: verify_version then says what is wrong with it."""
    have = versions(root)
    name = spec if requested_version(spec) else latest_version(root)
    if requested_version(spec) is None and name and (gone := withdrawn_latest(root)):
        log.warning("latest: %s is gone from %s (withdrawn?): the newest version there is %s", gone, root, name)
    if name in have:
        return name
    listed = ", ".join(have) or "none (run `mlc build`)"
    if requested_version(spec) is None:
        raise UnknownVersion(f"no dataset version under {root} yet: run `mlc build` first")
    number = re.fullmatch(r"\s*(?:v|version)?\s*(\d+)\s*", spec, re.IGNORECASE)
    meant = f"v{int(number.group(1))}" if number else None
    if (gone := withdrawal(root, meant)) is not None:        # "v2", and "2" or "V2" meaning it
        raise UnknownVersion(f"dataset version {meant} was withdrawn ({gone['at']}: {gone['reason'] or 'no reason given'}"
                             f"); versions: {listed}")
    hint = f" (did you mean {meant}?)" if meant in have else ""
    raise UnknownVersion(f"no dataset version {spec!r} under {root}{hint}; versions: {listed}")


def move_aside_real_latest(root: Path) -> Path | None:
    """`latest` must be a link. A real folder there (`cp -rL` of a data root, a sync tool that
    follows links) would block every later build; it is moved aside, never deleted: it may hold
    the only copy of something a user put there."""
    latest = root / "latest"
    if latest.is_symlink() or not latest.is_dir():
        return None
    aside = root / f"latest.real-folder-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    os.rename(latest, aside)
    log.warning("%s was a real folder, not a link (copied with cp -L?): moved it to %s (delete it once you "
                "no longer need it); latest now points at the newest version", latest, aside.name)
    return aside


def point_latest(root: Path, version: str) -> None:
    move_aside_real_latest(root)
    link_tmp = root / f".latest.tmp-{os.getpid()}"
    # a writer killed between the link and its rename left its link: gone once that process is
    remove_dead_leftovers(root.glob(".latest.tmp-*"), lambda p: p.name.rpartition("-")[2], spare_own=False)
    link_tmp.symlink_to(version, target_is_directory=True)
    os.replace(link_tmp, root / "latest")
    write_text_atomic(root / "LATEST", version + "\n")


# The columns of outside text, what a photo's source says of it (`source_file`: a folder's file name, a
# URL list's `photo_page`): a spreadsheet opening the CSV takes such a cell starting with = + - @, a tab
# or a carriage return for a formula (`=HYPERLINK(...)`, `=cmd|...`: the security26 audit), so it is
# written with a `'` before it (OWASP's CSV injection advice), and read back without (`unguarded`). Only
# these: the others are data that programs read (paths, ids, labels, split, sha256, numbers, http(s)
# URLs, the config's queries), which a `'` would change.
TEXT_COLUMNS = ("license", "owner", "title", "date_taken", "source_file")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# No cell of a CSV of ours holds a control character but a tab or a line break (which CSV quotes): a
# NUL stops or cuts short readers of manifest.csv (Python's csv before 3.11 refuses the line, pandas' C
# parser has dropped the rest of the cell: pandas#19886), and an ESC drives the terminal that `cat`s it.
# Each becomes U+FFFD, as in the card (dataset/card.py); whatever else the row holds reads back exactly.
CSV_UNSAFE = {c: "\ufffd" for c in code_points(CONTROLS) if chr(c) not in "\t\n\r"}


def spreadsheet_safe(row: dict) -> dict:
    """The row as a CSV of ours writes it (manifest.csv, an imagefolder export's metadata.csv): each
    control character but a tab or line break U+FFFD (CSV_UNSAFE), and a text cell a spreadsheet would
    take for a formula with a `'` before it, as is one that already starts with `'`s before such a
    character (`'=x` is written `''=x`), so reading it back is exact."""
    row = {k: v.translate(CSV_UNSAFE) if isinstance(v, str) else v for k, v in row.items()}
    return {k: "'" + v if k in TEXT_COLUMNS and looks_like_formula(v) else v for k, v in row.items()}


def unguarded(row: dict) -> dict:
    """The row as its source gave it: spreadsheet_safe's `'` taken off again."""
    return {k: unguarded_text(v) if k in TEXT_COLUMNS else v for k, v in row.items()}


def unguarded_text(text):
    return text[1:] if isinstance(text, str) and text.startswith("'") and looks_like_formula(text[1:]) else text


def looks_like_formula(text) -> bool:
    return isinstance(text, str) and text.lstrip("'").startswith(FORMULA_START)


def write_manifest(path: Path, rows: list[dict]) -> None:
    """Plain write: a manifest is written inside a version folder that is published whole by a rename."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, MANIFEST_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(map(spreadsheet_safe, rows))


def read_manifest(path: Path) -> list[dict]:
    """The rows as build wrote them, their text as the source gave it (`unguarded`)."""
    with open(path, newline="") as f:
        return [unguarded(r) for r in csv.DictReader(f)]


def read_manifest_frame(manifest_csv: str | Path) -> "pd.DataFrame":
    """The manifest as a DataFrame, plus `abs_path` and `label_list` columns.

    Read as strings with no NaN conversion: an empty `labels` cell (an "other" image) must stay ''.
    """
    import pandas as pd   # here: reading rows (curate, report) does not pay for pandas

    manifest_csv = Path(manifest_csv)
    if not manifest_csv.is_file():
        raise FileNotFoundError(f"manifest not found: {manifest_csv}")
    df = pd.read_csv(manifest_csv, dtype=str, keep_default_na=False)
    for column in set(TEXT_COLUMNS) & set(df.columns):
        df[column] = df[column].map(unguarded_text)
    missing = {"path", "labels", "split"} - set(df.columns)
    if missing:
        raise ValueError(f"{manifest_csv}: missing column(s) {sorted(missing)}")
    bad = sorted(set(df["split"]) - set(MANIFEST_SPLITS))
    if bad:
        raise ValueError(f"{manifest_csv}: unknown split value(s) {bad}; expected {MANIFEST_SPLITS}")
    escaping = [p for p in df["path"] if not p or Path(p).is_absolute() or ".." in Path(p).parts]
    if escaping:    # a manifest names files inside its own folder only
        raise ValueError(f"{manifest_csv}: path {escaping[0]!r} is outside the dataset folder")
    root = manifest_csv.parent.resolve()
    df["abs_path"] = [str(root / p) for p in df["path"]]
    df["label_list"] = [sorted(set(s.split())) for s in df["labels"]]
    return df
