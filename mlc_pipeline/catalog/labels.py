"""What a review decided, as the build applies it to a candidate row: its labels and whether it is in.
Pure rules on a row (the candidate's columns, plus `review_labels` / `review_include` from the review's
overrides when they were joined), shared by the build (catalog.overrides.build_candidates), the review
app's "next build" line, collect's count of usable images (Catalog.set_tally) and mining; and what a
review action does to an image's override (`next_state`)."""

from __future__ import annotations


class ReviewError(ValueError):
    """An action that cannot apply to this image (one line, shown to the reviewer)."""


# The override's `include` for a pool image a reviewer labelled: kept in the override (a review never
# edits a candidate's row), it says where the image came from after a later search changes its set.
FROM_POOL = "from-pool"
# The detail of a takedown's hold (`overrides.hold`: a review reject made for a takedown), which the
# tallies, the takedowns' queries and the override store all look for.
HELD = '{"held": true}'


def effective_labels(row: dict) -> str:
    """The labels the next build publishes a candidate under ('other': none of the classes), the one
    rule for the build and the review app: the review's labels (training and pool images), else the
    curated ones, else the labels it was searched under. Curate leaves `curated_label` NULL on
    duplicates and on images rejected at verification, so one that review puts back keeps its searched
    class; a photo of the "other" set was searched as 'other' and stays a negative. A pool image
    labelled in review (`decided_in_review`) enters training under the review's labels."""
    labelled = row.get("purpose") in ("train", "pool") or row.get("review_include") == FROM_POOL
    reviewed = row.get("review_labels") if labelled else None
    return reviewed or row.get("curated_label") or row.get("label") or "other"


def next_build(row: dict, licences=None) -> tuple[bool, str]:
    """Whether the next build takes the candidate, and why (the review app's "next build" line): the
    one rule for the build (catalog.overrides.build_candidates) and the app. A put-back image is in only
    while it is still rejected or a duplicate with a file (not taken down, failed or pending since).
    `licences` (the config's `source.licenses`; None: not asked): an image it would take is out when the
    setting no longer allows its licence, as the build leaves it out (`licence_allowed`, after
    build_candidates): the app said "in" for those (the review29 audit). With `duplicate_of_status`
    (the status of the image it is a duplicate of, which the review app's page joins), a copy of a
    photo taken down says why it is out (`copy_of_removed`)."""
    taken, why = _review_rule(row)
    if taken and licences is not None and not licence_allowed(row["source"], row.get("license_id"), licences):
        what = "a photo with no licence id" if row.get("license_id") is None else f"its licence {row['license_id']}"
        return False, f"source.licenses ({', '.join(map(str, licences))}) does not allow {what}: widen it to publish " \
                      "the image again"
    return taken, why


def _review_rule(row: dict) -> tuple[bool, str]:
    include, status = row.get("review_include"), row["status"]
    dataset = row["purpose"] in ("train", "probe")
    if status == "removed":
        return False, "taken down"
    if include == "rejected":
        return False, "rejected in review"
    if dataset and status == "accepted":
        return True, ""
    if dataset and include == "accepted" and status in ("rejected", "duplicate") and row.get("file_path"):
        return True, "put back in review"
    if decided_in_review(row):
        return True, "a pool image labelled in review"
    if row["purpose"] == "pool" and status == "accepted":
        return False, "in the mining pool: save labels to train on it"
    if status == "downloaded":
        return False, "not curated yet: the next curate decides"
    if dataset and status == "duplicate" and row.get("duplicate_of_status") == "removed":
        return False, copy_of_removed(row)
    return False, ""


def copy_of_removed(row: dict) -> str:
    """Why a copy curate dropped for a photo taken down since is out, with no review decision in force
    (a takedown's hold undone, say): it is still a duplicate until the next curate, which decides it
    again with the photo gone; "restore" puts it in the next build now, where it may (`copy_refused`).
    The page said "out" with no reason, and the docs that an undo puts it back (the review29 audit)."""
    why = "a copy of a photo taken down: the next `mlc curate` decides it again"
    try:
        copy_refused(row, "restore")
    except ReviewError:
        return why
    return f"{why}, or restore it now with `a`" if row.get("file_path") else why


def copy_refused(row: dict, action: str) -> None:
    """ReviewError for putting back a copy that must stay out: a byte copy (the same bytes cannot be
    another picture, and twice in a version they can land in train and valid), or, by "restore", a
    near copy of a published test image (trained on, the next test score would be inflated)."""
    reason, of = row["reason"] or "", row["duplicate_of"]
    to_test = "-duplicate-of-test:" in reason     # a near one of a curate before 2026-12-07 may hold its source bytes
    if reason.startswith("exact-") or row["sha256"] and row["sha256"] == row.get("duplicate_of_sha256"):
        what = "a published test image" if to_test else f"candidate {of}" if of else "another image"
        raise ReviewError(f"the same bytes as {what}: it is not another picture, and a copy in the version "
                          + ("would train on a test image" if to_test else "would be in it twice"))
    if to_test and action == "restore":
        raise ReviewError("a near copy of a published test image: trained on, it would inflate the test score; "
                          "if it is another picture, mark it 'not a duplicate'")


