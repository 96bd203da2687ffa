"""What the catalog says about its sets, read by collect's top-ups and shortfall reports, `mlc
inspect`, the build's summary and mining's report. A mixin of `Catalog` (store.py), whose connection
(`self.db`) and helpers it uses; read-only statements, in SQLite's dialect as store.py's."""

from __future__ import annotations

import re
from collections import Counter

from .labels import FROM_POOL, HELD, decided_in_review, effective_labels, licence_allowed, reviewed_status
from .schema import FILE_STATUSES

# 1 where the review decision in force is a takedown's hold (`overrides.hold`), given HELD as parameter.
HELD_SQL = "CASE WHEN a.action = 'reject' AND a.detail = ? THEN 1 ELSE 0 END"


def as_built(row: dict) -> tuple[str, str | None]:
    """`reviewed_status`, except that an image a takedown holds out (`held`: its reject is a hold) is
    ('rejected', 'held-for-takedown'), not ('rejected', 'review'), which reads as a reviewer's decision."""
    status, reason = reviewed_status(row)
    return (status, "held-for-takedown") if (status, reason) == ("rejected", "review") and row.get("held") else (status, reason)


class TallyQueries:
    def count_downloaded(self, purpose: str, label: str) -> int:
        """Candidates of a purpose holding `label` (a class, or 'other') that have a file."""
        rows = self.db.execute(
            f"SELECT label FROM candidates WHERE purpose=? AND status IN ({','.join('?' * len(FILE_STATUSES))})",
            (purpose, *FILE_STATUSES))
        return sum(1 for r in rows if label in r["label"].split())

    def set_tally(self, purpose: str, label: str, licences) -> dict:
        """Where the candidates of one set (a purpose and a class, or 'other') stand, for top-ups and
        shortfall reports, as the build will see them (`count` means usable: an image the review
        rejected needs a top-up): accepted counts by the labels the build publishes; the other
        statuses by the label the search gave, with their reasons cut before the first ':' or '='.
        A pool image labelled in review is trained on under its labels: it counts there (a class, or
        'other' as a mined negative does), no longer in the pool. `licences` (`source.licenses`): an
        accepted image whose licence it does not allow is left out of the build, so it counts as
        skipped `license-not-allowed`, and collect tops the set up. It has no default: a caller that
        forgot it counted such images as usable (flows/progress.py did; "any" asks for that)."""
        out: dict = {"accepted": 0, "downloaded": 0, "pending": 0,
                     "rejected": {}, "duplicate": {}, "failed": {}, "skipped": {}}
        reviewed = self.has_table("review_overrides")
        review = (f"o.labels AS review_labels, o.include AS review_include, {HELD_SQL} AS held FROM candidates c "
                  "LEFT JOIN review_overrides o ON o.candidate_id = c.id LEFT JOIN review_actions a ON a.id = o.action_id"
                  if reviewed else "NULL AS review_labels, NULL AS review_include FROM candidates c")
        from_pool = reviewed and purpose == "train"
        where, params = ("c.purpose=? OR (c.purpose='pool' AND o.include=?)", (purpose, FROM_POOL)) if from_pool \
            else ("c.purpose=?", (purpose,))
        rows = self.db.execute("SELECT c.status, c.reason, c.label, c.curated_label, c.purpose, c.file_path, "
                               "c.source, c.license_id, "
                               f"{review} WHERE {where}", ((HELD,) if reviewed else ()) + params)
        for r in map(dict, rows):
            if r["purpose"] == "pool" and decided_in_review(r) == (purpose == "pool"):
                continue        # a pool image counts in the pool, or in training once labelled in review
            status, r["reason"] = as_built(r)
            if status == "accepted" and not licence_allowed(r["source"], r["license_id"], licences):
                status, r["reason"] = "skipped", "license-not-allowed"     # the build leaves it out
            labels = effective_labels(r) if status == "accepted" else r["label"]
            if label not in labels.split():
                continue
            if isinstance(out.get(status), int):
                out[status] += 1
            elif status in out:
                reason = re.split("[:=]", r["reason"] or "unknown", maxsplit=1)[0]
                out[status][reason] = out[status].get(reason, 0) + 1
        return out

    def mined_in_round(self, round_no: int) -> list[dict]:
        """Pool images a mining round moved into the negatives, or held back for review."""
        return [self._row(r) for r in self.db.execute(
            "SELECT * FROM candidates WHERE mined_round=? OR (reason LIKE 'held:%' AND reason LIKE ?) ORDER BY id",
            (round_no, f"%:round={round_no}"))]

    def last_mined_round(self) -> int:
        """The highest mining round the catalog records: mined (`mined_round`), held or put back (in
        the reason, `...round=N`), whatever a review decided since; 0 when none."""
        top = self.db.execute("SELECT MAX(mined_round) AS n FROM candidates").fetchone()["n"] or 0
        for r in self.db.execute("SELECT DISTINCT reason FROM candidates WHERE reason LIKE '%round=%'"):
            if m := re.search(r"round=(\d+)$", r["reason"]):
                top = max(top, int(m.group(1)))
        return top

    def mined_rounds(self) -> list[int]:
        """The mining rounds that have images in the negatives or held back for review, with no
        review decision in force (undo leaves those): what `mlc mine --undo --round N` can put back."""
        undecided = (" LEFT JOIN review_overrides o ON o.candidate_id = c.id WHERE o.candidate_id IS NULL AND"
                     if self.has_table("review_overrides") else " WHERE")
        rounds = {r["mined_round"] for r in self.db.execute(
            f"SELECT DISTINCT c.mined_round FROM candidates c{undecided} c.mined_round IS NOT NULL")}
        for r in self.db.execute(f"SELECT DISTINCT c.reason FROM candidates c{undecided} c.reason LIKE 'held:%:round=%'"):
            rounds.add(int(r["reason"].rsplit(":round=", 1)[1]))
        return sorted(rounds)

    def labels_found_by(self, queries: list[str], purpose: str = "train") -> dict[str, int]:
        """Candidates of `purpose` that any of `queries` found, counted by the label they are filed
        under: where a class's photos are when none is filed under it (the class was renamed)."""
        if not queries:
            return {}
        found = " OR ".join([self.backend.json_list_has("queries")] * len(queries))
        rows = self.db.execute(f"SELECT label, COUNT(*) AS n FROM candidates WHERE purpose=? AND ({found}) "
                               "GROUP BY label", (purpose, *queries))
        return {r["label"]: r["n"] for r in rows}

    def counts(self) -> list[dict]:
        """Counts per purpose, label and status: what `mlc inspect` starts from. Sorted here (code
        points), as `reasons` is: a PostgreSQL server with a language's collation ordered them otherwise."""
        rows = self.db.execute("SELECT purpose, label, status, COUNT(*) AS n FROM candidates "
                               "GROUP BY purpose, label, status")
        return sorted((dict(r) for r in rows), key=lambda r: (r["purpose"], r["label"], r["status"]))

    def status_counts(self) -> dict[str, int]:
        """Candidates per status (pending, downloaded, failed, accepted, ...), as recorded: no review
        decision applied (`reasons` applies them). A status no candidate has is absent."""
        rows = self.db.execute("SELECT status, COUNT(*) AS n FROM candidates GROUP BY status")
        return dict(sorted((r["status"], int(r["n"])) for r in rows))

    def event_counts(self) -> dict[str, int]:
        """Events per stage (search, download, curate, ...): each a status recorded for a candidate."""
        rows = self.db.execute("SELECT stage, COUNT(*) AS n FROM events GROUP BY stage")
        return dict(sorted((r["stage"], int(r["n"])) for r in rows))

    def found_since(self, t: float) -> tuple[int, int]:
        """(photos a search found or found again since `t`, of them skipped: no size asked for offered)."""
        row = self.db.execute("SELECT COUNT(*) AS n, SUM(CASE WHEN status='skipped' AND reason='no-allowed-size' "
                              "THEN 1 ELSE 0 END) AS skipped FROM candidates WHERE updated_at >= ?", (t,)).fetchone()
        return int(row["n"]), int(row["skipped"] or 0)

    def reasons(self, dataset_only: bool = False) -> list[dict]:
        """Counts per status and reason, most first; equal counts by status, then reason, compared here
        (code points): PostgreSQL returned ties in its own order, and a locale collation may sort "_"
        or capitals apart from SQLite's, so `mlc inspect --json` differed between the two.
        `dataset_only`: of the dataset's candidates (training and probe sets), not the mining pool's:
        what a version's card counts as left out (the export26 audit: a pool copy was counted)."""
        only = " AND c.purpose IN ('train', 'probe')" if dataset_only else ""
        # As the build sees them (`reviewed_status`): an image the review put back is no longer counted
        # as removed, and one it rejected is ('rejected', 'review'); one a takedown holds (its reject is
        # a hold: labels.HELD) is ('rejected', 'held-for-takedown'), not a reviewer's decision.
        if self.has_table("review_overrides"):
            rows = self.db.execute(
                "SELECT c.status, c.reason, o.include AS review_include, CASE WHEN c.file_path IS NULL THEN 0 ELSE 1 "
                f"END AS file_path, {HELD_SQL} AS held, COUNT(*) AS n FROM candidates c "
                "LEFT JOIN review_overrides o ON o.candidate_id = c.id LEFT JOIN review_actions a ON a.id = o.action_id "
                f"WHERE (c.reason IS NOT NULL OR o.include IS NOT NULL){only} "
                "GROUP BY c.status, c.reason, o.include, "
                "CASE WHEN c.file_path IS NULL THEN 0 ELSE 1 END, a.action, a.detail", (HELD,))
        else:
            rows = self.db.execute("SELECT c.status, c.reason, COUNT(*) AS n FROM candidates c WHERE c.reason IS NOT NULL"
                                   f"{only} GROUP BY c.status, c.reason")
        out: Counter = Counter()
        for r in map(dict, rows):
            status, reason = as_built(r)
            if reason is not None:
                out[(status, reason)] += r["n"]
        return sorted(({"status": k[0], "reason": k[1], "n": n} for k, n in out.items()),
                      key=lambda r: (-r["n"], r["status"], r["reason"]))
