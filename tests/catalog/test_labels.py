"""The review rules on a candidate row (catalog/labels.py), on their own: one table of rows for the
labels the build publishes, whether the next build takes an image, and what each review action does.
The same rules run end to end in the review app's and the build's tests; here each rule is pinned."""

import pytest

from mlc_pipeline.catalog.labels import (
    FROM_POOL, ReviewError, decided_in_review, effective_labels, licence_allowed, next_build, next_state,
    reviewed_status,
)

CLASSES = ["ants", "bees"]
NONE = {"labels": None, "include": None}


def row(**kw) -> dict:
    base = {"purpose": "train", "status": "accepted", "label": "ants", "curated_label": None, "reason": None,
            "file_path": "raw/x.jpg", "sha256": "a" * 64, "duplicate_of": None, "duplicate_of_sha256": None,
            "review_labels": None, "review_include": None, "source": "flickr", "license_id": 4}
    return {**base, **kw}


def test_the_labels_published_are_the_reviews_then_the_curated_then_the_searched_ones():
    assert effective_labels(row()) == "ants"                                   # as searched
    assert effective_labels(row(curated_label="bees")) == "bees"               # curation's wins over it
    assert effective_labels(row(curated_label="bees", review_labels="ants bees")) == "ants bees"   # review's wins
    assert effective_labels(row(purpose="probe", review_labels="bees")) == "ants"   # probes carry no labels
    assert effective_labels(row(label=None)) == "other"
    assert effective_labels(row(purpose="pool", label="other", review_labels="bees")) == "bees"


@pytest.mark.parametrize("kw, taken, why", [
    ({}, True, ""),
    ({"status": "removed", "review_include": "accepted"}, False, "taken down"),
    ({"review_include": "rejected"}, False, "rejected in review"),
    ({"status": "duplicate", "review_include": "accepted"}, True, "put back in review"),
    ({"status": "duplicate", "review_include": "accepted", "file_path": None}, False, ""),   # no file to publish
    ({"status": "rejected"}, False, ""),
    ({"purpose": "pool"}, False, "in the mining pool: save labels to train on it"),
    ({"purpose": "pool", "review_include": FROM_POOL, "review_labels": "other"}, True,
     "a pool image labelled in review"),
    ({"status": "downloaded"}, False, "not curated yet: the next curate decides"),
    ({"purpose": "probe"}, True, ""),
])
def test_what_the_next_build_takes_and_why(kw, taken, why):
    assert next_build(row(**kw)) == (taken, why)


def test_the_next_build_leaves_out_a_licence_the_setting_no_longer_allows():
    """The app's "next build" line said "in" for images whose licence `source.licenses` was narrowed to
    exclude since they were collected, which the build leaves out (the review29 audit)."""
    why = "source.licenses (4, 5) does not allow its licence 9: widen it to publish the image again"
    assert next_build(row(license_id=9), [4, 5]) == (False, why)
    assert next_build(row(status="duplicate", review_include="accepted", license_id=9), [4, 5]) == (False, why)
    assert next_build(row(license_id=None), [4, 5])[1].startswith("source.licenses (4, 5) does not allow a photo with no licence id")
    assert next_build(row(license_id=9), "any") == (True, "")
    assert next_build(row(license_id=4), [4, 5]) == (True, "")
    assert next_build(row(source="urls", license_id=None), [4, 5]) == (True, "")      # its own licence text
    assert next_build(row(license_id=9, review_include="rejected"), [4, 5]) == (False, "rejected in review")
    assert next_build(row(license_id=9)) == (True, "")      # not asked (the build checks it after)


def test_the_status_the_build_sees_after_a_review():
    assert reviewed_status(row(review_include="rejected")) == ("rejected", "review")
    assert reviewed_status(row(status="duplicate", reason="near-duplicate", review_include="accepted")) == \
        ("accepted", None)
    assert reviewed_status(row(status="duplicate", reason="near", review_include="accepted", file_path=None)) == \
        ("duplicate", "near")
    assert not decided_in_review(row(purpose="pool", review_include=FROM_POOL))       # no labels saved yet
    assert decided_in_review(row(purpose="pool", review_include=FROM_POOL, review_labels="other"))


