import numpy as np
import pytest
from PIL import Image

from badfiles import fixture_photos
from mlc_pipeline.curate.dedup import (DEFAULT_THRESHOLD, Candidate, Conflict, DedupItem, Duplicate, Look, Review,
                                resolve_duplicates)
from mlc_pipeline.curate.hashing import inspect_files
from mlc_pipeline.curate.similarity import CONFIRM, SURE, FileSimilarity


def sure(a, b):        # a second signal that confirms every candidate beyond doubt
    return 1.0


def item(id, labels=(), sha=None, phash="0000000000000000", pixels=100, first_seen="2024-01-01", views=()):
    return DedupItem(id=id, labels=frozenset(labels), sha256=sha or f"sha{id}", phash=phash,
                     pixels=pixels, first_seen=first_seen, view_hashes=views)


def test_singletons_are_kept_untouched():
    items = [item(1, {"ant"}, phash="0000000000000000"), item(2, (), phash="ffffffffffffffff")]
    result = resolve_duplicates(items)
    assert result.kept == {1: frozenset({"ant"}), 2: frozenset()}
    assert result.duplicates == {} and result.conflicts == [] and result.groups == []


def test_best_item_is_kept():
    # Most pixels wins; ties go to the earliest first_seen, then the lowest id.
    items = [item(5, {"ant"}, pixels=100), item(3, {"ant"}, pixels=400), item(4, {"ant"}, pixels=400)]
    assert list(resolve_duplicates(items, confirm=sure).kept) == [3]
    items = [item(5, {"ant"}, first_seen="2024-03-01"), item(3, {"ant"}, first_seen="2024-05-01"),
             item(9, {"ant"}, first_seen="2024-02-01")]
    assert list(resolve_duplicates(items, confirm=sure).kept) == [9]


def test_exact_and_near_duplicates_record_kind_and_distance():
    items = [item(1, {"ant"}, sha="same", pixels=500),
             item(2, {"ant"}, sha="same", pixels=500, first_seen="2024-06-01"),
             item(3, {"ant"}, phash="0000000000000007", pixels=50)]
    result = resolve_duplicates(items, confirm=sure)
    assert result.kept == {1: frozenset({"ant"})}
    assert result.duplicates == {2: Duplicate(1, "exact", 0), 3: Duplicate(1, "near", 3)}
    assert result.groups == [[1, 2, 3]] and result.conflicts == []


def test_same_bytes_group_even_if_phashes_disagree():
    items = [item(1, sha="x", phash="0000000000000000"), item(2, sha="x", phash="ffffffffffffffff")]
    assert resolve_duplicates(items).duplicates == {2: Duplicate(1, "exact", 64)}


def test_mixed_classes_become_multi_label():
    items = [item(1, {"ant"}, pixels=100), item(2, {"bee"}, pixels=200), item(3, {"ant"}, pixels=50)]
    result = resolve_duplicates(items, confirm=sure)
    assert result.kept == {2: frozenset({"ant", "bee"})}
    assert result.conflicts == [Conflict((2, 1, 3), (frozenset({"ant"}), frozenset({"bee"})), "multi-label")]


def test_keep_best_rule_is_a_parameter():
    items = [item(1, {"ant"}, pixels=100), item(2, {"bee"}, pixels=200), item(3, (), pixels=900)]
    result = resolve_duplicates(items, class_conflict="keep-best", confirm=sure)
    # Item 3 has the most pixels and stays, but an "other" label never survives next to a class:
    # it takes the labels of the best class item.
    assert result.kept == {3: frozenset({"bee"})}
    assert result.conflicts[0].resolution == "keep-best"
    with pytest.raises(ValueError):
        resolve_duplicates(items, class_conflict="vote")


def test_class_wins_over_other():
    items = [item(1, (), pixels=900), item(2, {"bee"}, pixels=200)]
    result = resolve_duplicates(items, confirm=sure)
    assert result.kept == {1: frozenset({"bee"})}  # best copy kept, but never as a negative
    assert result.conflicts == [Conflict((1, 2), (frozenset(), frozenset({"bee"})), "class-wins")]
    # An all-"other" group is no conflict.
    assert resolve_duplicates([item(1), item(2)], confirm=sure).conflicts == []


def test_groups_never_chain():
    # 1 ~ 2 (8 bits) and 2 ~ 3 (8 bits) but 1 and 3 differ by 16: 3 (best) keeps 2 only; 1 is kept.
    items = [item(1, {"ant"}, phash="0000000000000000", pixels=10),
             item(2, {"ant"}, phash="00000000000000ff", pixels=20),
             item(3, {"ant"}, phash="000000000000ffff", pixels=30),
             item(4, {"ant"}, phash="ffffffffffff0000", pixels=40)]
    result = resolve_duplicates(items, threshold=8, confirm=sure)
    assert result.groups == [[3, 2]]
    assert result.duplicates == {2: Duplicate(3, "near", 8)}
    assert set(result.kept) == {1, 3, 4}


