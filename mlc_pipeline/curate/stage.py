"""Curate: verify every downloaded file, hash it, quarantine the bad, resolve duplicates.

Verification and hashes are cached in the catalog against the file's sha256, so an unchanged file
is never decoded twice (a file whose size on disk differs from the recorded one is inspected again).
A verdict also holds only for the limits it was reached under (min_side, max_aspect, max_pixels,
max_image_bytes: `verify_limits`): when they change, an image that verified is judged again on its
recorded size, bytes and frames (no decoding), and one rejected for a limit (too-small, ...) is
inspected again, so that it can come back. Duplicate resolution is recomputed on every run over
everything that verified (`decide`), because a new image can change which copy of a group is the
best one; the scores of its candidate pairs are kept in the catalog by the files' digests, so only
new pairs are scored (on a pool first: `pair_pool`).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from mlc_pipeline.catalog import FILE_STATUSES, Catalog, run_end_status, untold_migrations
from mlc_pipeline.catalog.putback import put_back_pairs
from mlc_pipeline import progress
from mlc_pipeline.config import Config
from mlc_pipeline.layout import DataLayout
from mlc_pipeline.locking import files_lock
from mlc_pipeline.manifest import read_manifest, versions
from mlc_pipeline.curate.decide import MIRROR_METHOD, MirroredSimilarity, resolve
from mlc_pipeline.curate.hashing import CORNER_METHOD, FileRecord, corner_phashes, inspect_files
from mlc_pipeline.executor import cluster_ready, map_chunks
from mlc_pipeline.curate.similarity import METHOD, FileSimilarity
from mlc_pipeline.curate.lookalikes import hold_lookalikes_of_removed
from mlc_pipeline.curate.takedown import QuarantineIndex, keep_out_copies_of_removed
from mlc_pipeline.curate.unpublished import awaiting_publish
from mlc_pipeline.curate.verify import (LIMIT_REASONS, VerifyLimits, limits_key, looks_jpeg, recorded_reason,
                                        strict_jpeg_verdict)

log = logging.getLogger(__name__)


@dataclass
class CurateSummary:
    run_id: str
    inspected: int = 0
    reused: int = 0
    rejudged: int = 0          # judged again on their recorded size: the limits changed
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    conflicts: dict[str, int] = field(default_factory=dict)
    unpublished: int = 0       # files another machine may not have published yet: left as they are
    taken_down: int = 0        # byte copies of photos taken down (`mlc remove`), taken down too
    held: int = 0              # new images that look like photos taken down: held out for review
    damaged: int = 0           # files changed and broken since their download: set aside, downloaded again
    upgrade: list[str] = field(default_factory=list)   # once after an upgrade: a migration, files inspected again


def limits_of(cfg: Config) -> VerifyLimits:
    c = cfg.curate
    return VerifyLimits(max_pixels=c.max_pixels, min_side=c.min_side, max_aspect=c.max_aspect, max_bytes=cfg.source.max_image_bytes)


def quarantine(path: Path, data_dir: Path, reason: str) -> Path:
    """Move a rejected file aside (never delete): data/quarantine/<reason>/<its path under raw/>. A
    file outside this data root (a catalog still naming another root's files) is never moved: it is
    not ours."""
    if not Path(os.path.abspath(path)).is_relative_to(os.path.abspath(data_dir)):
        log.warning("%s is outside the data root %s: rejected (%s) but left where it is", path, data_dir, reason)
        return path
    layout = DataLayout(data_dir)
    folder = layout.quarantine(reason)
    dest = layout.quarantine_destination(reason, path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(path, dest)
    except FileNotFoundError:
        # Another curate of the same data root moved it first (the data-root lock normally keeps
        # them apart), perhaps under another reason: record where it really is; not an error.
        moved = dest if dest.exists() else next(iter(layout.quarantined(path.name)), None)
        if moved is None:
            log.warning("%s is gone and not in %s either; recorded as quarantined there", path, folder)
        return moved or dest
    return dest


def verify_and_hash(cfg: Config, catalog: Catalog, rows: list[dict], run_id: str, summary: CurateSummary) -> None:
    """Inspect the files whose cached results are missing or stale; quarantine the failures. A
    verdict reached under other limits is judged again: on the recorded numbers when the file
    verified and they were recorded, else by inspecting the file again."""
    limits = limits_of(cfg)
    key = limits_key(limits)
    # Hashed again: rows hashed before the crop views existed (view_hashes NULL), once; files whose size changed.
    todo = [r for r in rows if r["hashed_sha256"] != r["sha256"] or r["hashed_sha256"] is None or size_changed(r)
            or (r["verify_reason"] is None and r["view_hashes"] is None) or passing_fault(r["verify_reason"])]
    in_todo = {r["id"] for r in todo}
    stale = [r for r in rows if r["id"] not in in_todo and r["verify_limits"] != key]
    # JPEGs that passed before libjpeg's warnings rejected (cut short, corrupt scans did): decoded once again.
    again = [r for r in stale if r["verify_reason"] is None and not strict_jpeg_verdict(r["verify_limits"])
             and looks_jpeg(r["file_path"])]
    if again:
        log.warning("%d JPEG(s) that passed before JPEGs were decoded strictly are inspected again, once", len(again))
        todo += again
        in_again = {r["id"] for r in again}         # ids: a list's `in` over a million rows is quadratic
        stale = [r for r in stale if r["id"] not in in_again]
    on_record = [r for r in stale if judged_on_record(r, limits)]
    todo += [r for r in stale if not judged_on_record(r, limits)]
    summary.reused = len(rows) - len(todo)
    summary.rejudged = len(on_record)
    paths = [r["file_path"] for r in todo]
    with progress.bar("verify + hash", total=len(paths), unit="files") as bar:
        records = inspect_spread(cfg, paths, advance=bar.advance) if paths else []
    summary.inspected = len(records)
    back = Counter()       # rejected for a limit, passing now (one line, not one per image)
    with catalog.transaction():
        for row, rec in zip(todo, records):
            if damaged_since_download(row, rec):
                set_aside_damaged(cfg, catalog, row, rec, run_id)
                summary.damaged += 1
                continue
            fields = dict(phash=rec.phash, view_hashes=rec.view_hashes, img_width=rec.width, img_height=rec.height,
                          img_frames=rec.frames, verify_reason=rec.reason, verify_limits=key)
            if rec.n_bytes is not None:
                fields["bytes"] = rec.n_bytes
            if rec.sha256 and rec.sha256 != row["sha256"]:
                # The bytes on disk are the truth: a file recorded without a hash, or changed since
                # its download, is judged (and deduplicated) by what it holds now.
                if row["sha256"]:
                    log.warning("candidate %s: file changed since download (sha256 %s..., was %s...)",
                                row["id"], rec.sha256[:12], row["sha256"][:12])
                fields["sha256"] = rec.sha256
            fields["hashed_sha256"] = fields.get("sha256", row["sha256"])
            catalog.update_fields(row["id"], **fields)
            row.update(fields)
            back[record_verdict(cfg, catalog, row, rec.reason, run_id)] += 1
        for row in on_record:
            reason = recorded_reason(row["img_width"], row["img_height"], row["bytes"], row["img_frames"] or 1, limits)
            catalog.update_fields(row["id"], verify_reason=reason, verify_limits=key)
            row.update(verify_reason=reason, verify_limits=key)
            back[record_verdict(cfg, catalog, row, reason, run_id)] += 1
    if again:       # the run's summary says it too: the log line scrolls past above the progress bars
        failed = sum(r["verify_reason"] is not None for r in again)
        summary.upgrade.append(f"{len(again)} JPEG(s) curated before JPEGs were decoded strictly (mlc-pipeline "
                               f"before 0.3.0) inspected again, once: {failed or 'none'} rejected now as damaged"
                               + (" (quarantined: the next build leaves them out)" if failed else ""))
    back.pop(None, None)        # the images that did not come back
    if back:
        log.info("%d rejected image(s) pass under the limits now and are judged again (were: %s)",
                 sum(back.values()), ", ".join(f"{why} {n}" for why, n in sorted(back.items())))


def damaged_since_download(row: dict, rec: FileRecord) -> bool:
    """The file is not the bytes downloaded (its sha256 differs from the one recorded at download) and
    what it holds now fails verification: a disk hiccup or a stray write, not the photo's content.
    (A changed file that verifies is judged by what it holds: the bytes on disk are the truth.) An
    emptied or grown file is not hashed (`read_limited`): its size, not the recorded one, tells."""
    if not rec.reason or not row["sha256"]:
        return False
    if rec.sha256:
        return rec.sha256 != row["sha256"]
    return rec.reason in ("empty-file", "file-too-large") and size_changed(row)


def set_aside_damaged(cfg: Config, catalog: Catalog, row: dict, rec: FileRecord, run_id: str) -> None:
    """A file damaged since its download: the damaged copy goes to the quarantine (under the reason its
    bytes fail for, for a person to look at) and the row is marked for re-download, as the build marks
    a file it finds damaged (`transient:`), keeping the download's sha256; its verdict and hashes are
    dropped, so the copy the next collect downloads is inspected afresh. Recording the damaged file's
    verdict instead lost a good photo for good (`truncated` is final) for a local fault."""
    log.warning("candidate %s: file %s changed since download (sha256 %s..., was %s...) and fails "
                "verification (%s): set aside in the quarantine, marked for re-download", row["id"],
                row["file_path"], (rec.sha256 or "not read")[:12], row["sha256"][:12], rec.reason)
    moved = quarantine(Path(row["file_path"]), cfg.data_dir, rec.reason)
    reason = f"transient:file-changed:{rec.reason}"
    catalog.set_status(row["id"], "failed", reason, run_id, "curate", file_path=str(moved),
                       hashed_sha256=None, verify_reason=None, verify_limits=None)
    row.update(status="failed", reason=reason, file_path=str(moved), hashed_sha256=None, verify_reason=None)


def size_changed(row: dict) -> bool:
    "The file's size is not the recorded one (a stat, no read; a same-size change goes unnoticed)."
    try:
        return row["bytes"] is not None and os.stat(row["file_path"]).st_size != row["bytes"]
    except OSError:
        return True        # gone or unreadable since the existence check: inspecting it says why


def judged_on_record(row: dict, limits: VerifyLimits) -> bool:
    """Whether the limits' verdict on `row` can come from its recorded numbers: it verified, and its
    size and bytes are recorded, and its frame count too unless no count of frames could break the
    frame rule (rows inspected before frames were recorded)."""
    if row["verify_reason"] is not None or None in (row["img_width"], row["img_height"], row["bytes"]):
        return False
    pixels = row["img_width"] * row["img_height"]
    return row["img_frames"] is not None or (
        limits.max_frames * pixels <= limits.max_frame_pixels_factor * limits.max_pixels)


def record_verdict(cfg: Config, catalog: Catalog, row: dict, reason: str | None, run_id: str) -> str | None:
    """Quarantine a file that failed (again, or for another reason); one rejected for a limit that
    passes now is a downloaded file again, for duplicate resolution to decide (it stays where it lies):
    then its former reason, cut at the first ':', is returned."""
    if reason and (row["status"], row["reason"]) != ("rejected", reason):
        moved = quarantine(Path(row["file_path"]), cfg.data_dir, reason)
        catalog.set_status(row["id"], "rejected", reason, run_id, "curate", file_path=str(moved))
        row.update(status="rejected", reason=reason, file_path=str(moved))
    elif reason is None and row["status"] == "rejected" and (for_a_limit(row["reason"]) or passing_fault(row["reason"])):
        log.debug("candidate %s passes now (was rejected: %s)", row["id"], row["reason"])
        was = row["reason"].split(":")[0]
        catalog.set_status(row["id"], "downloaded", None, run_id, "curate")
        row.update(status="downloaded", reason=None)
        return was
    return None


def found_in_quarantine(cfg: Config, catalog: Catalog, rows: list[dict]) -> list[dict]:
    """Of the rows whose file is not where they say, those still missing. A curate stopped inside its
    transaction had moved files to the quarantine whose rows then rolled back: such a file, the same
    bytes under the same name, is recorded where it is (and judged again below) instead of being
    downloaded again and left there unnamed."""
    quarantined, still = QuarantineIndex(cfg.layout.quarantine()), []
    for r in rows:
        here = quarantined.copy_of(r["file_path"], r["sha256"])
        if here is None:
            still.append(r)
            continue
        log.info("candidate %s: %s is in the quarantine, at %s", r["id"], r["file_path"], here)
        catalog.update_fields(r["id"], file_path=str(here))
        r["file_path"] = catalog.usable_path(catalog.stored_path(str(here)))
    return still


def limit_rejected(row: dict, keys: tuple[str, ...]) -> bool:
    """A file rejected at verification for a limit other than the current ones (`keys`: today's, with
    and without the strict JPEG mark, which a limit's verdict does not depend on): it may pass now."""
    return for_a_limit(row["verify_reason"]) and row["verify_limits"] not in keys


def for_a_limit(reason: str | None) -> bool:
    """A rejection for one of the limits (too-small, extreme-aspect, ...), not for the file's content."""
    return (reason or "").split(":")[0] in LIMIT_REASONS


def passing_fault(reason: str | None) -> bool:
    """A rejection that says more about the moment than the file (the OS refused a read, the box ran
    out of memory while decoding): inspected again at every curate rather than lost for good."""
    return (reason or "").startswith(PASSING_FAULTS)


PASSING_FAULTS = ("read-error:", "decode-error:MemoryError")


def inspect_spread(cfg: Config, paths: list[str], advance=None) -> list[FileRecord]:
    """`inspect_files` here (its process pool), or in chunks on the Dask cluster when one is set.
    `advance(n)`: progress, per file here, per chunk on a cluster."""
    limits, address = limits_of(cfg), cluster_ready(cfg)
    advance = advance or (lambda n: None)
    return map_chunks(partial(inspect_files, limits=limits, workers=1), paths, cfg.cluster.hash_chunk,
                      address=address,
                      local=partial(inspect_files, limits=limits, workers=cfg.curate.workers, advance=advance),
                      on_lost=partial(inspect_lost, limits=limits),
                      on_chunk=(lambda chunk, result: advance(len(chunk))) if address else None)


def inspect_lost(paths: list[str], limits: VerifyLimits) -> list[FileRecord]:
    """A chunk whose workers kept dying (a decoder crash): again here, in inspect_files' crash-isolating
    pool; a chunk of one file is that file's fault."""
    if len(paths) == 1:
        return [FileRecord(path=paths[0], ok=False, reason="decode-error:WorkerCrashed", sha256=None, phash=None)]
    return inspect_files(paths, limits, workers=2)


def published_test_images(cfg: Config, catalog: Catalog) -> list[dict]:
    """The test images of every published version of the dataset, hashed from their published files:
    dicts with version, candidate_id, source, photo_id, file_path, sha256, phash, view_hashes, and
    corner_hashes (hashing.corner_phashes: hashed once per file, then kept in the catalog by digest)."""
    root = cfg.layout.datasets
    found = []
    for version in versions(root):
        manifest = root / version / "manifest.csv"
        if not manifest.exists():
            continue
        for row in read_manifest(manifest):
            if row["split"] == "test":
                found.append({"version": version, "candidate_id": int(row["candidate_id"]), "source": row["source"],
                              "photo_id": row["photo_id"], "file_path": str(root / version / row["path"])})
    # min_side and max_aspect are what a collected original must meet; a published copy was resized by
    # the build (build.max_side) and is checked against whatever its size. The safety limits stay.
    limits = replace(limits_of(cfg), min_side=1, max_aspect=float("inf"))
    records = inspect_files([t["file_path"] for t in found], limits, workers=cfg.curate.workers)
    out, unread = [], [(t, rec) for t, rec in zip(found, records) if not rec.ok]
    if unread:
        log.warning("%d published test image(s) cannot be read, so new photos are not checked against them: "
                    "%s", len(unread), "; ".join(f"{t['file_path']} ({rec.reason})" for t, rec in unread[:3])
                    + ("; ..." if len(unread) > 3 else ""))
    for t, rec in zip(found, records):
        if not rec.ok:
            continue
        out.append(dict(t, sha256=rec.sha256, phash=rec.phash, view_hashes=rec.view_hashes,
                        img_width=rec.width, img_height=rec.height, first_seen_at=0.0, label="other"))
    digests = {t["sha256"]: t["file_path"] for t in out}
    kept = catalog.kept_corner_hashes(CORNER_METHOD)
    new = {sha: corners for sha, path in digests.items()
           if sha not in kept and (corners := corner_phashes(path, limits, crop_windows=True))}
    if new or kept.keys() - digests.keys():      # files hashed now; files no longer published
        catalog.keep_corner_hashes(CORNER_METHOD, new, published=digests)
    return [dict(t, corner_hashes=kept.get(t["sha256"]) or new.get(t["sha256"])) for t in out]


def curate(cfg: Config) -> CurateSummary:
    with files_lock(cfg.data_dir, "curate"):        # it moves files: no takedown deletes one meanwhile
        return _curate(cfg)


def _curate(cfg: Config) -> CurateSummary:
    with Catalog(cfg.catalog_path) as catalog:
        run_id = catalog.start_run("curate")
        summary = CurateSummary(run_id)
        try:
            rows = catalog.candidates(status=FILE_STATUSES)
            # Not accepted before this curate (new, or rejected for a limit since relaxed, or a duplicate
            # whose keeper is gone): compared with takedowns' hashes when accepted now.
            newly = {r["id"] for r in rows if r["status"] != "accepted"}
            key = limits_key(limits_of(cfg))     # a rejection for a file's content is final; for a limit, not
            # Verdicts recorded before their limits were (catalogs from before 2026-12-05) count as reached
            # under today's, as they were treated then (no re-judging), but not with JPEGs decoded strictly.
            before = limits_key(limits_of(cfg), strict_jpeg=False)
            with catalog.transaction():
                if catalog.stamp_verify_limits(before):
                    rows = [{**r, "verify_limits": before} if r["verify_limits"] is None and r["hashed_sha256"]
                            else r for r in rows]
            rows = [r for r in rows if r["status"] != "rejected" or r["verify_reason"] is None
                    or limit_rejected(r, (key, before)) or passing_fault(r["verify_reason"])]
            missing = found_in_quarantine(cfg, catalog, [r for r in rows if not Path(r["file_path"]).exists()])
            waiting = awaiting_publish(cfg, catalog, missing, run_id)      # another machine's, not lost
            summary.unpublished, held = len(waiting), {r["id"] for r in waiting}
            missing = [r for r in missing if r["id"] not in held]
            for r in missing:   # the next collect downloads it again, and this curate inspects it afresh
                log.warning("candidate %s: file %s is gone; marked for re-download", r["id"], r["file_path"])
                catalog.set_status(r["id"], "failed", "transient:file-missing", run_id, "curate",
                                   hashed_sha256=None, verify_reason=None, verify_limits=None)
            gone = {r["id"] for r in missing + waiting}
            rows = [r for r in rows if r["id"] not in gone]
            verify_and_hash(cfg, catalog, rows, run_id, summary)
            rows = [r for r in rows if r["status"] != "failed"]      # damaged since download: set aside
            copies = keep_out_copies_of_removed(cfg, catalog, rows, run_id)    # the very bytes of a photo taken down
            summary.taken_down = len(copies)
            ok = [r for r in rows if r["status"] != "rejected" and r["id"] not in copies]
            with progress.bar("deduplicate", total=len(ok), unit="images") as bar:   # one step: no partial counts
                tests = published_test_images(cfg, catalog)
                digests = {r["sha256"] for r in ok + tests}
                others: dict[str, list] = {METHOD: [], MIRROR_METHOD: []}     # kept pairs not between these files
                confirm = FileSimilarity({}, known=catalog.pair_scores(METHOD, digests, others[METHOD]))
                mirrored = MirroredSimilarity(confirm.paths, confirm.digests,
                                              known=catalog.pair_scores(MIRROR_METHOD, digests, others[MIRROR_METHOD]))
                put_back = {(p["copy"], p["twin"]) for p in put_back_pairs(catalog)}
                decisions = resolve(cfg, ok, tests, confirm, mirrored, put_back)
                bar.advance(len(ok))
            with catalog.transaction():
                catalog.save_pair_scores(METHOD, confirm.scored)      # the next curate needs not score them
                catalog.save_pair_scores(MIRROR_METHOD, mirrored.scored)
                catalog.prune_pair_scores(others)
                for rid in (confirm.changed | mirrored.changed) & {r["id"] for r in ok}:   # rewritten in place, at the same size
                    catalog.update_fields(rid, hashed_sha256=None)     # the next curate inspects it again
                for r in ok:
                    status, reason, dup_of, label = decisions[r["id"]]
                    if status == "accepted" and reason is None and (r["reason"] or "").startswith(("hard-negative", "held:", "not-a-negative:")):
                        reason = r["reason"]      # mining's record (and an undo's mark) stays
                    if (r["status"], r["reason"], r["duplicate_of"], r["curated_label"]) != (status, reason, dup_of, label):
                        catalog.set_status(r["id"], status, reason, run_id, "curate", duplicate_of=dup_of,
                                           curated_label=label)
                keeps = {decisions[i][2]: i for i in catalog.takedown_held() & decisions.keys()
                         if decisions[i][0] == "duplicate"}      # a held copy dropped for another copy
                summary.held = len(hold_lookalikes_of_removed(catalog, [
                    r for r in ok if r["id"] in newly and decisions[r["id"]][0] == "accepted"], keeps))
        except BaseException as exc:
            catalog.finish_run(run_id, run_end_status(exc), {"error": type(exc).__name__})
            raise
        counts = Counter(d[0] for d in decisions.values())
        summary.accepted = counts["accepted"]
        summary.rejected = dict(Counter(r["reason"].split(":")[0] for r in catalog.candidates(status="rejected")))
        summary.duplicates = dict(Counter(d[1].split(":")[0] for d in decisions.values() if d[0] == "duplicate"))
        summary.conflicts = dict(Counter(d[1].split(":with=")[0] for d in decisions.values()
                                         if d[0] == "accepted" and d[1]))
        summary.upgrade[:0] = untold_migrations(catalog)     # this open's, or another command's (mlc collect's)
        catalog.finish_run(run_id, "completed", summary.__dict__)
    progress.summary(f"curate {run_id}", [
        ("inspected", summary.inspected), ("reused (unchanged files)", summary.reused),
        ("re-judged on recorded size (limits changed)", summary.rejudged), ("accepted", summary.accepted),
        ("rejected", summary.rejected), ("duplicates", summary.duplicates), ("accepted with a note", summary.conflicts),
        ("not yet published (left for the next curate)", summary.unpublished or None),
        ("taken down (byte copies of removed photos)", summary.taken_down or None),
        ("held for review (look like removed photos)", summary.held or None),
        ("damaged since download (set aside; the next collect downloads them again)", summary.damaged or None),
        ("once after an upgrade", "; ".join(summary.upgrade))])
    return summary
