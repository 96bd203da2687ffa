"""dataset/splits.py: an image never published is split by its photo id; a picture already published
keeps its split, whichever copy of it a later version holds (docs/curation.md, "Splits: a picture
keeps the split it was published in")."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from helpers import FIXTURES, copy_of_a_training_ant, hymenoptera_world, named_for
from mlc_pipeline.catalog import Catalog, overrides
from mlc_pipeline.catalog.pairs import review_partner
from mlc_pipeline.collect.stage import collect
from mlc_pipeline.config import parse_config
from mlc_pipeline.curate.stage import curate
from mlc_pipeline.dataset.build import build_dataset
from mlc_pipeline.dataset.splits import settle_splits, split_of
from mlc_pipeline.flickr_server.folder import photo_id_for
from mlc_pipeline.manifest import read_manifest

HYMENOPTERA = FIXTURES / "hymenoptera"


def manifest_of(version) -> dict[str, dict]:
    return {r["source_file"]: r for r in read_manifest(version.path / "manifest.csv")}


@pytest.mark.skipif(not HYMENOPTERA.is_dir(), reason="fixture photos missing (../shared/fixtures)")
def test_a_better_copy_of_a_published_training_photo_takes_its_split_not_its_own(tmp_path):
    # Audit curation29, finding 4: a lossless copy of a v1 training photo and a 1.5x upscale of another,
    # collected later under photo ids the hash puts in test, each became the keeper (the better copy)
    # and took the split of its own photo id: v2 tested on two pictures v1 trained on.
    cfg, world = hymenoptera_world(tmp_path, ants=16, bees=6)
    collect(cfg, progress=False)
    curate(cfg)
    v1 = build_dataset(cfg)
    trained = [r for r in manifest_of(v1).values() if r["split"] == "train" and r["labels"] == "ants"][:2]
    assert len(trained) == 2
    copies = {named_for(cfg, "scan", ".png", "test"): trained[0]["source_file"],
              named_for(cfg, "upscaled", ".jpg", "test"): trained[1]["source_file"]}
    for (rel, original), big in zip(copies.items(), (False, True)):
        im = Image.open(world / original).convert("RGB")
        if big:
            im = im.resize((im.width * 3 // 2, im.height * 3 // 2), Image.Resampling.LANCZOS)
        im.save(world / rel, **({"quality": 90} if big else {}))
    collect(cfg, progress=False)
    curate(cfg)
    v2 = build_dataset(cfg)
    with Catalog(cfg.catalog_path) as c:
        rows = {r["source_file"]: r for r in c.candidates()}
    published = manifest_of(v2)
    for rel, original in copies.items():
        # the better copy is kept (the keeper rank is unchanged), in the split its picture trained in
        assert rows[original]["status"] == "duplicate" and rows[original]["duplicate_of"] == rows[rel]["id"], rel
        assert published[rel]["split"] == "train", (rel, published[rel]["split"])
        assert original not in published
    # every other image keeps its split, and the next build publishes nothing new
    assert {f: r["split"] for f, r in published.items() if f not in copies} == {
        f: r["split"] for f, r in manifest_of(v1).items() if f not in copies.values()}
    curate(cfg)
    assert build_dataset(cfg).version == v2.version


def row(cid: int, photo: str, split: str, keeps=("train", "valid", "test")) -> dict:
    "A build row as `dataset_rows` hands it to `settle_splits`: its split by its own photo id."
    return {"candidate_id": cid, "source": "flickr", "photo_id": photo, "split": split, "_splits": keeps,
            "_reason": None}


def test_a_published_split_is_kept_test_first_then_the_earliest_and_only_where_allowed():
    published = {("flickr", "a"): {"train": 1}, ("flickr", "b"): {"valid": 2}, ("flickr", "c"): {"test": 3},
                 ("flickr", "d"): {"train": 1, "test": 2}, ("flickr", "e"): {"probe": 1}}
    rows = [row(1, "new1", "test"),                    # a copy of a, published in train (v1), dropped for it
            row(2, "new2", "test"),                    # copies of a (v1 train) and b (v2 valid): the earliest
            row(3, "new3", "train"),                   # copies of a (v1 train) and c (v3 test): test first
            row(4, "d", "train"),                      # its own photo published in train, then test
            row(5, "new5", "valid"),                   # nothing of it published: its own split
            row(6, "b", "train", keeps=("train", "test")),    # build.split gives valid no share now
            row(7, "new7", "train", keeps=("train", "valid")),  # mined, a copy of c (v3 test): out
            row(9, "new9", "valid", keeps=("train", "valid")),  # mined, a copy of a (v1 train)
            row(8, "e", "probe", keeps=())]            # a probe
    dropped_for = {1: [("flickr", "a")], 2: [("flickr", "b"), ("flickr", "a")], 3: [("flickr", "a"), ("flickr", "c")],
                   7: [("flickr", "c")], 9: [("flickr", "a")]}
    left_out: list[dict] = []
    assert settle_splits(rows, published, dropped_for, left_out=left_out) == 5
    assert [r["split"] for r in rows] == ["train", "train", "test", "test", "valid", "train", "train", "probe"]
    assert [(r["candidate_id"], r["_left_out"]) for r in left_out] == [(7, "copy-of-a-test-picture")]
    rows = [row(6, "new6", "train", keeps=("train", "valid")), row(7, "new7", "train", keeps=("train", "valid"))]
    assert settle_splits(rows, published, dropped_for) == 0     # build.split gives test no share: none is left out
    assert [r["split"] for r in rows] == ["train", "train"]


@pytest.mark.skipif(not HYMENOPTERA.is_dir(), reason="fixture photos missing (../shared/fixtures)")
def test_the_images_of_a_review_pair_share_a_split_and_keep_their_notes(tmp_path):
    # Audit curation29, finding 3: 10 %-per-side crops of training ants, filed under "other" at paths
    # the hash puts in test, are confirmed copies under another label but not sure ones (0.92-0.97):
    # both images stay for a person to decide. Each was published in the split of its own photo id, so
    # v1 trained on the ant and tested the same picture as "other"; the next curate then dropped the ant
    # as a copy of a test image, and the mislabelled crop stayed in test with no note left.
    cfg, world = hymenoptera_world(tmp_path, ants=20, bees=4)
    crops = []
    for f in sorted((world / "ants").glob("*.jpg")):
        if split_of("local", photo_id_for(f"ants/{f.name}"), cfg.build.split) != "train" or len(crops) == 6:
            continue
        rel = next(rel for k in range(1000) if split_of(
            "local", photo_id_for(rel := f"scenery/IMG_{k:04d}_{f.stem[:6]}.jpg"), cfg.build.split) == "test")
        im = Image.open(f).convert("RGB")
        w, h = im.size
        im.crop((w // 10, h // 10, w - w // 10, h - h // 10)).save(world / rel, quality=85)
        crops.append(rel)
    collect(cfg, progress=False)
    curate(cfg)
    with Catalog(cfg.catalog_path) as c:
        noted = {r["source_file"]: r for r in c.candidates(reason_prefix="review:label-conflict:")}
        by_id = {r["id"]: r for r in c.candidates()}
    pairs = {frozenset((r["source_file"], by_id[review_partner(r["reason"])[0]]["source_file"])) for r in noted.values()}
    assert pairs and all(p & set(crops) for p in pairs), "no review pair of an ant and its crop: a useless test"
    v1 = build_dataset(cfg)
    published = manifest_of(v1)
    for pair in pairs:
        assert len({published[f]["split"] for f in pair}) == 1, {f: published[f]["split"] for f in pair}
    curate(cfg)
    with Catalog(cfg.catalog_path) as c:
        again = {r["source_file"]: r for r in c.candidates(reason_prefix="review:label-conflict:")}
    assert {f: (r["status"], r["reason"]) for f, r in again.items()} == {
        f: (r["status"], r["reason"]) for f, r in noted.items()}
    assert build_dataset(cfg).version == v1.version


def test_a_review_pair_or_chain_takes_its_first_published_split_else_its_first_photos():
    note = "review:label-conflict:with={}:d=2:s=0.95"
    rows = [dict(row(1, "p3", "train"), _reason=note.format(2)), dict(row(2, "p1", "valid"), _reason=note.format(1)),
            dict(row(3, "p2", "test"), _reason=note.format(2)),      # a chain: 1~2, 3~2
            dict(row(4, "p4", "train"), _reason=note.format(5)), row(5, "p5", "test"),   # the note of one of them
            dict(row(6, "p6", "train"), _reason=note.format(99))]    # its partner is not in this version
    assert settle_splits(rows, {}, {}) == 3
    assert [r["split"] for r in rows] == ["valid", "valid", "valid", "train", "train", "train"]
    published = {("flickr", "p5"): {"test": 1}}
    for r, split in zip(rows, ["train", "valid", "test", "train", "test", "train"]):
        r["split"] = split
    assert settle_splits(rows, published, {}) == 3 and [r["split"] for r in rows[3:5]] == ["test", "test"]


@pytest.mark.skipif(not HYMENOPTERA.is_dir(), reason="fixture photos missing (../shared/fixtures)")
def test_a_copy_put_back_as_not_a_duplicate_joins_its_twins_split_and_the_undo_restores_the_version(tmp_path):
    # Audit review29, finding 1: a smaller re-encode of a training ant, at a path whose photo id the
    # hash puts in test, is dropped for the ant (near-duplicate:d=0). "Not a duplicate" on it put it in
    # test by its own photo id; the next curate then dropped the ant, published in train, as a copy
    # of a test image (near-duplicate-of-test), and undoing "not a duplicate" left the ant out.
    cfg, original, copy, ids = copy_of_a_training_ant(tmp_path)
    v1 = build_dataset(cfg)
    assert manifest_of(v1)[original]["split"] == "train" and copy not in manifest_of(v1)
    with Catalog(cfg.catalog_path) as c:    # what the review app's "not a duplicate" (key d) calls
        overrides.ensure_schema(c)
        done = overrides.act(c, ids[copy], "not-duplicate", "another picture", "test", list(cfg.classes))
    v2 = build_dataset(cfg)
    published = manifest_of(v2)
    assert (published[original]["split"], published[copy]["split"]) == ("train", "train")
    for _ in range(2):      # the next curates keep both, and the builds after them publish nothing new
        curate(cfg)
        with Catalog(cfg.catalog_path) as c:
            now = {r["source_file"]: r for r in c.candidates()}
        assert (now[original]["status"], now[original]["reason"]) == ("accepted", None), now[original]
        assert build_dataset(cfg).version == v2.version
    with Catalog(cfg.catalog_path) as c:
        overrides.undo(c, ids[copy], done.action_id, "my mistake", "test")
    curate(cfg)
    v3 = build_dataset(cfg)
    assert {f: (r["split"], r["labels"]) for f, r in manifest_of(v3).items()} == {
        f: (r["split"], r["labels"]) for f, r in manifest_of(v1).items()}
    # docs/review.md: the kept ant rejected, the copy put back in its place: in the ant's split
    with Catalog(cfg.catalog_path) as c:
        overrides.act(c, ids[original], "reject", "blurry", "test", list(cfg.classes))
        overrides.act(c, ids[copy], "not-duplicate", "the sharper one", "test", list(cfg.classes))
    curate(cfg)
    published = manifest_of(build_dataset(cfg))
    assert original not in published and published[copy]["split"] == "train"


def test_a_copy_put_back_in_review_takes_its_twins_split():
    published = {("flickr", "t4"): {"train": 1}, ("flickr", "c5"): {"test": 3}, ("flickr", "t6"): {"train": 1}}
    rows = [row(1, "c1", "test"), row(2, "t2", "train"),      # neither published: the twin's own split
            row(3, "c3", "test"),                              # its twin (t4, published in train) is out
            row(5, "c5", "test"), row(6, "t6", "train"),       # published apart (before 2026-12-07): test first
            row(7, "c7", "probe", keeps=()), row(8, "t8", "train")]   # a probe put back: a probe still
    put_back = [(1, 2), (3, 4), (5, 6), (7, 8)]
    assert settle_splits(rows, published, {3: [("flickr", "t4")]}, put_back) == 3
    assert [r["split"] for r in rows] == ["train", "train", "train", "test", "test", "probe", "train"]


def test_a_group_whose_members_may_keep_different_splits_is_never_split_across_train_and_test():
    # Audit review29, finding 7: a pool image (never tested) put back as "not a duplicate" of a twin
    # published in test stayed in train, its twin in test; a review pair of an image the hash puts in
    # test and a mined one (train only) stayed apart too. Now the group shares a split all may keep,
    # and a member that can never join a twin published in test is left out, with the reason.
    pool = ("train", "valid")
    rows = [row(1, "t1", "train"), row(2, "c2", "train", keeps=pool),    # twin published in test
            row(3, "t3", "test"), row(4, "c4", "valid", keeps=pool)]     # nothing published: c4's split
    published = {("flickr", "t1"): {"test": 1}}
    left_out: list[dict] = []
    assert settle_splits(rows, published, {2: [("flickr", "t1")], 4: [("flickr", "t3")]}, [(2, 1), (4, 3)],
                         left_out) == 2
    assert [(r["candidate_id"], r["split"]) for r in rows] == [(1, "test"), (3, "valid"), (4, "valid")]
    assert [(r["candidate_id"], r["_left_out"]) for r in left_out] == [(2, "copy-of-a-test-picture")]
    note = "review:label-conflict:with={}:d=2:s=0.95"
    pair = [dict(row(5, "p1", "test"), _reason=note.format(6)), dict(row(6, "p2", "train", keeps=("train",)),
                                                                     _reason=note.format(5))]
    assert settle_splits(pair, {}, {}) == 1 and [r["split"] for r in pair] == ["train", "train"]


def test_published_splits_reads_the_versions_and_their_listings_once_per_process(tmp_path, caplog):
    # Review29, finding 4: every build read every version's whole manifest as dicts, again at every
    # call. Three columns are streamed now, each version once per process; a version held whole is
    # read from its folder, one fetched as a listing alone (an object store's) from the listing.
    from mlc_pipeline.dataset.splits import published_splits
    from mlc_pipeline.manifest import write_manifest
    root, listings = tmp_path / "default", tmp_path / "default" / ".listings"

    def publish(folder, *rows):
        folder.mkdir(parents=True)
        write_manifest(folder / "manifest.csv", [{"path": f"images/x/{p}.jpg", "split": s, "source": "flickr",
                                                  "photo_id": p, "title": "=a formula"} for p, s in rows])
    publish(listings / "v1", ("a", "train"), ("b", "test"))
    publish(listings / "v2", ("a", "test"))                 # the cache holds v2 whole: its folder is read
    publish(root / "v2", ("a", "valid"), ("p", "probe"))
    assert published_splits(root, listings) == {("flickr", "a"): {"train": 1, "valid": 2}, ("flickr", "b"): {"test": 1}}
    assert published_splits(root) == {("flickr", "a"): {"valid": 2}}    # without the listings
    assert published_splits(root) is published_splits(root)             # nothing read again
    publish(root / "v3", ("b", "train"), ("c", "valid"))
    (root / "v4").mkdir()
    (root / "v4" / "manifest.csv").write_text("path,split\nimages/x/d.jpg,train\n")     # no photo columns
    with caplog.at_level("WARNING"):
        assert published_splits(root, listings) == {("flickr", "a"): {"train": 1, "valid": 2},
                                                    ("flickr", "b"): {"test": 1, "train": 3}, ("flickr", "c"): {"valid": 3}}
    assert "v4/manifest.csv cannot be read" in caplog.text
    shutil.rmtree(listings / "v1")          # withdrawn: read again without it
    assert published_splits(root, listings) == {("flickr", "a"): {"valid": 2}, ("flickr", "b"): {"train": 3},
                                                ("flickr", "c"): {"valid": 3}}


@pytest.mark.skipif(not HYMENOPTERA.is_dir(), reason="fixture photos missing (../shared/fixtures)")
def test_a_mined_copy_put_back_while_its_twin_published_in_test_is_rejected_never_trains(tmp_path):
    # A mining-pool image (a 3/4-size re-encode of an ant) is mined as a hard negative; the ant itself,
    # collected later at a path its photo id puts in test, is kept in its place (more pixels) and v1
    # tests it. The person rejects the ant and puts the copy back ("not a duplicate"). The twin out of
    # the version, nothing in the copy's group could take test (a mined image never is), so the ant's
    # published test split was passed over and the copy trained in v2: the picture v1 tested.
    cfg, world = hymenoptera_world(tmp_path, ants=16, bees=6)
    settings = cfg.model_dump(mode="json")
    settings["source"]["local"]["query_map"]["pool"] = "pool"
    cfg = parse_config({**settings, "mine": {**settings["mine"], "pool": {"queries": ["pool"], "count": 1}}})
    ant = sorted((HYMENOPTERA / "ants").glob("*.jpg"))[40]
    im = Image.open(ant).convert("RGB")
    (world / "pool").mkdir()
    im.resize((im.width * 3 // 4, im.height * 3 // 4), Image.Resampling.LANCZOS).save(world / "pool/copy.jpg",
                                                                                      quality=85)
    collect(cfg, progress=False)
    curate(cfg)
    with Catalog(cfg.catalog_path) as c:       # what `mlc mine` records for a negative it adds (model/mine.py)
        copy = next(r for r in c.candidates(purpose="pool") if r["source_file"] == "pool/copy.jpg")
        assert copy["status"] == "accepted", copy
        c.set_status(copy["id"], "accepted", "hard-negative:round=1", c.start_run("mine"), "mine", purpose="train",
                     curated_label="other", mined_round=1, mined_score=0.9, mined_model="m")
    twin = named_for(cfg, "found", ".jpg", "test")
    shutil.copy(ant, world / twin)
    collect(cfg, progress=False)
    curate(cfg)
    with Catalog(cfg.catalog_path) as c:
        rows = {r["source_file"]: r for r in c.candidates()}
    assert rows["pool/copy.jpg"]["status"] == "duplicate" and rows["pool/copy.jpg"]["duplicate_of"] == rows[twin]["id"]
    v1 = build_dataset(cfg)
    assert manifest_of(v1)[twin]["split"] == "test" and "pool/copy.jpg" not in manifest_of(v1)
    with Catalog(cfg.catalog_path) as c:
        overrides.ensure_schema(c)
        overrides.act(c, rows[twin]["id"], "reject", "blurry", "test", list(cfg.classes))
        overrides.act(c, rows["pool/copy.jpg"]["id"], "not-duplicate", "another picture", "test", list(cfg.classes))
    for _ in range(2):          # at once, and after the next curate
        v2 = build_dataset(cfg)
        assert twin not in manifest_of(v2) and "pool/copy.jpg" not in manifest_of(v2), manifest_of(v2).get("pool/copy.jpg")
        assert json.loads((v2.path / "dataset.json").read_text())["left_out"]["copy-of-a-test-picture"] == {"other": 1}
        curate(cfg)
