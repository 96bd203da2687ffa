"""The catalog's statements about files leaving the data root: takedowns (`mlc remove`) and, for an
object-store data root, which files the catalog names. A mixin of `Catalog` (store.py), whose
connection (`self.db`) and helpers they use."""

from __future__ import annotations

import json
import os
import time

from mlc_pipeline.config import query_key

from .labels import HELD


class RemovalQueries:
    def removal_targets(self, photo_id: str | None = None, owner: str | None = None,
                        query: str | None = None, source: str | None = None) -> list[dict]:
        """Candidates a takedown names: by photo id (of one `source`, if given: ids of different
        sources may be equal), by owner (id or name), or by a search query. Inside a transaction the
        rows are locked (PostgreSQL; SQLite's write lock covers them), so no writer moves their files
        until it ends."""
        if photo_id is not None:
            where, params = ("photo_id=?", (photo_id,)) if source is None else (
                "photo_id=? AND source=?", (photo_id, source))
        elif owner is not None:
            where, params = "(owner=? OR owner_name=?)", (owner, owner)
        elif query is not None:
            # The catalog keeps each query as the config spelt it; a takedown names it in any case or
            # spacing (`query_key`): every spelling found of it is matched.
            stored = self.db.execute("SELECT DISTINCT queries FROM candidates WHERE queries IS NOT NULL").fetchall()
            spellings = sorted({q for r in stored for q in json.loads(r["queries"]) if query_key(q) == query_key(query)})
            if not spellings:
                return []
            where = "(" + " OR ".join([self.backend.json_list_has("candidates.queries")] * len(spellings)) + ")"
            params = tuple(spellings)
        else:
            raise ValueError("name a photo id, an owner or a query")
        lock = self.backend.FOR_UPDATE if self.db.in_transaction else ""
        return [self._row(r) for r in self.db.execute(f"SELECT * FROM candidates WHERE {where} ORDER BY id{lock}",
                                                      params)]

    def removal_files(self) -> list[dict]:
        """Every file the takedowns recorded (`removals.files_deleted`) that lies inside this data root:
        path, and the photo's sha256, source and photo_id. The records hold absolute paths: a data root
        renamed, with a new one made at its old path, must never reach into the new one (verify22)."""
        found = [dict(r, path=path) for r in self.db.execute(
            "SELECT r.files_deleted, c.sha256, c.source, c.photo_id FROM removals r JOIN candidates c "
            "ON c.id = r.candidate_id WHERE r.files_deleted <> '[]'") for path in json.loads(r["files_deleted"])]
        return [dict(r, path=self.usable_path(inside)) for r in found
                if not os.path.isabs(inside := self.stored_path(r["path"]))]

    def dropped_for(self, ids: list[int]) -> list[dict]:
        """Candidates dropped as near duplicates of these (`duplicate_of`), as curate confirmed them."""
        marks = ",".join("?" * len(ids))
        return [self._row(r) for r in self.db.execute(
            f"SELECT * FROM candidates WHERE status='duplicate' AND duplicate_of IN ({marks}) ORDER BY id", ids)] if ids else []

    def status_before_removal(self, row: dict) -> str:
        "A candidate's status before its takedown (from its events); as it is now when not taken down."
        if row["status"] != "removed":
            return row["status"]
        found = self.db.execute("SELECT status FROM events WHERE candidate_id=? AND id < (SELECT MIN(id) FROM events "
                                "WHERE candidate_id=? AND status='removed') ORDER BY id DESC LIMIT 1",
                                (row["id"], row["id"])).fetchone()
        return found["status"] if found else "removed"

    def accepted_hashes(self) -> list[dict]:
        """Accepted candidates with their perceptual hashes (id, source, photo_id, phash, view_hashes):
        what a takedown compares with the photos it removes."""
        return [dict(r) for r in self.db.execute(
            "SELECT id, source, photo_id, phash, view_hashes FROM candidates WHERE status='accepted' "
            "AND phash IS NOT NULL ORDER BY id")]

    def holds_sha256(self, sha256: str) -> bool:
        """Whether a candidate not taken down has these bytes (a copy under another id, another source)."""
        return self.db.execute("SELECT 1 FROM candidates WHERE sha256=? AND status<>'removed' LIMIT 1",
                               (sha256,)).fetchone() is not None

    def record_removal(self, row: dict, selector: str, reason: str, run_id: str, files_deleted: list[str]) -> None:
        """Mark a candidate removed for good and keep the decision, its reason and what was deleted."""
        now = time.time()
        self.db.execute("INSERT INTO removals (candidate_id, source, photo_id, owner, selector, reason, run_id, at, "
                        "files_deleted) VALUES (?,?,?,?,?,?,?,?,?)",
                        (row["id"], row["source"], row["photo_id"], row["owner"], selector, reason, run_id, now,
                         json.dumps(files_deleted)))
        self.set_status(row["id"], "removed", f"takedown:{reason}", run_id, "remove", file_path=None)

    def removed_digests(self) -> dict[str, dict]:
        """sha256 -> source, photo_id and reason of a photo taken down (the first, when several)."""
        out: dict[str, dict] = {}
        for r in self.db.execute("SELECT sha256, source, photo_id, reason FROM candidates WHERE status='removed' "
                                 "AND sha256 IS NOT NULL ORDER BY id"):
            out.setdefault(r["sha256"], dict(r))
        return out

    def removed_hashes(self) -> list[dict]:
        """Photos taken down with their perceptual hashes (kept when the file goes): id, source,
        photo_id, reason, phash, view_hashes, corner_hashes, and `removed_at` (the first takedown)."""
        return [dict(r) for r in self.db.execute(
            "SELECT id, source, photo_id, reason, phash, view_hashes, corner_hashes, (SELECT MIN(r.at) FROM removals r "
            "WHERE r.candidate_id=candidates.id) AS removed_at FROM candidates WHERE status='removed' "
            "AND phash IS NOT NULL ORDER BY id")]

    def has_removed_hashes(self) -> bool:
        """Whether any photo taken down kept its hashes: one row read, where `removed_hashes` reads all."""
        return self.db.execute("SELECT 1 FROM candidates WHERE status='removed' AND phash IS NOT NULL "
                               "LIMIT 1").fetchone() is not None

    def first_accepted(self, ids: list[int], chunk: int = 500) -> dict[int, float]:
        """Candidate id -> when curate first accepted it (its first 'accepted' event), for `ids` only:
        read in chunks, so a curate of a few new images does not group the whole events table."""
        out: dict[int, float] = {}
        ids = sorted(set(ids))
        for i in range(0, len(ids), chunk):
            part = ids[i:i + chunk]
            out.update((r["candidate_id"], r["at"]) for r in self.db.execute(
                "SELECT candidate_id, MIN(at) AS at FROM events WHERE status='accepted' "
                f"AND candidate_id IN ({','.join('?' * len(part))}) GROUP BY candidate_id", part))
        return out

    def takedown_held(self) -> set[int]:
        """Candidates a takedown's hold keeps out now (catalog.overrides.hold: a reject logged with
        detail `{"held": true}`, still in force): near copies of photos taken down."""
        return set(self.takedown_holds())

    def takedown_holds(self) -> dict[int, str]:
        """`takedown_held`, each with the reason its hold was logged with (it names the photo taken down)."""
        if not self.has_table("review_overrides"):
            return {}
        return {r["candidate_id"]: r["reason"] or "" for r in self.db.execute(
            "SELECT o.candidate_id, a.reason FROM review_overrides o JOIN review_actions a ON a.id = o.action_id "
            "WHERE o.include = 'rejected' AND a.action = 'reject' AND a.detail = ?", (HELD,))}

    def removed_owners(self) -> set[str]:
        "Owners removed as a whole (`mlc remove --owner`): their later photos stay out too."
        rows = self.db.execute("SELECT DISTINCT owner FROM removals WHERE selector LIKE 'owner:%' AND owner IS NOT NULL")
        return {r["owner"] for r in rows}

    def taken_down_photos(self) -> set[tuple[str, str]]:
        "(source, photo_id) of every photo taken down: what an export of an older version leaves out."
        return {(r["source"], r["photo_id"]) for r in
                self.db.execute("SELECT source, photo_id FROM candidates WHERE status='removed'")}

    def later_photos_of_removed_owners(self) -> list[dict]:
        """Candidates not removed whose owner was taken down with `mlc remove --owner` (found since, or
        downloaded by a collect from before this rule), each with `takedown_selector` and
        `takedown_reason`: that takedown's."""
        # Driven from the owners' takedowns (usually none: then nothing is scanned), each owner's first.
        return [self._row(r) for r in self.db.execute(
            "SELECT c.*, r.selector AS takedown_selector, r.reason AS takedown_reason FROM "
            "(SELECT owner, MIN(id) AS first_id FROM removals WHERE selector LIKE 'owner:%' AND owner IS NOT NULL "
            "GROUP BY owner) o JOIN removals r ON r.id = o.first_id JOIN candidates c ON c.owner = o.owner "
            "WHERE c.status <> 'removed' ORDER BY c.id")]

    def removals(self) -> list[dict]:
        return [dict(r) for r in self.db.execute("SELECT * FROM removals ORDER BY id")]

    def stored_file_paths(self) -> set[str]:
        """Every file path as recorded (relative to the data root): what an object-store root must hold."""
        return {r["file_path"] for r in self.db.execute("SELECT file_path FROM candidates WHERE file_path IS NOT NULL")}