def test_near_duplicates_need_the_second_signal():
    items = [item(1, {"ant"}, phash="0000000000000000", pixels=20),
             item(2, {"ant"}, phash="0000000000000003", pixels=10)]
    assert resolve_duplicates(items).duplicates == {}            # no second signal: nothing dropped
    result = resolve_duplicates(items, confirm=lambda a, b: CONFIRM - 0.01)
    assert result.duplicates == {} and set(result.kept) == {1, 2}
    assert result.unconfirmed == [Candidate((1, 2), 2, CONFIRM - 0.01)]
    assert resolve_duplicates(items, confirm=lambda a, b: CONFIRM).duplicates == {2: Duplicate(1, "near", 2)}
    # Byte-identical copies need no second signal.
    same = [item(1, {"ant"}, sha="x"), item(2, {"ant"}, sha="x")]
    assert resolve_duplicates(same).duplicates == {2: Duplicate(1, "exact", 0)}


def test_labels_merge_only_beyond_doubt():
    items = [item(1, {"kite"}, phash="0000000000000000", pixels=20),
             item(2, {"sailboat"}, phash="0000000000000003", pixels=10),
             item(3, (), phash="000000000000000c", pixels=5)]
    confirmed = resolve_duplicates(items, confirm=lambda a, b: (CONFIRM + SURE) / 2)
    assert confirmed.duplicates == {} and confirmed.conflicts == []
    assert confirmed.kept == {1: frozenset({"kite"}), 2: frozenset({"sailboat"}), 3: frozenset()}
    assert [r.ids for r in confirmed.reviews] == [(1, 2), (1, 3), (2, 3)]
    assert confirmed.reviews[0] == Review((1, 2), (frozenset({"kite"}), frozenset({"sailboat"})), 2, (CONFIRM + SURE) / 2)
    beyond = resolve_duplicates(items, confirm=lambda a, b: SURE)
    assert beyond.kept == {1: frozenset({"kite", "sailboat"})} and beyond.reviews == []


def test_view_hashes_find_crops():
    # Item 2's full view matches item 1's crop view only.
    items = [item(1, {"ant"}, phash="ffffffffffffffff", pixels=20, views=("0000000000000000", "00000000000000ff")),
             item(2, {"ant"}, phash="0000000000000001", pixels=10)]
    assert resolve_duplicates(items, confirm=sure).duplicates == {2: Duplicate(1, "near", 1)}


def test_ids_must_be_unique():
    with pytest.raises(ValueError):
        resolve_duplicates([item(1), item(1, sha="other")])


@pytest.mark.skipif(not fixture_photos(), reason="fixture photos missing (../shared/fixtures)")
def test_on_real_photos(tmp_path):
    # Fixture photos labelled by folder, plus a downscaled bee copy filed under "ant" and a byte
    # copy filed as "other": the full-size bee is kept as multi-label ant+bee.
    photos = fixture_photos()
    bee = next(p for p in photos if p.parent.name == "bees")
    small = tmp_path / "small.jpg"
    Image.open(bee).convert("RGB").resize((200, 150)).save(small, quality=80)
    paths = photos + [small, bee]
    records = inspect_files(paths)
    labels = [frozenset({p.parent.name[:-1]}) for p in photos] + [frozenset({"ant"}), frozenset()]
    items = [DedupItem(k, lab, r.sha256, r.phash, r.width * r.height, f"2024-01-01T00:00:{k:06d}",
                       tuple(r.view_hashes.split(",")))
             for k, (r, lab) in enumerate(zip(records, labels))]
    result = resolve_duplicates(items, DEFAULT_THRESHOLD, confirm=FileSimilarity(dict(enumerate(paths))))
    bee_id = photos.index(bee)
    assert len(result.groups) == 1 and result.groups[0][0] == bee_id
    assert result.kept[bee_id] == frozenset({"ant", "bee"})
    assert result.duplicates[len(photos) + 1] == Duplicate(bee_id, "exact", 0)
    assert result.duplicates[len(photos)].kind == "near"
    assert len(result.kept) == len(photos)
    assert sum(1 for r in result.conflicts if r.resolution == "multi-label") == 1
    assert np.all([len(labels) > 0 for labels in result.kept.values()])


@pytest.mark.skipif(not fixture_photos(), reason="fixture photos missing (../shared/fixtures)")
def test_of_two_copies_as_large_the_bigger_file_is_kept(tmp_path):
    # A bee photo re-encoded at JPEG quality 70 and filed under "ant", seen first: same pixel count
    # as the original, fewer bytes. The original stays (labels merged), the re-encode goes.
    bee = next(p for p in fixture_photos() if p.parent.name == "bees")
    worse = tmp_path / "reencoded.jpg"
    Image.open(bee).convert("RGB").save(worse, quality=70)
    paths = [worse, bee]
    records = inspect_files(paths)
    assert records[0].width * records[0].height == records[1].width * records[1].height
    assert records[0].n_bytes < records[1].n_bytes
    items = [DedupItem(k, frozenset({lab}), r.sha256, r.phash, r.width * r.height, f"2024-01-0{k + 1}",
                       tuple(r.view_hashes.split(",")), n_bytes=r.n_bytes)
             for k, (r, lab) in enumerate(zip(records, ("ant", "bee")))]
    result = resolve_duplicates(items, confirm=FileSimilarity(dict(enumerate(paths))))
    assert result.kept == {1: frozenset({"ant", "bee"})}
    assert result.duplicates[0].kept_id == 1