def test_relabel_names_known_labels_and_keeps_no_override_that_changes_nothing():
    assert next_state(row(), NONE, "relabel", ["bees"], CLASSES) == {"labels": "bees", "include": None}
    assert next_state(row(), NONE, "relabel", ["ants"], CLASSES) == NONE     # what it is already: no override
    assert next_state(row(), NONE, "relabel", ["bees", "ants", "bees"], CLASSES)["labels"] == "ants bees"
    for labels, said in ((["wasps"], r"unknown label\(s\) wasps"), (["other", "ants"], "cannot go with a class"),
                         ([], "names its labels")):
        with pytest.raises(ReviewError, match=said):
            next_state(row(), NONE, "relabel", labels, CLASSES)
    with pytest.raises(ReviewError, match="only training and pool images carry labels"):
        next_state(row(purpose="probe"), NONE, "relabel", ["bees"], CLASSES)
    pool = row(purpose="pool", label="other")
    assert next_state(pool, NONE, "relabel", ["other"], CLASSES) == {"labels": "other", "include": FROM_POOL}
    with pytest.raises(ReviewError, match="a rejected pool image cannot be trained on"):
        next_state(row(purpose="pool", status="rejected"), NONE, "relabel", ["other"], CLASSES)


def test_reject_restore_and_not_duplicate():
    assert next_state(row(), NONE, "reject", None, CLASSES) == {"labels": None, "include": "rejected"}
    with pytest.raises(ReviewError, match="already out of the dataset"):
        next_state(row(), {"labels": None, "include": "rejected"}, "reject", None, CLASSES)
    assert next_state(row(), {"labels": None, "include": "rejected"}, "restore", None, CLASSES) == NONE
    with pytest.raises(ReviewError, match="already in the dataset"):
        next_state(row(), NONE, "restore", None, CLASSES)
    near = row(status="duplicate", reason="near-duplicate", duplicate_of=7, sha256="b" * 64,
               duplicate_of_sha256="c" * 64)
    assert next_state(near, NONE, "not-duplicate", None, CLASSES) == {"labels": None, "include": "accepted"}
    with pytest.raises(ReviewError, match="not marked as a duplicate"):
        next_state(row(), NONE, "not-duplicate", None, CLASSES)
    with pytest.raises(ReviewError, match="the same bytes as candidate 7"):      # a byte copy stays out
        next_state({**near, "reason": "exact-duplicate"}, NONE, "restore", None, CLASSES)
    with pytest.raises(ReviewError, match="the same bytes as candidate 7"):      # same sha256, whatever the reason
        next_state({**near, "duplicate_of_sha256": "b" * 64}, NONE, "restore", None, CLASSES)
    of_test = {**near, "reason": "near-duplicate-of-test:v1"}
    with pytest.raises(ReviewError, match="near copy of a published test image"):
        next_state(of_test, NONE, "restore", None, CLASSES)
    assert next_state(of_test, NONE, "not-duplicate", None, CLASSES)["include"] == "accepted"   # another picture
    with pytest.raises(ReviewError, match="taken down"):
        next_state(row(status="removed"), NONE, "restore", None, CLASSES)
    with pytest.raises(ReviewError, match="no usable file to put back"):
        next_state(row(status="failed"), NONE, "restore", None, CLASSES)
    with pytest.raises(ReviewError, match="unknown action 'promote'"):
        next_state(row(status="rejected"), NONE, "promote", None, CLASSES)


@pytest.mark.parametrize("source, license_id, licences, allowed", [
    ("flickr", 4, [4, 5], True),
    ("flickr", 0, [4, 5], False),
    ("flickr", None, [4, 5], False),        # no licence id recorded: unknown is none of those listed
    ("local", None, [4, 5, 9, 10, 11], False),
    ("flickr", None, "any", True),          # `any` alone allows it
    ("flickr", 0, "any", True),
    ("urls", None, [4, 5], True),           # a URL list's rows carry licence text, no id: not filtered
])
def test_which_licences_a_setting_allows(source, license_id, licences, allowed):
    """collect, collect's counts and the build share this rule (docs/collection.md, Licences)."""
    assert licence_allowed(source, license_id, licences) is allowed
