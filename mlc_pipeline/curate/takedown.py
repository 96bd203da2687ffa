"""Takedown: `mlc remove` honours an owner's removal request or a licence change.

The named photos become `removed` in the catalog (final: collect, curate and mine never bring them
back), and so do their byte copies under other ids; the decision and its reason are kept in the
`removals` table, and their files leave raw/ and the quarantine. Near copies are held for review
(curate/lookalikes.py). The next `mlc build` no longer includes them, so its manifest and
ATTRIBUTION.md are regenerated without them (an owner removed with --owner also keeps any later
photo of theirs out). Published versions are immutable: the command lists those that still contain
a removed photo or a copy of it (byte copies taken down, near copies held), so they can be rebuilt
or withdrawn, and the exports of them under the data root that hold them. An export made after the
takedown leaves them out (dataset/takedowns.py, read by `mlc export`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mlc_pipeline.catalog import Catalog, overrides
from mlc_pipeline.config import Config
from mlc_pipeline.curate.hashing import corner_phashes
from mlc_pipeline.curate.lookalikes import hold_lookalikes_of_removed, holds_for, taken_down_name, takedown_reason
from mlc_pipeline.fsutil import sha256_file
from mlc_pipeline.layout import DataLayout
from mlc_pipeline.locking import files_lock
from mlc_pipeline.manifest import read_export_markers, read_manifest, versions

log = logging.getLogger(__name__)


@dataclass
class RemoveResult:
    run_id: str
    removed: list[dict] = field(default_factory=list)          # catalog rows, as they were before
    already_removed: list[dict] = field(default_factory=list)
    files_deleted: list[str] = field(default_factory=list)    # deleted from this data root (once it returns)
    left_outside: list[str] = field(default_factory=list)     # their files outside it: never deleted by it
    copies: list[dict] = field(default_factory=list)           # byte copies (rows as they were): taken down
    held: list[dict] = field(default_factory=list)             # near copies held out for review by this run
    holds: list[dict] = field(default_factory=list)            # every hold in force for these photos
    published_in: dict[str, list[str]] = field(default_factory=dict)   # version -> photo ids it holds
    held_in: dict[str, list[str]] = field(default_factory=dict)        # version -> ids of `holds` it holds
    copies_in: dict[str, list[str]] = field(default_factory=dict)      # version -> ids of `copies` it holds

    @property
    def photos(self) -> list[dict]:
        "The photos taken down by this takedown, now or before, and their byte copies."
        return self.removed + self.already_removed + self.copies


def takedown_selector(reason: str, photo_id: str | None, owner: str | None, query: str | None,
                      source: str | None) -> str:
    """What a takedown names, as the catalog keeps it ('photo-id:...', 'owner:...', 'query:...'); a
    ValueError for a request that names nothing, too much, or no reason (checked before any lock)."""
    named = [(k, v) for k, v in (("photo-id", photo_id), ("owner", owner), ("query", query)) if v is not None]
    if len(named) != 1:
        raise ValueError("name exactly one of a photo id, an owner or a query")
    if not reason or not reason.strip():
        raise ValueError("a takedown needs a reason (it is kept in the catalog)")
    if source is not None and photo_id is None:
        raise ValueError("--source narrows --photo-id (ids repeat across sources); an owner or a query is "
                         "matched in every source")
    return f"{named[0][0]}:{named[0][1]}" if source is None else f"photo-id:{source}:{photo_id}"


def remove_photos(cfg: Config, reason: str, photo_id: str | None = None, owner: str | None = None,
                  query: str | None = None, source: str | None = None, wait: bool = True,
                  lock_timeout_s: float = 60.0, client: str = "mlc remove",
                  versions_holding: Callable[[set[tuple[str, str]]], dict[str, list[str]]] | None = None
                  ) -> RemoveResult:
    """Remove every candidate named by exactly one of photo_id / owner / query, for `reason`
    (`source`: only that source's photo id). The rows are read inside the transaction that removes
    them, so the file deleted is where the catalog says it is now, not where it was a moment ago.
    Holds the data root's files lock (locking.files_lock): a curate or a build in progress is waited
    for (`wait=False`: FilesBusy), a run's training or mining is not. `lock_timeout_s`: how long the
    catalog's write lock is waited for (then CatalogBusy; the review app waits less). `client`: who
    the review log names for the near copies held (`hold_near_copies`, `hold_mirrors`). `versions_holding`:
    the published versions that list some of these photos, or of the copies held, beyond this data
    root's own folders (an object store's, read there rather than fetched whole: sync.versions_holding)."""
    selector = takedown_selector(reason, photo_id, owner, query, source)
    named = dict(photo_id=photo_id, owner=owner, query=query, source=source)
    with files_lock(cfg.data_dir, "remove (takedown)", wait=wait), \
            Catalog(cfg.catalog_path, lock_timeout_s=lock_timeout_s) as catalog:
        if left := delete_recorded_files(catalog):
            log.warning("deleted %d file(s) of photos taken down earlier: that takedown was stopped after it "
                        "was recorded and before its files were deleted", len(left))
        targets = catalog.removal_targets(**named)      # read again inside the transaction, by _remove
        keep_corner_hashes(cfg, catalog, targets)
        elsewhere = versions_holding({(r["source"], r["photo_id"]) for r in targets}) if versions_holding else {}
        with catalog.transaction():
            # One transaction from the run's start to its end: a catalog too busy to write in leaves no
            # run half-recorded ('running' forever), and a failure rolls the whole takedown back.
            run_id = catalog.start_run("remove")
            result = _remove(cfg, catalog, RemoveResult(run_id), reason.strip(), selector, named, elsewhere)
            take_down_byte_copies(cfg, catalog, result, reason.strip())
            thumbs = drop_thumbnails(cfg, catalog, {r["sha256"] for r in result.removed + result.copies})
            result.files_deleted += thumbs
            hold_near_copies(catalog, result, reason.strip(), client)
            hold_mirrors(catalog, result, client)
            result.holds = holds_for(catalog, result.photos)     # this run's and every earlier one's
            catalog.finish_run(run_id, "completed", {     # files_deleted: those to delete once committed
                "selector": selector, "reason": reason.strip(), "removed": len(result.removed),
                "already_removed": len(result.already_removed), "files_deleted": len(result.files_deleted),
                "left_outside": result.left_outside,
                "copies": len(result.copies), "held": len(result.held), "holds": len(result.holds),
                "published_in": {v: len(ids) for v, ids in result.published_in.items()}})
        here = lambda path: catalog.usable_path(catalog.stored_path(path))
        deleted = {here(p) for p in delete_recorded_files(catalog)}     # after the commit: see there
        result.files_deleted = [p for p in result.files_deleted if p in thumbs or here(p) in deleted]
        result.files_deleted += delete_left_files(cfg, [r for r in result.photos if r["status"] == "removed"])
        warn_left_outside(catalog, result.left_outside)
    for rows, attr in ((result.holds, "held_in"), (result.copies, "copies_in")):    # the same pictures, published
        if photos := {(r["source"], r["photo_id"]) for r in rows}:
            setattr(result, attr, merged(published_versions_with(cfg, photos),
                                         versions_holding(photos) if versions_holding else {}))
    return result


def keep_corner_hashes(cfg: Config, catalog: Catalog, targets: list[dict]) -> None:
    """The corner windows' and mirror views' phashes (hashing.corner_phashes) of each photo about to be
    taken down (`targets`: the takedown's rows, catalog.removal_targets), read from its file and committed
    before any file is deleted: a takedown killed after deleting files and rerun (its transaction rolled
    back) still has them (the verify19 audit)."""
    quarantined = QuarantineIndex(cfg.layout.quarantine())
    for row in targets:
        if row["status"] != "removed":
            keep_corners_of(catalog, row, quarantined)


def keep_corners_of(catalog: Catalog, row: dict, quarantined: QuarantineIndex) -> None:
    """Its corner windows' and mirror views' phashes, read from its file, unless kept already (or it
    has no file)."""
    if not row["corner_hashes"] and (where := file_of(row, quarantined)):
        if corners := corner_phashes(where):
            catalog.update_fields(row["id"], corner_hashes=corners)


def _remove(cfg: Config, catalog: Catalog, result: RemoveResult, reason: str, selector: str,
            named: dict, elsewhere: dict[str, list[str]]) -> RemoveResult:
    """Inside the caller's transaction: the rows are read where they are now, then removed."""
    quarantined = QuarantineIndex(cfg.layout.quarantine())
    targets = catalog.removal_targets(**named)
    for row in targets:
        if row["status"] == "removed":
            result.already_removed.append(row)
            continue
        keep_corners_of(catalog, row, quarantined)    # a file downloaded since keep_corner_hashes
        deleted = files_here(catalog, cfg.layout, row, quarantined, result.left_outside)    # once this is committed
        catalog.record_removal(row, selector, reason, result.run_id, deleted)
        result.removed.append(row)
        result.files_deleted.extend(deleted)
    result.published_in = merged(published_versions_with(cfg, {(r["source"], r["photo_id"]) for r in targets}),
                                elsewhere)
    return result


def take_down_byte_copies(cfg: Config, catalog: Catalog, result: RemoveResult, reason: str) -> None:
    """Inside the takedown's transaction: the very bytes of a photo taken down under another id (a
    re-upload, or the image curate kept of an exact-duplicate group while the owner's photo was the
    duplicate) are taken down with it now, as the next curate would (`keep_out_copies_of_removed`):
    until then every export carried them, and `mlc remove` said no published version held the photo
    while every one held its bytes (the export26 audit). Copies taken down earlier are listed too (a
    rerun names them). Their corner hashes are kept, their files deleted once this is committed."""
    quarantined = QuarantineIndex(cfg.layout.quarantine())
    photos = {r["id"]: r for r in result.removed + result.already_removed}
    digests = {r["sha256"]: r for r in reversed(photos.values()) if r["sha256"]}      # the first photo's, by id
    for row in catalog.candidates(sha256=set(digests)) if digests else []:
        if row["id"] in photos:
            continue
        result.copies.append(row)
        if row["status"] != "removed":
            of = digests[row["sha256"]]
            keep_corners_of(catalog, row, quarantined)
            files = files_here(catalog, cfg.layout, row, quarantined, result.left_outside)
            record_copy_removal(catalog, row, of, reason if of["status"] != "removed" else takedown_reason(of),
                                result.run_id, files)
            result.files_deleted += files


def record_copy_removal(catalog: Catalog, row: dict, of: dict, reason: str, run_id: str, files: list[str]) -> None:
    "`row` taken down as a byte copy of the photo `of`, taken down for `reason`."
    why = f"a copy of {taken_down_name(of)} ({reason})"
    catalog.record_removal(row, f"copy-of:{of['source']}:{of['photo_id']}", why, run_id, files)
    log.warning("candidate %s (%s:%s) taken down: %s", row["id"], row["source"], row["photo_id"], why)


def merged(here: dict[str, list[str]], elsewhere: dict[str, list[str]]) -> dict[str, list[str]]:
    "Two maps version -> photo ids as one, the versions in order."
    return {v: sorted(set(here.get(v, [])) | set(elsewhere.get(v, [])))
            for v in sorted(set(here) | set(elsewhere), key=lambda v: int(v[1:]))}


def hold_near_copies(catalog: Catalog, result: RemoveResult, reason: str, client: str) -> None:
    """The images curate dropped as near duplicates of the photos removed (re-encodes, resizes,
    crops) are the same pictures, and with the photos gone the next curate would accept them: they
    are held out as a review's reject (`overrides.hold`), which a user undoes if one is another picture.
    So is the image a photo removed was itself dropped for (its `duplicate_of`: a larger re-upload
    kept in its place, published; the curate25 audit). Held, not removed: a takedown deletes only
    what it names or byte copies of it (curate's `keep_out_copies_of_removed`, which takes those
    down; they are left to it). So is the other member of a review pair (`Catalog.review_partners`):
    curate confirmed it as the same picture and kept both only because their labels differ (the
    curation29 audit: published in the next version, as "other"). The photos already removed count
    too: a rerun holds what a takedown from before a rule did not (a copy a review decided stays as decided)."""
    removed = {r["id"]: r for r in result.photos}
    found = [(row, removed[row["duplicate_of"]], "a near duplicate of") for row in catalog.dropped_for(sorted(removed))]
    found += [(keeper, of, "kept in place of its near duplicate") for of in removed.values()
              if of["duplicate_of"] not in {None, *removed} and catalog.status_before_removal(of) == "duplicate"
              and (keeper := catalog.get(of["duplicate_of"])) is not None and keeper["status"] != "removed"]
    found += [(row, removed[pid], f"a near copy under another label (curate's review pair, s={score:.2f}) of")
              for pid, partners in catalog.review_partners(removed).items() for cid, score in sorted(partners.items())
              if cid not in removed and (row := catalog.get(cid)) is not None and row["status"] != "removed"]
    for row, of, how in found:
        why = (f"held: {how} {taken_down_name(of)} ({takedown_reason(of) if of['status'] == 'removed' else reason}); "
               "undo this if it is another picture")
        if row["sha256"] != of["sha256"] and overrides.hold(catalog, row["id"], why, client) is not None:
            result.held.append(row)
            log.warning("candidate %s (%s:%s) %s", row["id"], row["source"], row["photo_id"], why)


def hold_mirrors(catalog: Catalog, result: RemoveResult, client: str) -> None:
    """Every accepted image is compared with the photos of this takedown (as curate compares the new
    ones, `hold_lookalikes_of_removed`): one accepted before it was compared with the photo by pixels,
    never flipped, so its mirror image's views decide (the curate25 audit: a mirrored copy collected
    before a takedown stayed published, and later mirrored re-uploads became its duplicates)."""
    ids = {r["id"] for r in result.photos}
    result.held += hold_lookalikes_of_removed(catalog, catalog.accepted_hashes(), client=client, of=ids)


def drop_thumbnails(cfg: Config, catalog: Catalog, digests: set[str | None]) -> list[str]:
    """The review app's thumbnails are copies too: gone with the last live candidate of those bytes."""
    deleted = []
    for sha in sorted(d for d in digests if d):
        if not catalog.holds_sha256(sha):
            for thumb in cfg.layout.thumbnails_of(sha):
                thumb.unlink(missing_ok=True)
                deleted.append(str(thumb))
    return deleted


def keep_out_copies_of_removed(cfg: Config, catalog: Catalog, rows: list[dict], run_id: str) -> set[int]:
    """In a curate (files lock held; its own transaction, then the deletions): a file with the very bytes of a photo
    taken down (a re-upload under another id, a copy in another folder) is taken down too, with a
    `removals` record naming the photo it copies, and its file deleted as `mlc remove` deletes one.
    A takedown names photos; their pictures must not come back under another name. Only byte copies
    are taken down: a re-encode cannot be confirmed against the removed photo's file (gone), so
    `hold_lookalikes_of_removed` holds those by their hashes instead. Returns the ids."""
    removed = catalog.removed_digests()
    copies = [r for r in rows if r["sha256"] in removed]
    quarantined, outside = QuarantineIndex(cfg.layout.quarantine()), []
    with catalog.transaction():
        for row in copies:
            of = removed[row["sha256"]]
            record_copy_removal(catalog, row, of, takedown_reason(of), run_id,
                                files_here(catalog, cfg.layout, row, quarantined, outside))
        drop_thumbnails(cfg, catalog, {r["sha256"] for r in copies})
    delete_recorded_files(catalog)
    warn_left_outside(catalog, outside)
    return {r["id"] for r in copies}


class QuarantineIndex:
    """The quarantine's files by name, listed once (by a takedown, or a curate looking for files it
    moved) and only when a file is not where its row says: an rglob per row, inside the catalog's
    write transaction, held the review app up."""

    def __init__(self, root: Path):
        self.root, self._by_name, self._by_stem = root, None, {}

    def named(self, name: str) -> list[Path]:
        if self._by_name is None:
            self._by_name, self._by_stem = {}, {}
            for path in sorted(self.root.rglob("*")) if self.root.is_dir() else []:
                self._by_name.setdefault(path.name, []).append(path)
                self._by_stem.setdefault(path.name.split(".")[0], []).append(path)
        return self._by_name.get(name, [])

    def of_photo(self, layout: DataLayout, source: str, photo_id: str) -> list[Path]:
        """The photo's files in the quarantine, whatever their bytes (`DataLayout.is_photo_file`)."""
        self.named("")
        return [p for p in self._by_stem.get(photo_id, []) if p.is_file() and layout.is_photo_file(p, source, photo_id)]

    def copy_of(self, path: str, sha256: str | None) -> Path | None:
        """The quarantined file with `path`'s name and these bytes (names are not unique across
        sources), or None."""
        return next((p for p in self.named(Path(path).name)
                     if sha256 and p.is_file() and sha256_file(p) == sha256), None)


def file_of(row: dict, quarantine: QuarantineIndex) -> str | None:
    """Where a candidate's file is: where the row says, else moved to the quarantine (a curate stopped
    after moving it there may not have recorded the move), only if its bytes are the candidate's there
    (names are not unique across sources)."""
    if not row["file_path"] or os.path.exists(row["file_path"]):
        return row["file_path"]
    moved = quarantine.copy_of(row["file_path"], row["sha256"])
    return str(moved) if moved else None


def files_of(layout: DataLayout, row: dict, quarantine: QuarantineIndex) -> list[str]:
    """Every file of a candidate's photo in this data root: its own (`file_of`), and any copy curate
    set aside in the quarantine (a file damaged since its download, moved there before the photo was
    downloaded again: `stage.set_aside_damaged`; no row names it, and its bytes are not the photo's,
    the export26 audit), and any file at its place in raw/ that no row names (a finished download a
    collect killed before recording it left there: the collect27 audit)."""
    own = [where] if (where := file_of(row, quarantine)) else []
    out, seen = [], set()
    for path in own + [str(p) for p in quarantine.of_photo(layout, row["source"], row["photo_id"])] + \
            [str(p) for p in layout.raw_files(row["source"], row["photo_id"])]:
        if os.path.abspath(path) not in seen:
            seen.add(os.path.abspath(path))
            out.append(path)
    return out


def files_here(catalog: Catalog, layout: DataLayout, row: dict, quarantine: QuarantineIndex,
               outside: list[str]) -> list[str]:
    """`files_of` inside this data root: the files a takedown records and deletes. One outside it (a
    catalog of schema 1 records absolute paths: an old root copied without raw/ names the original's
    files) is never deleted from here (`Catalog.removal_files`): it goes to `outside`, not into the
    record, and is not counted as deleted (the upgrade29 audit: "1 file(s) deleted", none was)."""
    files = files_of(layout, row, quarantine)
    outside += [p for p in files if os.path.isabs(catalog.stored_path(p)) and p not in outside]
    return [p for p in files if not os.path.isabs(catalog.stored_path(p))]


def warn_left_outside(catalog: Catalog, outside: list[str]) -> None:
    if outside:
        log.warning("left %d file(s) of the photos taken down that lie outside this data root (%s), which a "
                    "takedown never deletes: %s", len(outside), catalog.root, ", ".join(outside))


def delete_left_files(cfg: Config, rows: list[dict]) -> list[str]:
    """After the commit: the files still at the places of photos taken down before this run (a copy
    set aside in the quarantine, or a finished download a killed collect never recorded in raw/, that
    a takedown from before 2026-12-07 did not know of). The paths."""
    return [str(path) for row in rows for path in cfg.layout.photo_files(row["source"], row["photo_id"])
            if unlinked(path)]


def delete_recorded_files(catalog: Catalog) -> list[str]:
    """Delete every file a committed takedown recorded that is still there: a takedown commits its rows
    `removed` first and deletes their files after. Deleted inside the transaction, a takedown killed
    before its commit lost the files and kept the rows, which curate then marked for re-download and
    collect fetched again: the takedown undone (the interrupt22 audit). Killed between, only files are
    left, and the next remove or curate deletes them here. A file with other bytes than the photo's is
    left alone unless it lies at one of the photo's places (`DataLayout.is_photo_file`: a copy set
    aside damaged has other bytes; no other photo's file is ever there)."""
    layout = DataLayout(catalog.root)
    return [r["path"] for r in catalog.removal_files() if os.path.isfile(r["path"]) and unlinked(
        r["path"], lambda r=r: r["sha256"] is None or layout.is_photo_file(r["path"], r["source"], r["photo_id"])
        or sha256_file(r["path"]) == r["sha256"])]


def unlinked(path: str | Path, check: Callable[[], bool] = lambda: True) -> bool:
    """Delete a file of a photo taken down if `check()` says it is one; whether it was deleted. One
    that cannot be read or deleted is a warning: the takedown stands (committed), and one file must
    not stop every curate."""
    try:
        if check():
            Path(path).unlink(missing_ok=True)
            return True
    except OSError as exc:
        log.warning("could not delete %s, a file of a photo taken down (%s): it is out of every build; "
                    "delete it by hand (the next curate or remove tries again)", path, exc.strerror or exc)
    return False


def published_versions_with(cfg: Config, photos: set[tuple[str, str]]) -> dict[str, list[str]]:
    "version -> photo ids of `photos` (source, photo_id) that its manifest still lists."
    root = cfg.layout.datasets
    out: dict[str, list[str]] = {}
    for version in versions(root):
        manifest = Path(root / version / "manifest.csv")
        if not manifest.exists():
            continue
        held = sorted(r["photo_id"] for r in read_manifest(manifest) if (r["source"], r["photo_id"]) in photos)
        if held:
            out[version] = held
    return out


def exports_with(cfg: Config, published_in: dict[str, list[str]]) -> dict[str, list[str]]:
    """The exports under <data_dir>/exports/ (`mlc export`'s default place) of the versions in
    `published_in` that hold its photos: export folder -> photo ids (one made after the takedown
    left them out: its export.json lists them). A damaged marker is skipped, named in a warning."""
    found: dict[str, list[str]] = {}
    name = cfg.layout.datasets.name
    for folder, info in read_export_markers(cfg.data_dir / "exports").items():
        if info.get("dataset") != name or info.get("version") not in published_in:
            continue
        left_out = {p.split(":", 1)[-1] for p in info.get("taken_down_left_out", [])}
        held = [p for p in published_in[info["version"]] if p not in left_out]
        if held:
            found[str(folder)] = held
    return found
