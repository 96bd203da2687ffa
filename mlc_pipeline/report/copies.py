"""What `mlc inspect` says of the copies curate found, beyond their counts: the duplicate groups of the
HTML page (the copy kept, or why there is none, and the copies a takedown holds), and the files of a
review pair (curate's note names the other member by its candidate id alone: `with=133`).

The curation29 audit (finding 7): a copy whose kept image was taken down showed as a group with no kept
image and nothing saying that it was held for the takedown, and a review pair could be found only by SQL.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

from mlc_pipeline.catalog import Catalog
from mlc_pipeline.catalog.pairs import REVIEW_PAIR, review_partner
from mlc_pipeline.curate.verify import VerifyLimits
from mlc_pipeline.report.html import figure, image_figure

TAKEN_DOWN_NAME = re.compile(r"(\S+:\S+), taken down\b")       # lookalikes.taken_down_name, in a hold's reason
TEST_COPY = re.compile(r"-duplicate-of-test:(v\d+):")


def shown_name(row: dict) -> str:
    """How a report names a catalog row: its file in the folder (folder mode), else its photo id."""
    return row.get("source_file") or row["photo_id"]


def held_for(why: str) -> str:
    """A takedown hold's reason (`Catalog.takedown_holds`) as a caption says it: the photo it was made for."""
    named = TAKEN_DOWN_NAME.search(why)
    if named:
        return f"held for the takedown of {named[1]}"
    return "held for a takedown (" + why.removeprefix("held: ").split("; undo")[0] + ")"


@dataclass
class DuplicateView:
    """What the duplicate groups need of the catalog, read while it is open: the copies (`dups`), the
    accepted images by id, the review's decisions, the takedown holds (id -> reason) and the kept images
    that are no longer accepted (a photo taken down, one rejected since), by id."""
    dups: list[dict]
    accepted: dict[int, dict]
    review_in: dict[int, str]
    holds: dict[int, str] = field(default_factory=dict)
    gone: dict[int, dict] = field(default_factory=dict)

    @classmethod
    def read(cls, catalog: Catalog, review_in: dict[int, str]) -> DuplicateView:
        dups = catalog.candidates(status="duplicate")
        accepted = {r["id"]: r for r in catalog.candidates(status="accepted")}
        gone = {k: row for k in {d["duplicate_of"] for d in dups} - accepted.keys() - {None}
                if (row := catalog.get(k)) is not None}
        return cls(dups, accepted, review_in, catalog.takedown_holds(), gone)


def duplicate_groups(view: DuplicateView, limit: int, limits: VerifyLimits | None) -> list[str]:
    """The HTML of the first `limit` duplicate groups: the image kept (or why none is shown), then its
    copies, each caption saying what a review or a takedown decided over curation."""
    by_kept: dict[int | None, list[dict]] = defaultdict(list)
    for d in view.dups:
        by_kept[d["duplicate_of"]].append(d)
    parts = []
    for kept_id, members in list(by_kept.items())[:limit]:
        cells = [kept_cell(view, kept_id, members, limits)]
        cells += [image_figure(d["file_path"], f"{shown_name(d)}: {d['reason']}" + copy_words(view, d["id"]),
                               limits=limits) for d in members]
        parts.append("<div class='group'>" + "".join(cells) + "</div>")
    return parts


def copy_words(view: DuplicateView, cid: int) -> str:
    if cid in view.holds:
        return ", " + held_for(view.holds[cid])
    return ", put back in review" if view.review_in.get(cid) == "accepted" else ""


def kept_cell(view: DuplicateView, kept_id: int | None, members: list[dict], limits: VerifyLimits | None) -> str:
    """The image kept (the original file, as the pipeline reads it), or a placeholder saying why there is
    none: taken down, no longer accepted, or a published test image no longer in the catalog."""
    kept = view.accepted.get(kept_id)
    if kept is not None:
        # a review decision outranks curation's: the copy kept may be out (a reviewer's, or a takedown's hold)
        kept_as = (held_for(view.holds[kept_id]) if kept_id in view.holds else
                   "rejected in review" if view.review_in.get(kept_id) == "rejected" else "kept")
        return image_figure(kept["file_path"], f"{kept_as} {shown_name(kept)} ({kept['curated_label']})", limits=limits)
    if (row := view.gone.get(kept_id)) is not None:
        if row["status"] == "removed":
            return figure(None, f"kept {row['source']}:{row['photo_id']} ({shown_name(row)}), taken down since: "
                                f"{(row['reason'] or '').removeprefix('takedown:')}", "taken down")
        return figure(None, f"kept {shown_name(row)}, {row['status']} since: {row['reason'] or ''}", row["status"])
    tests = sorted({m[1] for d in members if (m := TEST_COPY.search(d["reason"] or ""))})
    if tests:
        return figure(None, f"kept: a test image of {', '.join(tests)}, no longer in the catalog (taken down, "
                            "or gone since)", "not in the catalog")
    return figure(None, "kept: an image no longer in the catalog", "not in the catalog")


# --- review pairs ---------------------------------------------------------------------------------
def named(row: dict) -> str:
    """A review pair's member as a person finds it: its file in the folder (or its photo id and file),
    its class, and its status where it is not accepted."""
    where = row.get("source_file") or f"{row['source']}:{row['photo_id']} ({row['file_path'] or 'no file'})"
    label = row["curated_label"] or row["label"] or "other"
    return f"{where} ({label}{'' if row['status'] == 'accepted' else ', ' + row['status']})"


def review_pairs(catalog: Catalog) -> list[dict]:
    """The images with a review pair's note (curate kept both of two copies whose labels differ), each
    named with the other member its note names: {"id", "reason", "image", "with_id", "with"}."""
    out = []
    for row in catalog.candidates(reason_prefix=REVIEW_PAIR):
        if (pair := review_partner(row["reason"])) is None:
            continue
        other = catalog.get(pair[0])
        out.append({"id": row["id"], "reason": row["reason"], "image": named(row), "with_id": pair[0],
                    "with": named(other) if other else f"candidate {pair[0]}, no longer in the catalog"})
    return out


def review_words(pairs: list[dict]) -> dict[str, str]:
    """reason -> the files it is the note of, and the file its `with=<id>` names, as a "Why" line ends."""
    members: dict[str, list[str]] = defaultdict(list)
    partner = {}
    for p in pairs:
        members[p["reason"]].append(p["image"])
        partner[p["reason"]] = p["with"]
    return {reason: f"{', '.join(images[:3])}{f' and {len(images) - 3} more' if len(images) > 3 else ''} "
                    f"with {partner[reason]}" for reason, images in members.items()}
