"""dataset/splits.py: an image never published is split by its photo id; a picture already published
keeps its split, whichever copy of it a later version holds (docs/curation.md, "Splits: a picture
keeps the split it was published in")."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image

from helpers import FIXTURES
from mlc_pipeline.catalog import Catalog
from mlc_pipeline.collect.stage import collect
from mlc_pipeline.config import parse_config
from mlc_pipeline.curate.stage import curate
from mlc_pipeline.dataset.build import build_dataset
from mlc_pipeline.dataset.splits import settle_splits, split_of
from mlc_pipeline.flickr_server.folder import photo_id_for
from mlc_pipeline.manifest import read_manifest

HYMENOPTERA = FIXTURES / "hymenoptera"


def folder_world(tmp_path, ants: int, bees: int):
    """A folder-mode world of the first fixture ants and bees and three scenery photos ("other");
    (cfg, world folder)."""
    world = tmp_path / "world"
    for name, files in (("ants", sorted((HYMENOPTERA / "ants").glob("*.jpg"))[:ants]),
                        ("bees", sorted((HYMENOPTERA / "bees").glob("*.jpg"))[:bees]),
                        ("scenery", sorted((HYMENOPTERA / "ants").glob("*.jpg"))[100:103])):
        (world / name).mkdir(parents=True)
        for f in files:
            shutil.copy(f, world / name / f.name)
    return parse_config({
        "data_dir": str(tmp_path / "data"),
        "source": {"kind": "local", "licenses": "any", "sizes": ["url_m", "url_n", "url_s"],
                   "local": {"port": 0, "folder": str(world),
                             "query_map": {"ants": "ants", "bees": "bees", "scenery": "scenery"}}},
        "classes": {"ants": {"queries": ["ants"], "count": 100}, "bees": {"queries": ["bees"], "count": 100}},
        "other": {"queries": ["scenery"], "count": 3}, "build": {"max_side": 96}}), world


def named_for(cfg, stem: str, suffix: str, split: str) -> str:
    "A path under ants/ whose photo id `split_of` puts in `split`."
    return next(rel for k in range(1000)
                if split_of("local", photo_id_for(rel := f"ants/{stem}_{k}{suffix}"), cfg.build.split) == split)


def manifest_of(version) -> dict[str, dict]:
    return {r["source_file"]: r for r in read_manifest(version.path / "manifest.csv")}


@pytest.mark.skipif(not HYMENOPTERA.is_dir(), reason="fixture photos missing (../shared/fixtures)")
def test_a_better_copy_of_a_published_training_photo_takes_its_split_not_its_own(tmp_path):
    # Audit curation29, finding 4: a lossless copy of a v1 training photo and a 1.5x upscale of another,
    # collected later under photo ids the hash puts in test, each became the keeper (the better copy)
    # and took the split of its own photo id: v2 tested on two pictures v1 trained on.
    cfg, world = folder_world(tmp_path, ants=16, bees=6)
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
            row(7, "new7", "train", keeps=("train", "valid")),  # mined: never test
            row(8, "e", "probe", keeps=())]            # a probe
    dropped_for = {1: [("flickr", "a")], 2: [("flickr", "b"), ("flickr", "a")], 3: [("flickr", "a"), ("flickr", "c")],
                   7: [("flickr", "c")]}
    assert settle_splits(rows, published, dropped_for) == 4
    assert [r["split"] for r in rows] == ["train", "train", "test", "test", "valid", "train", "train", "probe"]