def reviewed_status(row: dict) -> tuple[str, str | None]:
    """(status, reason) as the build sees the candidate: an accepted image the review rejected is out
    ('rejected', 'review'); a rejected or duplicate image the review put back, with its file, is in."""
    include = row.get("review_include")
    if row["status"] == "accepted" and include == "rejected":
        return "rejected", "review"
    if include == "accepted" and row["status"] in ("rejected", "duplicate") and row.get("file_path"):
        return "accepted", None
    return row["status"], row["reason"]


def decided_in_review(row: dict) -> bool:
    """A mining-pool image a reviewer labelled (override include FROM_POOL): the next build trains on
    it under those labels ('other': a hard negative, or a class it turned out to belong to), in the
    splits mined images take, even once a later search finds it for another set; mining leaves it."""
    return row["status"] == "accepted" and row.get("review_include") == FROM_POOL and bool(row.get("review_labels"))


def next_state(row: dict, before: dict, action: str, labels: list[str] | None, classes: list[str]) -> dict:
    """The override after `action` on the candidate `row`; ReviewError when it does not apply."""
    if row["status"] == "removed":
        raise ReviewError("this photo was taken down (removed); it cannot come back")
    in_dataset = row["purpose"] == "train" or row["purpose"] == "probe"
    pool = row["purpose"] == "pool"      # enters training only by a reviewer's labels (or mining)
    if action == "relabel":
        if row["purpose"] not in ("train", "pool"):
            raise ReviewError(f"only training and pool images carry labels (this one is in the {row['purpose']} set)")
        if pool and row["status"] != "accepted":
            raise ReviewError(f"a {row['status']} pool image cannot be trained on")
        if not labels:
            raise ReviewError('a relabel names its labels: one or more classes, or "other" for none of them')
        wanted = sorted(set(labels))
        unknown = [x for x in wanted if x not in classes and x != "other"]
        if unknown:
            raise ReviewError(f"unknown label(s) {', '.join(unknown)}; the classes are {', '.join(classes)} or other")
        if "other" in wanted and len(wanted) > 1:
            raise ReviewError("'other' means none of the classes: it cannot go with a class")
        new = " ".join(wanted) or "other"
        if pool or before["include"] == FROM_POOL:      # (a later search may have changed its set)
            return {"labels": new, "include": FROM_POOL}
        return {**before, "labels": None if new == effective_labels({**row, "review_labels": None}) else new}
    if action == "reject":
        if row["status"] == "downloaded" and before["include"] != "rejected":
            return {**before, "include": "rejected"}    # not curated yet: kept out once it is
        if before["include"] == "rejected" or (row["status"] != "accepted" and before["include"] != "accepted"):
            raise ReviewError("already out of the dataset")
        if pool:                        # out of training, and of mining's pool
            return {"labels": None, "include": "rejected"}
        return {**before, "include": None if row["status"] != "accepted" else "rejected"}
    if pool and action == "restore" and before["include"] == "rejected":
        return {**before, "include": None}      # back in the pool, for mining
    if action == "restore" and before["include"] == FROM_POOL:
        raise ReviewError("already in, with the labels saved in review (undo puts it back in the pool)")
    if action in ("restore", "not-duplicate"):
        if not in_dataset:
            raise ReviewError(f"{row['purpose']} images enter a version through mining, or with labels saved in review")
        if action == "not-duplicate" and row["status"] != "duplicate":
            raise ReviewError("not marked as a duplicate")
        if row["status"] in ("accepted", "downloaded") and action == "restore":    # downloaded: curate decides
            if before["include"] != "rejected":
                raise ReviewError("already in the dataset" if row["status"] == "accepted" else
                                  "not curated yet: the next curate decides whether it goes in")
            return {**before, "include": None}
        if before["include"] == "accepted":
            raise ReviewError("already put back in review")
        if row["status"] not in ("rejected", "duplicate") or not row["file_path"]:
            raise ReviewError(f"a {row['status']} candidate has no usable file to put back")
        if row["status"] == "duplicate":
            copy_refused(row, action)
        return {**before, "include": "accepted"}
    raise ReviewError(f"unknown action {action!r}")


def licence_allowed(source: str, license_id: int | None, licences) -> bool:
    """Whether `source.licenses` (`licences`: "any" or Flickr licence ids) allows a photo's licence
    (`source`: its source's name) now: `any` allows every one; a list, the ids it names (a photo with no recorded id is allowed by
    `any` alone, as collect takes it). A URL list's rows carry their own licence text and no id: the
    setting does not apply to them (docs/collection.md). The build publishes, and collect counts as
    usable, and collect downloads, only what this allows."""
    return licences == "any" or source == "urls" or license_id in licences