def test_prefetch_is_told_the_pairs_the_keepers_will_confirm_not_every_candidate_pair():
    # Copies of one original are candidates of each other too: scoring every candidate pair ahead
    # (on a pool) scored 600 pairs for the 164 a curate of the pets confirms, three times the CPU.
    told = []
    items = [item(1, pixels=900), item(2, pixels=400), item(3, pixels=300), item(4, pixels=200),
             item(5, phash="ffffffffffffffff")]
    result = resolve_duplicates(items, confirm=sure, prefetch=told.extend)
    assert sorted(told) == [(1, 2), (1, 3), (1, 4)]
    assert result.kept == {1: frozenset(), 5: frozenset()}
    assert resolve_duplicates(items, prefetch=told.extend).kept and len(told) == 3   # no confirm: nothing to score


def test_colour_then_pixels_then_bytes_within_one_encoding_decide_the_copy_kept():
    # describe() tells each copy's look; bytes compare only copies of one encoding.
    looks = {1: Look(0, "JPEG/RGB"), 2: Look(2, "JPEG/L"), 3: Look(1, "PNG/P"), 4: Look(0, "JPEG/RGB"),
             5: Look(0, "PNG/RGB"), 6: Look(2, "PNG/I;16")}

    def kept(*specs):     # (id, pixels, bytes) -> the id kept
        items = [DedupItem(i, frozenset(), f"s{i}", "0000000000000000", px, f"2024-01-0{i}", n_bytes=n)
                 for i, px, n in specs]
        told = []
        result = resolve_duplicates(items, confirm=sure, describe=lambda its: told.extend(its) or {
            it.id: looks[it.id] for it in its})
        assert sorted(it.id for it in told) == sorted(i for i, _, _ in specs)
        return list(result.kept)

    assert kept((1, 100, 1000), (2, 100, 5000)) == [1]          # a bigger grey JPEG loses to colour
    assert kept((1, 100, 1000), (2, 150, 5000)) == [1]          # even with more pixels
    assert kept((1, 100, 1000), (3, 100, 9000), (6, 100, 9999)) == [1]    # palette and 16-bit grey lose
    assert kept((3, 100, 9000), (6, 100, 9999)) == [3]          # a palette keeps colour; grey has none
    assert kept((1, 100, 1000), (4, 100, 2000)) == [4]          # one encoding: the larger file (less compressed)
    assert kept((1, 100, 1000), (4, 150, 500)) == [4]           # colour alike: most pixels
    assert kept((5, 100, 10), (1, 100, 1000)) == [5]            # a lossless copy holds what the JPEG decodes to
    # without describe (the library call without files): pixels, then bytes, as before
    items = [DedupItem(1, frozenset(), "a", "0000000000000000", 100, "1", n_bytes=1),
             DedupItem(2, frozenset(), "b", "0000000000000000", 100, "2", n_bytes=2)]
    assert list(resolve_duplicates(items, confirm=sure).kept) == [2]


def test_of_jpegs_as_large_the_finer_quantisation_then_the_first_seen_is_kept_not_the_bigger_file():
    # Audit curation29, finding 6: noise and sharpening add bytes, so within one encoding the edited
    # copy was kept over its original. Of JPEGs, the quantisation tables (Look.quant: lower, finer)
    # tell a lower quality; at one quality the first seen stays. Other encodings: bytes, as before.
    looks = {1: Look(0, "JPEG/RGB", 1500), 2: Look(0, "JPEG/RGB", 1500), 3: Look(0, "JPEG/RGB", 3000),
             4: Look(0, "JPEG/RGB", 900), 5: Look(0, "PNG/RGB"), 6: Look(0, "PNG/RGB")}

    def kept(*specs):     # (id, pixels, bytes), seen in id order -> the id kept
        items = [DedupItem(i, frozenset(), f"s{i}", "0000000000000000", px, f"2024-01-0{i}", n_bytes=n)
                 for i, px, n in specs]
        return list(resolve_duplicates(items, confirm=sure, describe=lambda its: {it.id: looks[it.id] for it in its}).kept)

    assert kept((1, 100, 1000), (2, 100, 5000)) == [1]      # one quality: seen first, though the other is bigger
    assert kept((2, 100, 5000), (1, 100, 1000)) == [1]      # (whatever order they are given in)
    assert kept((1, 100, 1000), (3, 100, 500)) == [1]       # coarser tables: a lower quality
    assert kept((1, 100, 5000), (4, 100, 1000)) == [4]      # finer tables win, smaller and seen later
    assert kept((4, 100, 1000), (3, 200, 500)) == [3]       # more pixels still come first
    assert kept((5, 100, 10), (6, 100, 20)) == [6]          # not a JPEG: the larger file, as before
    assert kept((5, 100, 10), (1, 100, 5000)) == [5]        # lossless before JPEG, as before
