"""curate/decide.py: the duplicate decisions of a curate, inside a purpose, across purposes (train,
then probe, then pool) and against the test images of published versions (docs/curation.md,
"In curate ..." and "Test images of earlier versions never train").

Most cases give the pair scores the way a curate does after the first one: `FileSimilarity` with the
catalog's kept scores by sha256 pair (`known`), so each case says exactly which pairs look alike. A
pair with no kept score is scored from its files; these rows' files do not exist, so such a pair
cannot be confirmed (as for a file that cannot be re-read). One case scores real photos' pixels."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from PIL import Image, ImageOps

from badfiles import fixture_photos
from helpers import FIXTURES, copy_of_a_training_ant, hymenoptera_world
from mlc_pipeline.catalog import Catalog
from mlc_pipeline.collect.stage import collect
from mlc_pipeline.config import parse_config
from mlc_pipeline.curate.stage import curate
from mlc_pipeline.dataset.build import build_dataset
from mlc_pipeline.dataset.splits import split_of
from mlc_pipeline.flickr_server.folder import photo_id_for
from mlc_pipeline.manifest import read_manifest
from mlc_pipeline.curate.decide import cross_duplicates, dedup_item, labels_of, purpose_of, resolve
from mlc_pipeline.curate.dedup import view_distance
from mlc_pipeline.curate.hashing import corner_phashes, inspect_file
from mlc_pipeline.curate.lookalikes import LOOKALIKE_BITS, lookalike_bits
from mlc_pipeline.curate.similarity import CONFIRM, FileSimilarity, PairScores
from mlc_pipeline.curate.verify import VerifyLimits


def h(bits: int) -> str:
    "A phash as 16 hex digits."
    return f"{bits:016x}"


A = h(0)                      # and h(0b11) is 2 bits from it; FAR and FAR2 are 32+ bits from A and each other
FAR = h(2**64 - 1)
FAR2 = h(0xFFFFFFFF00000000)


def cfg_of(tmp_path, threshold: int = 12):
    return parse_config({"data_dir": str(tmp_path / "data"),
                         "classes": {"kite": {"queries": ["kite"], "count": 5},
                                     "balloon": {"queries": ["balloon"], "count": 5}},
                         "other": {"queries": ["landscape"], "count": 5},
                         "curate": {"hamming_threshold": threshold, "workers": 1}})


def row(tmp_path, rid: int, purpose: str, sha: str, phash: str, label: str = "other", side: int = 100,
        first_seen: float = 1.0, n_bytes: int = 1000, view_hashes: str | None = None,
        photo_id: str | None = None) -> dict:
    """A verified candidate as stage.py hands it to `resolve` (its file does not exist)."""
    return {"id": rid, "purpose": purpose, "label": label, "sha256": sha, "phash": phash, "img_width": side,
            "img_height": side, "first_seen_at": first_seen, "bytes": n_bytes, "view_hashes": view_hashes,
            "file_path": str(tmp_path / f"missing-{rid}.jpg"), "source": "flickr",
            "photo_id": photo_id or f"p{rid}"}


def kept_scores(**pairs: float) -> FileSimilarity:
    """A FileSimilarity that knows these scores, by sha pair: `s1__s2=0.95` scores sha s1 with s2."""
    known = {}
    for key, score in pairs.items():
        a, b = key.split("__")
        known[(min(a, b), max(a, b))] = score
    return FileSimilarity({}, known=known)


ACCEPTED_KITE = ("accepted", None, None, "kite")
ACCEPTED_OTHER = ("accepted", None, None, "other")


# ---- the small helpers ---------------------------------------------------------------------------

def test_labels_and_items_of_a_row(tmp_path):
    assert labels_of({"label": "other"}) == frozenset()
    assert labels_of({"label": "kite"}) == frozenset({"kite"})
    assert labels_of({"label": "kite balloon"}) == frozenset({"balloon", "kite"})
    r = row(tmp_path, 7, "train", "s7", A, label="kite", view_hashes=f"{FAR},{FAR2}", n_bytes=1234)
    item = dedup_item(r)
    assert (item.id, item.labels, item.sha256, item.phash) == (7, frozenset({"kite"}), "s7", A)
    assert (item.pixels, item.first_seen, item.view_hashes, item.n_bytes) == (10_000, 1.0, (FAR, FAR2), 1234)
    # a row from before sizes, views or byte counts were recorded: no pixels, no views, no bytes
    bare = dedup_item({**r, "img_width": None, "img_height": None, "view_hashes": "", "bytes": None})
    assert (bare.pixels, bare.view_hashes, bare.n_bytes) == (0, (), 0)
    assert dedup_item({k: v for k, v in r.items() if k not in ("view_hashes", "bytes")}).view_hashes == ()


def test_purpose_of_names_the_purpose_of_the_row_with_that_id(tmp_path):
    rows = [row(tmp_path, 1, "train", "s1", A), row(tmp_path, 2, "probe", "s2", FAR)]
    assert purpose_of(rows, 1) == "train"
    assert purpose_of(rows, 2) == "probe"


# ---- inside one purpose --------------------------------------------------------------------------

def test_nothing_to_decide(tmp_path):
    cfg = cfg_of(tmp_path)
    assert resolve(cfg, []) == {}
    assert resolve(cfg, [], []) == {}
    assert resolve(cfg, [], None, kept_scores()) == {}


def test_distinct_images_are_all_accepted_under_their_sorted_labels(tmp_path):
    rows = [row(tmp_path, 1, "train", "s1", A, label="kite"), row(tmp_path, 2, "train", "s2", FAR, label="other"),
            row(tmp_path, 3, "train", "s3", FAR2, label="kite balloon"), row(tmp_path, 4, "probe", "s4", h(0xFF00FF00FF))]
    assert resolve(cfg_of(tmp_path), rows) == {1: ACCEPTED_KITE, 2: ACCEPTED_OTHER,
                                               3: ("accepted", None, None, "balloon kite"), 4: ACCEPTED_OTHER}


@pytest.mark.parametrize("kept, one, two", [
    (2, dict(side=100), dict(side=200)),                          # most pixels
    (1, dict(n_bytes=5000), dict(n_bytes=4000)),                  # then the larger file
    (2, dict(first_seen=5.0), dict(first_seen=2.0)),              # then seen first
    (1, dict(), dict()),                                          # then the lowest id
])
def test_of_byte_copies_the_best_is_kept(tmp_path, kept, one, two):
    rows = [row(tmp_path, 1, "train", "same", A, label="kite", **one),
            row(tmp_path, 2, "train", "same", A, label="kite", **two)]
    dropped = 3 - kept
    assert resolve(cfg_of(tmp_path), rows) == {kept: ACCEPTED_KITE,
                                               dropped: ("duplicate", "exact-duplicate:d=0", kept, None)}


def test_a_class_copy_of_an_other_image_keeps_the_class(tmp_path):
    # the keeper (more pixels) was searched as "other"; its byte copy was found for kite
    rows = [row(tmp_path, 1, "train", "same", A, label="kite"), row(tmp_path, 2, "train", "same", A, side=300)]
    assert resolve(cfg_of(tmp_path), rows) == {2: ("accepted", "conflict:class-wins", None, "kite"),
                                               1: ("duplicate", "exact-duplicate:d=0", 2, None)}


def test_near_copies_with_other_labels_merge_only_when_sure(tmp_path):
    rows = [row(tmp_path, 1, "train", "s1", A, label="kite", side=200),
            row(tmp_path, 2, "train", "s2", h(0b11), label="balloon")]
    sure = resolve(cfg_of(tmp_path), rows, None, kept_scores(s1__s2=0.98))
    assert sure == {1: ("accepted", "conflict:multi-label", None, "balloon kite"),
                    2: ("duplicate", "near-duplicate:d=2", 1, None)}
    # confirmed but under SURE (0.97): both stay, each marked for a person to look at
    unsure = resolve(cfg_of(tmp_path), rows, None, kept_scores(s1__s2=0.95))
    assert unsure == {1: ("accepted", "review:label-conflict:with=2:d=2:s=0.95", None, "kite"),
                      2: ("accepted", "review:label-conflict:with=1:d=2:s=0.95", None, "balloon")}


@pytest.mark.parametrize("score, duplicate", [(CONFIRM, True), (0.9199, False), (None, False)])
def test_a_near_copy_is_a_duplicate_from_the_confirm_score_on(tmp_path, score, duplicate):
    rows = [row(tmp_path, 1, "train", "s1", A, label="kite", side=200),
            row(tmp_path, 2, "train", "s2", h(0b11), label="kite")]
    confirm = kept_scores(s1__s2=score) if score is not None else kept_scores()   # None: files unreadable
    second = ("duplicate", "near-duplicate:d=2", 1, None) if duplicate else ACCEPTED_KITE
    assert resolve(cfg_of(tmp_path), rows, None, confirm) == {1: ACCEPTED_KITE, 2: second}


def test_the_configured_threshold_decides_what_is_a_candidate(tmp_path):
    rows = [row(tmp_path, 1, "train", "s1", A, label="kite", side=200),
            row(tmp_path, 2, "train", "s2", h(0b11), label="kite")]
    assert resolve(cfg_of(tmp_path, threshold=2), rows, None, kept_scores(s1__s2=0.99))[2] == (
        "duplicate", "near-duplicate:d=2", 1, None)
    # 2 bits apart is past a threshold of 0: never compared, however alike the pixels
    assert resolve(cfg_of(tmp_path, threshold=0), rows, None, kept_scores(s1__s2=0.99)) == {
        1: ACCEPTED_KITE, 2: ACCEPTED_KITE}


# ---- across purposes -----------------------------------------------------------------------------

def test_probe_and_pool_copies_of_an_earlier_purpose_are_dropped(tmp_path):
    rows = [row(tmp_path, 1, "train", "s1", A, label="kite"),
            row(tmp_path, 2, "probe", "s1", A),                       # the training photo's very bytes
            row(tmp_path, 3, "pool", "s3", h(0b11)),                  # a near copy of the training photo
            row(tmp_path, 4, "probe", "s4", FAR),
            row(tmp_path, 5, "pool", "s5", h(2**64 - 4))]             # a near copy of probe 4 (2 bits)
    decisions = resolve(cfg_of(tmp_path), rows, None, kept_scores(s1__s3=0.95, s4__s5=0.95))
    assert decisions == {1: ACCEPTED_KITE,
                         2: ("duplicate", "exact-duplicate-of-train:d=0", 1, None),
                         3: ("duplicate", "near-duplicate-of-train:d=2", 1, None),
                         4: ACCEPTED_OTHER,
                         5: ("duplicate", "near-duplicate-of-probe:d=2", 4, None)}


def test_a_later_purpose_never_drops_an_earlier_one(tmp_path):
    # the pool copy is the better one (more pixels, seen first): the training image stays all the same
    rows = [row(tmp_path, 1, "pool", "s1", A, side=400, first_seen=0.0),
            row(tmp_path, 2, "train", "s1", A, label="kite")]
    assert resolve(cfg_of(tmp_path), rows) == {2: ACCEPTED_KITE, 1: ("duplicate", "exact-duplicate-of-train:d=0", 2, None)}


@pytest.mark.parametrize("near_score, kept, distance", [(0.95, 1, 1), (0.5, 2, 3)])
def test_across_purposes_the_nearest_confirmed_image_is_the_one_kept_for_it(tmp_path, near_score, kept, distance):
    # pool 3 is 1 bit from train 1 and 3 bits from train 2 (those two are 4 bits apart, not confirmed)
    rows = [row(tmp_path, 1, "train", "s1", h(0), label="kite"), row(tmp_path, 2, "train", "s2", h(0b1111), label="kite"),
            row(tmp_path, 3, "pool", "s3", h(0b1))]
    decisions = resolve(cfg_of(tmp_path), rows, None, kept_scores(s1__s3=near_score, s2__s3=0.99))
    assert decisions == {1: ACCEPTED_KITE, 2: ACCEPTED_KITE,
                         3: ("duplicate", f"near-duplicate-of-train:d={distance}", kept, None)}


def test_across_purposes_no_chains_through_a_dropped_copy(tmp_path):
    # train 2 is a near copy of train 1 (8 bits) and is dropped; pool 3 is a near copy of 2 (8 bits) but
    # 16 bits from 1: compared only with the kept image 1, it is not its duplicate
    rows = [row(tmp_path, 1, "train", "s1", h(0), label="kite", side=200),
            row(tmp_path, 2, "train", "s2", h(0xFF), label="kite"),
            row(tmp_path, 3, "pool", "s3", h(0xFFFF))]
    decisions = resolve(cfg_of(tmp_path), rows, None, kept_scores(s1__s2=0.99, s2__s3=0.99, s1__s3=0.99))
    assert decisions == {1: ACCEPTED_KITE, 2: ("duplicate", "near-duplicate:d=8", 1, None), 3: ACCEPTED_OTHER}


def test_a_crop_view_within_the_threshold_makes_a_candidate(tmp_path):
    # the whole pictures are 32 bits apart, but the probe's first crop view is 2 bits from the training photo
    rows = [row(tmp_path, 1, "train", "s1", FAR, label="kite"),
            row(tmp_path, 2, "probe", "s2", FAR2, view_hashes=f"{h(2**64 - 4)},{h(0x0123456789ABCDEF)}")]
    assert resolve(cfg_of(tmp_path), rows, None, kept_scores(s1__s2=0.95)) == {
        1: ACCEPTED_KITE, 2: ("duplicate", "near-duplicate-of-train:d=2", 1, None)}


def test_cross_duplicates_edges(tmp_path):
    k1, k2 = row(tmp_path, 1, "train", "s1", h(0b01)), row(tmp_path, 2, "train", "s2", h(0b10))
    new = row(tmp_path, 3, "probe", "s3", h(0))
    confirm = kept_scores(s1__s3=0.95, s2__s3=0.95)
    confirm.digests.update({1: "s1", 2: "s2", 3: "s3"})       # what `resolve` tells it
    assert cross_duplicates([], [], 12, confirm) == {}
    assert cross_duplicates([k1], [], 12, confirm) == {}
    assert cross_duplicates([], [new], 12, confirm) == {}
    # both kept rows 1 bit away and confirmed: the first kept row wins the tie
    assert cross_duplicates([k1, k2], [new], 12, confirm) == {3: (1, 1, "near")}
    assert cross_duplicates([k2, k1], [new], 12, confirm) == {3: (2, 1, "near")}
    # byte copies of two kept rows: the first
    same = [row(tmp_path, 5, "train", "x", FAR), row(tmp_path, 6, "train", "x", FAR2)]
    assert cross_duplicates(same, [row(tmp_path, 7, "pool", "x", A)], 12, confirm) == {7: (5, 0, "exact")}


# ---- against published test images --------------------------------------------------------------

def published(tmp_path, k: int, version: str, candidate_id: int, sha: str, phash: str, photo_id: str) -> dict:
    """A test image of a published version as stage.published_test_images gives it."""
    return {"version": version, "candidate_id": candidate_id, "source": "flickr", "photo_id": photo_id,
            "file_path": str(tmp_path / f"published-{k}.jpg"), "sha256": sha, "phash": phash, "view_hashes": "",
            "img_width": 100, "img_height": 100, "first_seen_at": 0.0, "label": "other"}


def test_train_and_pool_copies_of_published_test_images_are_dropped(tmp_path):
    tests = [published(tmp_path, 0, "v1", 10, "t0", A, "p10"),       # candidate 10's published test copy
             published(tmp_path, 1, "v2", 99, "t1", FAR, "p99")]     # candidate 99: no longer in this catalog
    rows = [row(tmp_path, 10, "train", "s10", A, label="kite", photo_id="p10"),   # the test photo itself
            row(tmp_path, 11, "train", "t0", A, label="kite"),                      # a byte copy, another photo id
            row(tmp_path, 12, "pool", "s12", h(2**64 - 4))]                        # a near copy of the v2 test image
    decisions = resolve(cfg_of(tmp_path), rows, tests, kept_scores(s10__t0=0.99, s12__t1=0.95))
    assert decisions == {10: ACCEPTED_KITE,
                         11: ("duplicate", "exact-duplicate-of-test:v1:d=0", 10, None),
                         12: ("duplicate", "near-duplicate-of-test:v2:d=2", None, None)}


def test_a_probe_copy_of_a_published_test_image_stays(tmp_path):
    # probes are never trained on: only train and pool rows are compared with published test images
    tests = [published(tmp_path, 0, "v1", 99, "t0", A, "p99")]
    rows = [row(tmp_path, 13, "probe", "t0", A)]
    assert resolve(cfg_of(tmp_path), rows, tests) == {13: ACCEPTED_OTHER}
    assert resolve(cfg_of(tmp_path), [{**rows[0], "purpose": "pool"}], tests) == {
        13: ("duplicate", "exact-duplicate-of-test:v1:d=0", None, None)}


def test_copies_dropped_for_a_published_test_image_merge_their_labels_into_it_as_before(tmp_path):
    # The rule of a curate before the build: labels merge across byte copies and near copies scoring
    # >= SURE of the same purpose. A near copy under CONFIRM..SURE, or a pool copy, merges nothing.
    tests = [published(tmp_path, 0, "v1", 10, "t0", A, "p10")]
    test_photo = row(tmp_path, 10, "train", "s10", A, label="kite", photo_id="p10")
    copies = [row(tmp_path, 11, "train", "s11", h(0b11), label="balloon"),     # sure near copy
              row(tmp_path, 12, "train", "s12", h(0b1100), label="other")]     # a near copy, not sure
    scores = kept_scores(s10__s11=0.99, s11__t0=0.98, s10__s12=0.95, s12__t0=0.95)
    decisions = resolve(cfg_of(tmp_path), [test_photo, *copies], tests, scores)
    assert decisions == {10: ("accepted", "conflict:multi-label", None, "balloon kite"),
                         11: ("duplicate", "near-duplicate-of-test:v1:d=2", 10, None),
                         12: ("duplicate", "near-duplicate-of-test:v1:d=2", 10, None)}
    # the same decision as before v1 put the photo in test (then the copies were compared with it here)
    before = resolve(cfg_of(tmp_path), [test_photo, *copies], None, scores)
    assert before[10] == decisions[10]
    # a byte copy of the test photo's own file in "other": the class wins; in the pool: no merge
    byte_copy = row(tmp_path, 13, "train", "s10", A, label="other")
    assert resolve(cfg_of(tmp_path), [test_photo, byte_copy], tests)[10] == ("accepted", "conflict:class-wins", None, "kite")
    pooled = {**row(tmp_path, 13, "pool", "s10", A, label="other")}
    assert resolve(cfg_of(tmp_path), [test_photo, pooled], tests) == {
        10: ACCEPTED_KITE, 13: ("duplicate", "exact-duplicate-of-test:v1:d=0", 10, None)}


def test_a_review_pair_published_apart_is_not_dropped_for_its_own_partner(tmp_path):
    # Audit curation29, finding 3: a review pair (a near copy under another label, 0.92-0.97, both kept
    # for a person to decide) published before its images shared a split: the "other" crop in v1's
    # test split, the kite in train. The next curate dropped the kite as a copy of its own partner's
    # test image, the mislabelled crop stayed in test, and both notes were gone. Now the pair is
    # decided as before the build; a copy of a test image that was in no pair is dropped as before.
    tests = [published(tmp_path, 0, "v1", 11, "t11", A, "p11")]
    kite = {**row(tmp_path, 10, "train", "s10", h(0b11), label="kite", side=200),
            "reason": "review:label-conflict:with=11:d=2:s=0.95"}
    crop = {**row(tmp_path, 11, "train", "s11", A, photo_id="p11"), "reason": "review:label-conflict:with=10:d=2:s=0.95"}
    later = row(tmp_path, 12, "train", "s12", h(0b1100), label="balloon")
    scores = kept_scores(s10__t11=0.95, s10__s11=0.95, s12__t11=0.95, s11__s12=0.95, s10__s12=0.5)
    assert resolve(cfg_of(tmp_path), [kite, crop, later], tests, scores) == {
        10: ("accepted", "review:label-conflict:with=11:d=2:s=0.95", None, "kite"),
        11: ("accepted", "review:label-conflict:with=10:d=2:s=0.95", None, "other"),
        12: ("duplicate", "near-duplicate-of-test:v1:d=2", 11, None)}


def test_a_pair_a_review_separated_is_not_linked_again_as_a_copy_of_a_test_image(tmp_path):
    # Audit review29, finding 1: "not a duplicate" on a copy curate had dropped for a training kite put
    # the copy in v3's test split (its own photo id's); the next curate dropped the kite, the image
    # curate had kept, as a near copy of that test image. A pair a review separated (catalog.putback)
    # is decided as if the test image were not published: the copy is a duplicate of the kite again,
    # and the review's override keeps it in. A copy of the test image in no such pair is dropped.
    tests = [published(tmp_path, 0, "v3", 11, "t11", A, "p11")]
    kite = row(tmp_path, 10, "train", "s10", h(0b11), label="kite", side=200)
    copy = row(tmp_path, 11, "train", "s11", A, label="kite", photo_id="p11")
    later = row(tmp_path, 12, "train", "s12", h(0b1100), label="kite")
    scores = kept_scores(s10__t11=0.99, s10__s11=0.99, s12__t11=0.99, s11__s12=0.99, s10__s12=0.5)
    assert resolve(cfg_of(tmp_path), [kite, copy, later], tests, scores, put_back={(11, 10)}) == {
        10: ACCEPTED_KITE, 11: ("duplicate", "near-duplicate:d=2", 10, None),
        12: ("duplicate", "near-duplicate-of-test:v3:d=2", 11, None)}
    assert resolve(cfg_of(tmp_path), [kite, copy, later], tests, scores)[10] == (
        "duplicate", "near-duplicate-of-test:v3:d=2", 11, None)      # what it did before
    # the other way round, the kept kite in test: the copy stays a copy of a test image (the review's
    # override keeps it in, and the build puts it in its twin's split, test; an undo takes it out)
    tests = [published(tmp_path, 0, "v1", 10, "t10", h(0b11), "p10")]
    assert resolve(cfg_of(tmp_path), [{**kite, "photo_id": "p10"}, {**copy, "photo_id": "p11"}], tests,
                   kept_scores(s10__s11=0.99, s11__t10=0.99), put_back={(11, 10)}) == {
        10: ACCEPTED_KITE, 11: ("duplicate", "near-duplicate-of-test:v1:d=2", 10, None)}


def test_a_corner_crop_or_mirror_image_of_a_published_test_image_is_dropped_once_pixels_confirm_it(tmp_path):
    # Far from every view of the test image (no candidate of the search), within LOOKALIKE_BITS of a
    # corner window (rows 11, 12) or a mirror view (13): each still needs its pixels to confirm it.
    corner, mirror = h(2**40 - 1), FAR2            # 40 and 32 bits from A, 56 from each other, 24 and 32 from FAR
    tests = [{**published(tmp_path, 0, "v1", 10, "t0", A, "p10"),
              "corner_hashes": ",".join([FAR, FAR, corner, FAR, FAR, mirror, FAR])}]   # 4 corners, 3 mirror views
    rows = [row(tmp_path, 10, "train", "s10", A, label="kite", photo_id="p10"),    # the test photo itself
            row(tmp_path, 11, "train", "s11", h((2**40 - 1) ^ 0b11)),                # a corner crop of it
            row(tmp_path, 12, "train", "s12", h((2**40 - 1) ^ 0b1100)),              # another picture, as close
            row(tmp_path, 13, "pool", "s13", h(0xFFFFFFFF00000000 ^ 0b1))]          # no pixels to confirm it
    decisions = resolve(cfg_of(tmp_path), rows, tests, kept_scores(s11__t0=0.95, s12__t0=0.90))
    assert decisions == {10: ACCEPTED_KITE, 11: ("duplicate", "corner-duplicate-of-test:v1:d=2", 10, None),
                         12: ACCEPTED_OTHER, 13: ACCEPTED_OTHER}
    # a test image published before its corner windows were kept (none): compared by its views alone
    assert resolve(cfg_of(tmp_path), rows, [{**tests[0], "corner_hashes": None}],
                   kept_scores(s11__t0=0.95))[11] == ACCEPTED_OTHER


# ---- real pixels ---------------------------------------------------------------------------------

@pytest.mark.skipif(not fixture_photos(), reason="fixture photos missing (../shared/fixtures)")
def test_a_resized_re_encoded_copy_of_a_training_photo_leaves_the_probe_set(tmp_path):
    photos = fixture_photos()
    original, unrelated = photos[0], photos[len(photos) // 2]
    im = Image.open(original).convert("RGB")
    copy = tmp_path / "copy.jpg"
    im.resize((im.width * 3 // 4, im.height * 3 // 4)).save(copy, quality=80)
    limits = VerifyLimits(min_side=1)
    records = {rid: inspect_file(path, limits) for rid, path in ((1, original), (2, copy), (3, unrelated))}
    rows = [{**row(tmp_path, rid, purpose, rec.sha256, rec.phash, label="kite" if rid == 1 else "other",
                   view_hashes=rec.view_hashes), "img_width": rec.width, "img_height": rec.height,
             "bytes": rec.n_bytes, "file_path": str(rec.path)}
            for (rid, rec), purpose in zip(records.items(), ("train", "probe", "probe"))]
    confirm = FileSimilarity({})
    decisions = resolve(cfg_of(tmp_path), rows, None, confirm)
    d = view_distance(dedup_item(rows[0]), dedup_item(rows[1]))
    assert d <= 12
    assert decisions == {1: ACCEPTED_KITE, 2: ("duplicate", f"near-duplicate-of-train:d={d}", 1, None),
                         3: ACCEPTED_OTHER}
    # the pair's score is handed back for the catalog to keep (the next curate need not score it)
    pair = tuple(sorted((records[1].sha256, records[2].sha256)))
    assert confirm.scored[pair] >= CONFIRM


@pytest.mark.skipif(not fixture_photos(), reason="fixture photos missing (../shared/fixtures)")
def test_an_edit_at_the_originals_jpeg_quality_never_replaces_it_and_a_lower_quality_re_encode_loses(tmp_path):
    # Audit curation29, finding 6: a copy with noise, or sharpened with its colours boosted, saved with
    # the original's quantisation tables, is a larger file of as many pixels: the larger file was kept
    # and the original dropped. Now the finer quantisation, then the first seen, is kept (the files'
    # own headers, read as a curate reads them); a re-encode at quality 50 still loses.
    from PIL import ImageEnhance, ImageFilter, JpegImagePlugin
    rng = np.random.default_rng(0)
    originals = [p for p in fixture_photos() if p.suffix == ".jpg"][:3]
    paths, expected = {}, {}
    for k, original in enumerate(originals):
        with Image.open(original) as src:
            same = {"qtables": src.quantization, "subsampling": JpegImagePlugin.get_sampling(src)}
            im = src.convert("RGB")
        noisy = np.clip(np.asarray(im, np.float32) + rng.normal(0, 12, (im.height, im.width, 3)), 0, 255)
        edits = {"noise": (Image.fromarray(noisy.astype(np.uint8)), same),
                 "sharpen": (ImageEnhance.Color(im).enhance(1.8).filter(ImageFilter.SHARPEN), same),
                 "q50": (im, {"quality": 50})}
        paths[10 * k] = original
        for j, (name, (edited, options)) in enumerate(edits.items(), start=1):
            paths[10 * k + j] = tmp_path / f"{k}_{name}.jpg"
            edited.save(paths[10 * k + j], **options)
            grew = paths[10 * k + j].stat().st_size > original.stat().st_size
            assert grew == (name != "q50"), (name, original)    # bytes alone would keep the edits
            expected[10 * k + j] = 10 * k
    limits = VerifyLimits(min_side=1)
    rows = []
    for rid, path in paths.items():
        rec = inspect_file(path, limits)
        rows.append({**row(tmp_path, rid, "train", rec.sha256, rec.phash, label="kite", first_seen=float(rid),
                           view_hashes=rec.view_hashes), "img_width": rec.width, "img_height": rec.height,
                     "bytes": rec.n_bytes, "file_path": str(path)})
    decisions = resolve(cfg_of(tmp_path), rows, None, FileSimilarity({}))
    assert {rid: d[2] for rid, d in decisions.items() if d[0] == "duplicate"} == expected
    assert all(decisions[rid][0] == "accepted" for rid in range(0, 30, 10))


# ---- end to end: collect, curate, build twice (bundled server, folder mode) ----------------------

@pytest.mark.skipif(not fixture_photos(), reason="fixture photos missing (../shared/fixtures)")
def test_labels_merged_from_byte_copies_stay_once_the_keeper_is_a_published_test_image(tmp_path):
    # 20 ant photos also filed, byte for byte, under bees/: each is one image labelled "ants bees".
    # Until 2026-12-07 the next curate dropped the bee copies of the photos v1 put in test *before*
    # their labels merged, and v2 relabelled those test images "ants" with no change of input.
    cfg, world = hymenoptera_world(tmp_path, ants=40, bees=20)
    for f in sorted((world / "ants").glob("*.jpg"))[:20]:
        shutil.copy(f, world / "bees" / f"also_{f.name}")
    collect(cfg, progress=False)
    curate(cfg)
    v1 = build_dataset(cfg)
    shared = {f"ants/{p.name[len('also_'):]}" for p in (world / "bees").glob("also_*.jpg")}
    labels1 = {r["source_file"]: (r["labels"], r["split"]) for r in read_manifest(v1.path / "manifest.csv")}
    tested = [f for f in shared if labels1[f][1] == "test"]
    assert tested, "the split put none of the shared photos in test; pick another world"
    assert {labels1[f][0] for f in shared} == {"ants bees"}
    curate(cfg)
    v2 = build_dataset(cfg)
    assert v2.version == v1.version       # nothing changed: the same rows, not a version that relabels
    with Catalog(cfg.catalog_path) as c:
        copies = [r for r in c.candidates("source_file LIKE 'bees/also_%'")
                  if f"ants/{r['source_file'][len('bees/also_'):]}" in tested]
    assert copies and all(r["status"] == "duplicate" for r in copies)
    # byte copies of the test photo's own file: `exact`, though the published test file is a re-encode
    assert {r["reason"] for r in copies} == {f"exact-duplicate-of-test:{v1.version}:d=0"}


@pytest.mark.skipif(not fixture_photos(), reason="fixture photos missing (../shared/fixtures)")
def test_the_copy_kept_is_the_colour_original_not_a_bigger_grey_or_palette_file(tmp_path):
    # Copies of colour JPEG originals, each a larger file than its original: a greyscale JPEG at q92,
    # a 256-colour palette PNG, a 16-bit greyscale PNG, and a greyscale copy upscaled 1.5x. Until
    # 2026-12-07 the most pixels, then the most bytes won, and each of them replaced its original.
    # A lower-quality re-encode still loses to its original, and a colour copy with more pixels wins.
    ants = sorted((FIXTURES / "hymenoptera" / "ants").glob("*.jpg"))
    original = {k: Image.open(ants[k]).convert("RGB") for k in range(6)}
    grey16 = Image.fromarray(np.asarray(original[2].convert("L")).astype(np.uint16) * 257)
    big = original[3].resize((original[3].width * 3 // 2, original[3].height * 3 // 2), Image.Resampling.LANCZOS)
    copies = {"ants/copy_grey.jpg": (0, ImageOps.grayscale(original[0])),
              "ants/copy_palette.png": (1, original[1].convert("P", palette=Image.Palette.ADAPTIVE, colors=256)),
              "ants/copy_grey16.png": (2, grey16),
              "ants/copy_grey_big.png": (3, ImageOps.grayscale(big)),
              "ants/copy_q20.jpg": (4, original[4]),
              "ants/copy_big.jpg": (5, original[5].resize((original[5].width * 3 // 2, original[5].height * 3 // 2),
                                                          Image.Resampling.LANCZOS))}
    cfg, world = hymenoptera_world(tmp_path, ants=12, bees=4)
    for rel, (_, im) in copies.items():
        im.save(world / rel, **({"quality": 20} if rel.endswith("q20.jpg") else {"quality": 92} if rel.endswith(".jpg") else {}))
    for rel, (k, _) in copies.items():
        if not rel.endswith("q20.jpg"):
            assert (world / rel).stat().st_size > ants[k].stat().st_size, rel      # bytes alone would keep the copy
    collect(cfg, progress=False)
    curate(cfg)
    with Catalog(cfg.catalog_path) as c:
        rows = {r["source_file"]: r for r in c.candidates()}
    for rel, (k, _) in copies.items():
        kept, dropped = (rel, f"ants/{ants[k].name}") if rel == "ants/copy_big.jpg" else (f"ants/{ants[k].name}", rel)
        assert rows[kept]["status"] == "accepted", (rel, rows[kept]["status"], rows[kept]["reason"])
        assert rows[dropped]["status"] == "duplicate" and rows[dropped]["duplicate_of"] == rows[kept]["id"], rel


# ---- corner crops and mirror images of a published test photo ----------------------------------

CORNERED = "ants/10308379_1b6c72e180.jpg"      # cut 7.5 % off its left and top: 16 bits from every view of it
GRAVEL = ("bees/485743562_d8cc6b8f73.jpg",     # two different photos, each dark in the middle of grey gravel:
          "ants/196757565_326437f5fe.jpg")     # the ant's whole image is 8 bits from a corner window of the bee


def named_for_test(cfg, folder: str, stem: str) -> str:
    "A path in the world whose photo id the build puts in the test split (`split_of`)."
    return next(rel for k in range(1000)
                if split_of("local", photo_id_for(rel := f"{folder}/{stem}_{k}.jpg"), cfg.build.split) == "test")


def published_hashes(path) -> dict:
    "A published file's hashes as a takedown keeps them: its views' and its corner windows' and mirror views'."
    rec = inspect_file(path, VerifyLimits(min_side=1))
    return {"phash": rec.phash, "view_hashes": rec.view_hashes, "corner_hashes": corner_phashes(path)}


@pytest.mark.skipif(not fixture_photos(), reason="fixture photos missing (../shared/fixtures)")
def test_a_corner_crop_or_mirror_image_of_a_published_test_photo_never_trains(tmp_path, monkeypatch):
    # The export26 audit (D): a 7.5 % corner crop of a v1 test photo, collected later, was no candidate
    # of the search (it compares centred views) and trained in v2, inflating its test score; a mirror
    # image, the same. Both are now found by the test photo's corner windows and mirror views (as a
    # takedown finds them) and confirmed by pixels, so a different photo whose hash comes as close stays.
    from mlc_pipeline.curate import decide, stage
    from mlc_pipeline.manifest import read_version_meta
    from mlc_pipeline.report.inspect import catalog_summary, format_catalog_summary
    hymenoptera = FIXTURES / "hymenoptera"
    cfg, world = hymenoptera_world(tmp_path, ants=12, bees=12)
    cfg = cfg.model_copy(update={"build": cfg.build.model_copy(update={"max_side": 256})})
    for rel in (CORNERED, *GRAVEL):
        (world / rel).unlink(missing_ok=True)     # each photo once, under the name given below
    photo, bee = named_for_test(cfg, "ants", "photo"), named_for_test(cfg, "bees", "gravel")
    shutil.copy(hymenoptera / CORNERED, world / photo)
    shutil.copy(hymenoptera / GRAVEL[0], world / bee)
    collect(cfg, progress=False)
    curate(cfg)
    v1 = build_dataset(cfg)
    tests = {r["source_file"]: r for r in read_manifest(v1.path / "manifest.csv") if r["split"] == "test"}
    assert {photo, bee} <= tests.keys()
    with Image.open(hymenoptera / CORNERED) as im:
        im = im.convert("RGB")
    w, h = im.size
    im.crop((w * 75 // 1000, h * 75 // 1000, w, h)).save(world / "ants" / "zz_corner.jpg", quality=85)
    ImageOps.mirror(im).save(world / "bees" / "zz_mirror.jpg", quality=85)     # filed under another class
    shutil.copy(hymenoptera / GRAVEL[1], world / "ants" / "zz_gravel.jpg")
    collect(cfg, progress=False)
    summary = curate(cfg)
    with Catalog(cfg.catalog_path) as c:
        rows = {r["source_file"]: r for r in c.candidates()}
        why = format_catalog_summary(catalog_summary(c))
    corner, mirror, gravel = (rows[f"{d}/zz_{k}.jpg"] for d, k in (("ants", "corner"), ("bees", "mirror"), ("ants", "gravel")))
    # What makes each case: none is near the test photo by the centred views curate's search compares;
    # by the takedown's rule (lookalikes.LOOKALIKE_BITS), each is near a corner window or mirror view.
    views, corners, flipped = lookalike_bits([corner, mirror, gravel], [
        published_hashes(v1.path / tests[photo]["path"]), published_hashes(v1.path / tests[bee]["path"])])
    assert min(views[0, 0], views[1, 0], views[2, 1]) > cfg.curate.hamming_threshold
    assert max(corners[0, 0], flipped[1, 0], corners[2, 1]) <= LOOKALIKE_BITS
    test_photo = rows[photo]["id"]
    assert corner["status"] == "duplicate" and corner["duplicate_of"] == test_photo, corner
    assert corner["reason"] == f"corner-duplicate-of-test:{v1.version}:d={corners[0, 0]}"
    assert mirror["status"] == "duplicate" and mirror["duplicate_of"] == test_photo, mirror
    assert mirror["reason"] == f"mirror-duplicate-of-test:{v1.version}:d={flipped[1, 0]}"
    assert gravel["status"] == "accepted", gravel      # its pixels are another picture's
    assert summary.duplicates == {"corner-duplicate-of-test": 1, "mirror-duplicate-of-test": 1}
    assert f"duplicate: {corner['reason']} = 1" in why and f"duplicate: {mirror['reason']} = 1" in why   # mlc inspect
    # The corner windows of the published test files are hashed once, then read from the catalog, and
    # so are the mirror images' scores (a new process, here a new memo, reads them there).
    with monkeypatch.context() as m:
        m.setattr(stage, "corner_phashes", lambda *a, **k: pytest.fail("hashed again"), raising=False)
        m.setattr(decide, "MIRRORED", PairScores(10))
        m.setattr(decide.MirroredSimilarity, "compare", lambda *a: pytest.fail("scored again"))
        assert curate(cfg).duplicates == summary.duplicates
    v2 = build_dataset(cfg)
    in_v2 = {r["candidate_id"] for r in read_manifest(v2.path / "manifest.csv")}
    assert str(gravel["id"]) in in_v2 and not {str(corner["id"]), str(mirror["id"])} & in_v2
    assert {k: n for k, n in read_version_meta(v2.path)["curation"].items() if "-of-test" in k} == {
        "duplicate: corner-duplicate-of-test": 1, "duplicate: mirror-duplicate-of-test": 1}


@pytest.mark.skipif(not fixture_photos(), reason="fixture photos missing (../shared/fixtures)")
def test_a_15_or_20_percent_crop_of_a_published_test_photo_never_trains(tmp_path):
    # Crops of 15-20 % per side, centred or at a corner, are 20-30 bits from every view of the photo
    # and its 7.5 % corner windows, and the pixel check aligned crops of at most 10 %: the four were
    # curated as new photos (three kept, one dropped as a copy of another crop) and trained in v2. Now
    # a test image keeps crop windows (15 and 20 % off every side, a corner or an edge), and the
    # pixels align crops of up to 20 %, so each is dropped as a copy of the test photo.
    cfg, world = hymenoptera_world(tmp_path, ants=12, bees=12)
    cfg = cfg.model_copy(update={"build": cfg.build.model_copy(update={"max_side": 256})})
    (world / CORNERED).unlink(missing_ok=True)          # the photo once, under the name given below
    photo = named_for_test(cfg, "ants", "photo")
    shutil.copy(FIXTURES / "hymenoptera" / CORNERED, world / photo)
    collect(cfg, progress=False)
    curate(cfg)
    v1 = build_dataset(cfg)
    assert photo in {r["source_file"] for r in read_manifest(v1.path / "manifest.csv") if r["split"] == "test"}
    with Image.open(FIXTURES / "hymenoptera" / CORNERED) as im:
        im = im.convert("RGB")
    w, h = im.size
    for cut in (15, 20):
        dx, dy = w * cut // 100, h * cut // 100
        im.crop((dx, dy, w - dx, h - dy)).save(world / "ants" / f"zz_centre{cut}.jpg", quality=85)
        im.crop((0, dy, w - dx, h)).save(world / "bees" / f"zz_corner{cut}.jpg", quality=85)  # off right and top
    collect(cfg, progress=False)
    curate(cfg)
    with Catalog(cfg.catalog_path) as c:
        rows = {r["source_file"]: r for r in c.candidates()}
    crops = [rows[f"{d}/zz_{k}.jpg"] for d, k in (("ants", "centre15"), ("ants", "centre20"),
                                                 ("bees", "corner15"), ("bees", "corner20"))]
    test_photo = rows[photo]["id"]
    assert [(r["status"], r["duplicate_of"]) for r in crops] == [("duplicate", test_photo)] * 4, crops
    assert all(re.fullmatch(rf"(near|crop)-duplicate-of-test:{v1.version}:d=\d+", r["reason"]) for r in crops), crops
    in_v2 = {r["candidate_id"] for r in read_manifest(build_dataset(cfg).path / "manifest.csv")}
    assert not {str(r["id"]) for r in crops} & in_v2


@pytest.mark.skipif(not fixture_photos(), reason="fixture photos missing (../shared/fixtures)")
def test_a_put_back_copy_published_in_test_by_an_older_build_no_longer_drops_its_twin(tmp_path, monkeypatch):
    # Audit review29, finding 1, on a data root a build before 2026-12-07 left: "not a duplicate" on a
    # smaller copy of a training ant published the copy in test (its own photo id's split). The next
    # curate dropped the ant as a copy of that test image, and the undo of "not a duplicate" left it
    # out. Now the curate keeps the ant, the next build puts both in test (test first), and the undo
    # takes the copy out and leaves the ant in.
    from mlc_pipeline.catalog import overrides
    from mlc_pipeline.dataset import build
    cfg, original, copy, ids = copy_of_a_training_ant(tmp_path)
    build_dataset(cfg)
    with Catalog(cfg.catalog_path) as c:     # what the review app's "not a duplicate" (key d) calls
        overrides.ensure_schema(c)
        done = overrides.act(c, ids[copy], "not-duplicate", "another picture", "test", list(cfg.classes))
    with monkeypatch.context() as m:         # the build before 2026-12-07: a put-back copy's own split
        m.setattr(build, "put_back_pairs", lambda catalog: [])
        old = {r["source_file"]: r["split"] for r in read_manifest(build_dataset(cfg).path / "manifest.csv")}
    assert (old[original], old[copy]) == ("train", "test")
    curate(cfg)
    with Catalog(cfg.catalog_path) as c:
        assert (c.get(ids[original])["status"], c.get(ids[copy])["duplicate_of"]) == ("accepted", ids[original])
    splits = {r["source_file"]: r["split"] for r in read_manifest(build_dataset(cfg).path / "manifest.csv")}
    assert (splits[original], splits[copy]) == ("test", "test")
    with Catalog(cfg.catalog_path) as c:
        overrides.undo(c, ids[copy], done.action_id, "my mistake", "test")
    curate(cfg)
    splits = {r["source_file"]: r["split"] for r in read_manifest(build_dataset(cfg).path / "manifest.csv")}
    assert splits[original] == "test" and copy not in splits
    with Catalog(cfg.catalog_path) as c:
        assert c.get(ids[original])["status"] == "accepted"


@pytest.mark.skipif(not fixture_photos(), reason="fixture photos missing (../shared/fixtures)")
def test_copies_collected_together_are_ranked_by_quality_and_only_a_full_tie_falls_to_the_lower_id(tmp_path):
    # Copies one collect records together share first_seen (one time per batch of search results), so
    # the lower id (the order the source listed them) decides, but only once the colour, the pixels,
    # the encoding and the JPEG tables all tie: the better copy listed later is kept (docs/curation.md §4).
    original = next(p for p in fixture_photos() if p.suffix == ".jpg")
    with Image.open(original) as src:
        im = src.convert("RGB")
    copies = {1: (im.resize((im.width * 3 // 4, im.height * 3 // 4), Image.Resampling.LANCZOS), {"quality": 90}),
              2: (im, {"quality": 90}),                     # more pixels than 1, listed later
              3: (im, {"quality": 60}), 4: (im, {"quality": 95}),     # the same pixels: the finer tables win
              5: (im, {"quality": 95, "comment": b"scanned " * 400})}   # all alike but a comment: the id
    rows = []
    for rid, (picture, options) in copies.items():
        path = tmp_path / f"{rid}.jpg"
        picture.save(path, **options)
        rec = inspect_file(path, VerifyLimits(min_side=1))
        rows.append({**row(tmp_path, rid, "train", rec.sha256, rec.phash, label="kite", first_seen=7.0,
                           view_hashes=rec.view_hashes), "img_width": rec.width, "img_height": rec.height,
                     "bytes": rec.n_bytes, "file_path": str(path)})
    decisions = resolve(cfg_of(tmp_path), rows, None, FileSimilarity({}))
    assert {rid: d[2] for rid, d in decisions.items()} == {1: 4, 2: 4, 3: 4, 4: None, 5: 4}
    decisions = resolve(cfg_of(tmp_path), [r for r in rows if r["id"] != 4], None, FileSimilarity({}))
    assert {rid: d[2] for rid, d in decisions.items()} == {1: 5, 2: 5, 3: 5, 5: None}
    assert max(rows, key=lambda r: r["bytes"])["id"] == 5     # more bytes than 4, which was kept above
