"""curate/takedown.py (the whole `mlc remove` through the CLI: test_remove.py too): the exports
under <data_dir>/exports/ that still hold a photo taken down, and the same picture already in the
catalog under another id (the curate25 audit), through the real CLI on real photos served by the
bundled server."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image, ImageOps

from helpers import FIXTURES, kill_after_its_commit

from mlc_pipeline.catalog import Catalog, overrides
from mlc_pipeline.collect.stage import collect
from mlc_pipeline.config import parse_config
from mlc_pipeline.curate.stage import curate
from mlc_pipeline.curate.takedown import exports_with
from mlc_pipeline.dataset.build import build_dataset
from mlc_pipeline.flickr_server.folder import photo_id_for
from mlc_pipeline.manifest import read_manifest


def test_exports_with_skips_a_marker_that_is_not_an_object_and_says_so(tmp_path: Path, caplog):
    """An export.json holding `[1, 2]` crashed `mlc remove` (AttributeError: 'list' object has no
    attribute 'get'), after the takedown was committed; `mlc withdraw` skipped the same marker. Both
    read the markers in one place now: a damaged one is skipped, with a warning naming it."""
    cfg = parse_config({"data_dir": str(tmp_path / "data"), "classes": {"ants": {"queries": ["ants"], "count": 5}},
                        "other": {"queries": ["scenery"], "count": 5}})
    exports = cfg.data_dir / "exports"
    for name, marker in (("a-list", [1, 2]),
                         ("b-v1", {"dataset": "default", "version": "v1", "taken_down_left_out": ["flickr:p2"]}),
                         ("c-v1-after", {"dataset": "default", "version": "v1",
                                         "taken_down_left_out": ["flickr:p1", "flickr:p2"]}),
                         ("d-other-dataset", {"dataset": "birds", "version": "v1"})):
        (exports / name).mkdir(parents=True)
        (exports / name / "export.json").write_text(json.dumps(marker))
    with caplog.at_level(logging.WARNING):
        found = exports_with(cfg, {"v1": ["p1", "p2"]})
    assert found == {str(exports / "b-v1"): ["p1"]}
    assert any(f"{exports / 'a-list' / 'export.json'}: not read (not a JSON object)" in r.getMessage()
               for r in caplog.records), caplog.text


ANTS, BEES = FIXTURES / "hymenoptera" / "ants", FIXTURES / "hymenoptera" / "bees"
OWNERS = "ants/1099452230_d1949d3250.jpg"      # the owner's photo, among the first ten ants (the audit's)


def world_with(tmp_path: Path, extra, catalog: dict | None = None) -> tuple:
    """Ten ants, ten bees, four scenery photos and what `extra(world)` adds; collected, curated and
    published as v1 (`catalog`: the catalog's config keys, as conftest's catalog_settings). (cfg,
    config path, world)."""
    if not ANTS.is_dir():
        pytest.skip("fixture photos missing (../shared/fixtures)")
    world = tmp_path / "world"
    for name, files in (("ants", sorted(ANTS.glob("*.jpg"))[:10]), ("bees", sorted(BEES.glob("*.jpg"))[:10]),
                        ("scenery", sorted(ANTS.glob("*.jpg"))[100:104])):
        (world / name).mkdir(parents=True)
        for f in files:
            shutil.copy(f, world / name / f.name)
    extra(world)
    raw = {"data_dir": str(tmp_path / "data"),
           "source": {"kind": "local", "licenses": "any", "sizes": ["url_m", "url_n", "url_s"],
                      "local": {"port": 0, "folder": str(world),
                                "query_map": {"ants": "ants", "bees": "bees", "scenery": "scenery"}}},
           "classes": {"ants": {"queries": ["ants"], "count": 50}, "bees": {"queries": ["bees"], "count": 50}},
           "other": {"queries": ["scenery"], "count": 50}, "build": {"max_side": 96}, **(catalog or {})}
    cfg = parse_config(raw)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    collect(cfg, progress=False)
    curate(cfg)
    assert build_dataset(cfg).version == "v1"
    return cfg, config, world


def mlc_remove(config: Path, photo_id: str, reason: str = "owner request") -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "mlc_pipeline.cli", "remove", "--photo-id", photo_id, "--reason",
                           reason, "-c", str(config)], capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    return done


def rebuilt(cfg) -> set[str]:
    "Collect, curate and build again: the photo ids of the version published."
    collect(cfg, progress=False)
    curate(cfg)
    return {r["photo_id"] for r in read_manifest(build_dataset(cfg).path / "manifest.csv")}


def row_of(cfg, file: str) -> dict:
    with Catalog(cfg.catalog_path) as c:
        return c.get_by_photo("local", photo_id_for(file))


def test_the_image_a_photo_taken_down_was_dropped_for_is_held(tmp_path):
    # The audit's case (a): someone's re-upload of the owner's photo, upscaled 1.5x, has more pixels,
    # so curate kept it and dropped the owner's photo as its near duplicate. The takedown held only the
    # images dropped for the photo, never the one it had been dropped for: the picture stayed in every
    # later version, and `mlc remove` said "no published version contains them" while v1 held it.
    def reupload(world: Path) -> None:
        with Image.open(world / OWNERS) as im:
            im.resize((im.width * 3 // 2, im.height * 3 // 2), Image.LANCZOS).save(world / "ants" / "zz_big.jpg",
                                                                                   quality=90)
    cfg, config, world = world_with(tmp_path, reupload)
    owners, big = row_of(cfg, OWNERS), row_of(cfg, "ants/zz_big.jpg")
    assert owners["status"] == "duplicate" and owners["duplicate_of"] == big["id"], owners
    done = mlc_remove(config, owners["photo_id"])
    assert f"held 1 near duplicate(s) of the photos taken down for review: local:{big['photo_id']}" in done.stdout
    assert f"published versions that hold the copies held (the same pictures; rebuild with `mlc build`, or " \
           f"`mlc withdraw` them):\n  v1: 1 photo(s): {big['photo_id']}\n" in done.stdout, done.stdout
    assert "no published version contains them" not in done.stdout
    assert big["photo_id"] not in rebuilt(cfg)
    with Catalog(cfg.catalog_path) as c:
        (hold,) = overrides.actions(c, big["id"])
        assert hold["action"] == "reject" and hold["client"] == "mlc remove"
        assert hold["reason"] == (f"held: kept in place of its near duplicate local:{owners['photo_id']}, taken down "
                                  "(owner request); undo this if it is another picture")
        overrides.undo(c, big["id"], hold["id"], "it is another picture", "test")     # the user's call
    assert big["photo_id"] in rebuilt(cfg)


def mirror_of_owners(world: Path) -> None:
    "The owner's photo mirrored, in the world as ants/zz_mirror_before.jpg."
    with Image.open(world / OWNERS) as im:
        ImageOps.mirror(im.convert("RGB")).save(world / "ants" / "zz_mirror_before.jpg", quality=90)


def test_a_mirror_collected_before_the_takedown_is_held_and_takes_no_later_mirror_in(tmp_path):
    # The audit's case (b): a mirrored copy of the photo, collected before its takedown, was kept beside
    # it (curate's pixel check never compares flips) and exempt from the takedown's hash rule (accepted
    # while the photo was here), so it stayed published, and a mirrored re-upload collected later was
    # dropped as its duplicate rather than held. An unrelated photo stays in.
    cfg, config, world = world_with(tmp_path, mirror_of_owners)
    owners, before = row_of(cfg, OWNERS), row_of(cfg, "ants/zz_mirror_before.jpg")
    assert owners["status"] == before["status"] == "accepted"
    done = mlc_remove(config, owners["photo_id"])
    assert f"held 1 near duplicate(s) of the photos taken down for review: local:{before['photo_id']}" in done.stdout
    assert f"  v1: 1 photo(s): {before['photo_id']}\n" in done.stdout, done.stdout
    with Image.open(world / "ants" / "zz_mirror_before.jpg") as im:
        im.save(world / "ants" / "zz_mirror_after.jpg", quality=85)
    in_v2 = rebuilt(cfg)
    after = row_of(cfg, "ants/zz_mirror_after.jpg")
    assert not {before["photo_id"], after["photo_id"]} & in_v2, in_v2
    assert photo_id_for(sorted(ANTS.glob("*.jpg"))[0].relative_to(ANTS.parent).as_posix()) in in_v2
    with Catalog(cfg.catalog_path) as c:
        (hold,) = overrides.actions(c, before["id"])
        assert hold["client"] == "mlc remove" and hold["reason"].startswith(
            f"held: looks like a mirror image of local:{owners['photo_id']}, taken down (owner request): "
            "perceptual hashes "), hold["reason"]
        overrides.undo(c, before["id"], hold["id"], "it is another picture", "test")   # undoable as any hold
    assert before["photo_id"] in rebuilt(cfg)


def test_a_rerun_of_a_takedown_from_before_these_holds_makes_them(tmp_path, monkeypatch, catalog_settings):
    # A takedown made before these rules held neither the image its photo was dropped for nor a mirror
    # accepted before it; the same `mlc remove` again holds both (the photo's status before its
    # takedown is read from its events).
    from mlc_pipeline.curate import takedown

    def copies(world: Path) -> None:
        with Image.open(world / OWNERS) as im:
            im.resize((im.width * 3 // 2, im.height * 3 // 2), Image.LANCZOS).save(world / "ants" / "zz_big.jpg",
                                                                                   quality=90)
            ImageOps.mirror(im.convert("RGB")).save(world / "bees" / "zz_mirror.jpg", quality=90)
    cfg, config, world = world_with(tmp_path, copies, catalog_settings)
    owners, big, mirrored = (row_of(cfg, f) for f in (OWNERS, "ants/zz_big.jpg", "bees/zz_mirror.jpg"))
    assert owners["duplicate_of"] == big["id"] and mirrored["status"] == "accepted"
    with monkeypatch.context() as m:        # the takedown as it was made before these holds
        m.setattr(takedown, "hold_near_copies", lambda *args: None)
        m.setattr(takedown, "hold_mirrors", lambda *args: None, raising=False)    # none before this fix
        assert takedown.remove_photos(cfg, "owner request", photo_id=owners["photo_id"]).held == []
    done = mlc_remove(config, owners["photo_id"], "owner request, again")
    assert "removed 0 photo(s)" in done.stdout and "1 already removed" in done.stdout
    assert f"held 2 near duplicate(s) of the photos taken down for review: local:{big['photo_id']}, " \
           f"local:{mirrored['photo_id']}" in done.stdout, done.stdout
    with Catalog(cfg.catalog_path) as c:
        assert overrides.actions(c, big["id"])[0]["reason"].endswith("taken down (owner request); undo this if it "
                                                                     "is another picture")
    assert not {big["photo_id"], mirrored["photo_id"]} & rebuilt(cfg)
    again = mlc_remove(config, owners["photo_id"]).stdout                       # held once, listed again
    assert "near duplicate(s)" not in again and "still held for them (held earlier, 2)" in again, again


def mlc_export(config: Path, version: str, *args: str) -> Path:
    "`mlc export` as imagefolder to its default place under <data_dir>/exports/; that folder."
    done = subprocess.run([sys.executable, "-m", "mlc_pipeline.cli", "export", version, "--format", "imagefolder",
                           "-c", str(config), *args], capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.split(" in ")[-1].split()[0])


def exported_ids(folder: Path) -> set[str]:
    return {p.stem.split("-", 1)[1] for p in folder.rglob("*.jpg")}


def test_a_takedown_takes_the_photos_byte_copy_kept_in_its_place_down_and_names_the_versions(tmp_path):
    # The export26 audit (B): the owner's photo was collected after a byte-identical copy under another
    # id, so curate kept the copy (published in v1) and dropped the owner's photo as its duplicate. `mlc
    # remove` of the owner's photo said "no published version contains them", an export made before
    # the next curate carried the bytes, and a rerun after that curate (which took the copy down)
    # still said so: no command told the user that v1 publishes the very bytes taken down.
    cfg, config, world = world_with(tmp_path, lambda world: None)
    shutil.copy(world / OWNERS, world / "ants" / "zz_owners_original.jpg")
    collect(cfg, progress=False)
    curate(cfg)
    kept, owners = row_of(cfg, OWNERS), row_of(cfg, "ants/zz_owners_original.jpg")
    assert owners["status"] == "duplicate" and owners["duplicate_of"] == kept["id"] and kept["status"] == "accepted"
    before = mlc_export(config, "v1")
    assert kept["photo_id"] in exported_ids(before)
    done = mlc_remove(config, owners["photo_id"]).stdout
    assert "no published version contains them" not in done, done
    assert f"byte copies of them (the same file under another id), taken down too: local:{kept['photo_id']} " \
           "(was accepted)" in done, done
    listing = (f"published versions that hold their byte copies (taken down, the same file; rebuild with `mlc "
               f"build`, or `mlc withdraw` them):\n  v1: 1 photo(s): {kept['photo_id']}\n")
    assert listing in done and f"  {before}: 1 photo(s): {kept['photo_id']}\n" in done, done
    assert row_of(cfg, OWNERS)["status"] == "removed" and not Path(kept["file_path"]).exists()
    after = mlc_export(config, "v1", "--force")         # before any curate: the bytes are out
    assert after == before and kept["photo_id"] not in exported_ids(after)
    assert json.loads((after / "export.json").read_text())["taken_down_left_out"] == [f"local:{kept['photo_id']}"]
    curate(cfg)
    again = mlc_remove(config, owners["photo_id"]).stdout
    assert f"taken down too: local:{kept['photo_id']} (earlier)" in again and listing in again, again
    assert kept["photo_id"] not in rebuilt(cfg)


CROPPED = "ants/10308379_1b6c72e180.jpg"    # 7.5 % off its left and top: 16 bits from every view, 2 from a corner


def test_a_corner_crop_collected_before_the_takedown_is_held_by_the_corner_windows(tmp_path):
    # The export26 audit (D): a corner crop curate's search never paired with the photo (its centred
    # views are 16 bits apart) was accepted beside it; the takedown compared images accepted before it
    # with the photo's mirror views alone, so the crop, 2 bits from a corner window, stayed published,
    # while a crop collected after the takedown was held. An unrelated photo stays in.
    def crop(world: Path) -> None:
        with Image.open(world / CROPPED) as im:
            w, h = im.size
            im.convert("RGB").crop((w * 75 // 1000, h * 75 // 1000, w, h)).save(world / "ants" / "zz_corner.jpg",
                                                                                 quality=90)
    cfg, config, world = world_with(tmp_path, crop)
    photo, corner = row_of(cfg, CROPPED), row_of(cfg, "ants/zz_corner.jpg")
    assert photo["status"] == corner["status"] == "accepted", (photo, corner)
    done = mlc_remove(config, photo["photo_id"]).stdout
    assert f"held 1 near duplicate(s) of the photos taken down for review: local:{corner['photo_id']} " in done, done
    with Catalog(cfg.catalog_path) as c:
        (hold,) = overrides.actions(c, corner["id"])
    assert hold["client"] == "mlc remove" and hold["reason"].startswith(
        f"held: looks like a corner crop of local:{photo['photo_id']}, taken down (owner request): perceptual "
        "hashes "), hold["reason"]
    assert hold["reason"].endswith("bits apart (curate's search never compares a corner window); undo this if it is "
                                   "another picture")
    in_v2 = rebuilt(cfg)
    assert corner["photo_id"] not in in_v2 and row_of(cfg, OWNERS)["photo_id"] in in_v2


def test_a_rerun_of_mlc_remove_lists_every_hold_in_force_with_its_versions_and_exports(tmp_path):
    # The export26 audit (G): the first `mlc remove` listed the versions and exports holding the mirror
    # it held; the same command again ("a rerun is harmless") listed only the photo's own, so once the
    # first output had scrolled away nothing said that v1 and its export still hold the mirror.
    cfg, config, world = world_with(tmp_path, mirror_of_owners)
    owners, mirrored = row_of(cfg, OWNERS), row_of(cfg, "ants/zz_mirror_before.jpg")
    export = mlc_export(config, "v1")
    first = mlc_remove(config, owners["photo_id"]).stdout
    assert f"held 1 near duplicate(s) of the photos taken down for review: local:{mirrored['photo_id']}" in first
    held_in = (f"published versions that hold the copies held (the same pictures; rebuild with `mlc build`, or "
               f"`mlc withdraw` them):\n  v1: 1 photo(s): {mirrored['photo_id']}\n")
    exported = f"  {export}: 2 photo(s): {', '.join(sorted([owners['photo_id'], mirrored['photo_id']]))}\n"
    assert held_in in first and exported in first, first
    again = mlc_remove(config, owners["photo_id"]).stdout
    assert "near duplicate(s)" not in again                                     # nothing held anew
    assert f"still held for them (held earlier, 1): local:{mirrored['photo_id']} (undo" in again, again
    assert held_in in again and exported in again, again
    with Catalog(cfg.catalog_path) as c:
        (hold,) = overrides.actions(c, mirrored["id"])
        overrides.undo(c, mirrored["id"], hold["id"], "it is another picture", "test")
    undone = mlc_remove(config, owners["photo_id"]).stdout                      # a hold undone is not in force
    assert "held" not in undone and f"  {export}: 1 photo(s): {owners['photo_id']}\n" in undone, undone


@pytest.mark.parametrize("how", ["remove", "killed after its commit", "a takedown from before"])
def test_a_copy_set_aside_damaged_then_downloaded_again_goes_with_the_takedown(tmp_path, monkeypatch, how):
    # The export26 audit (C): curate set the photo's file, damaged on disk, aside in the quarantine and
    # collect downloaded the photo again; the takedown deleted the file the row names, and the damaged
    # copy (most of the picture) stayed for good: its bytes are not the photo's, so it was not found.
    # Killed after its commit, the next curate deletes it; a rerun deletes what an earlier one left.
    from mlc_pipeline.curate import takedown
    cfg, config, world = world_with(tmp_path, lambda world: None)
    owners = row_of(cfg, OWNERS)
    raw = Path(owners["file_path"])
    raw.write_bytes(raw.read_bytes()[:raw.stat().st_size // 2])
    curate(cfg)
    collect(cfg, progress=False)
    curate(cfg)
    (set_aside,) = cfg.layout.quarantine().rglob(f"{owners['photo_id']}.*")
    assert row_of(cfg, OWNERS)["status"] == "accepted" and raw.is_file(), row_of(cfg, OWNERS)
    assert set_aside.relative_to(cfg.layout.quarantine()).parts[0] == "truncated", set_aside
    if how == "remove":
        assert "2 file(s) deleted from raw/ and the quarantine" in mlc_remove(config, owners["photo_id"]).stdout
    elif how == "killed after its commit":
        kill_after_its_commit(monkeypatch)
        with pytest.raises(KeyboardInterrupt):
            takedown.remove_photos(cfg, "owner request", photo_id=owners["photo_id"])
        monkeypatch.undo()
        assert raw.exists() and set_aside.exists()
        curate(cfg)
    else:
        monkeypatch.setattr(takedown, "files_of", lambda layout, row, q: [takedown.file_of(row, q)],   # as it was
                            raising=False)
        takedown.remove_photos(cfg, "owner request", photo_id=owners["photo_id"])
        monkeypatch.undo()
        assert set_aside.exists() and not raw.exists()
        curate(cfg)
        assert set_aside.exists()           # not recorded: the next curate cannot know it
        assert "1 file(s) deleted from raw/ and the quarantine; 1 already removed" in mlc_remove(
            config, owners["photo_id"]).stdout
    assert not raw.exists() and not list(cfg.layout.quarantine().rglob(f"{owners['photo_id']}.*"))


REVIEWED = "ants/1030023514_aad5c608f9.jpg"     # its 10 %/side crop under scenery: a review pair at s = 0.95


def crop_under_scenery(world: Path) -> None:
    "A 10 %/side centre crop of REVIEWED filed under scenery: curate confirms it, but the labels differ."
    with Image.open(world / REVIEWED) as im:
        w, h = im.size
        im.convert("RGB").crop((w // 10, h // 10, w - w // 10, h - h // 10)).save(
            world / "scenery" / "crop_of_an_ant.jpg", quality=85)


@pytest.mark.parametrize("when", ["at the takedown", "a rerun after a curate"])
def test_the_other_member_of_a_review_pair_is_held(tmp_path, monkeypatch, catalog_settings, when):
    # The curation29 audit, finding 1: curate confirmed the crop as the same picture as the ant
    # (score >= 0.92) and kept both only because their labels differ (`review:label-conflict`). The
    # takedown of the ant followed `duplicate_of` alone, so the crop was published in the next version
    # as "other": the picture taken down, back. A rerun finds the pair in the events once the next
    # curate has dropped the crop's note (the photo's own reason is its takedown's by then).
    from mlc_pipeline.curate import takedown
    cfg, config, world = world_with(tmp_path, crop_under_scenery, catalog_settings)
    photo, crop = row_of(cfg, REVIEWED), row_of(cfg, "scenery/crop_of_an_ant.jpg")
    assert photo["reason"].startswith(f"review:label-conflict:with={crop['id']}:"), photo
    assert crop["status"] == "accepted" and crop["reason"].startswith(f"review:label-conflict:with={photo['id']}:")
    if when == "a rerun after a curate":
        with monkeypatch.context() as m:        # the takedown as it was made before this fix
            m.setattr(takedown, "hold_near_copies", lambda *args: None)
            assert takedown.remove_photos(cfg, "owner request", photo_id=photo["photo_id"]).held == []
        assert crop["photo_id"] in rebuilt(cfg)      # published again: v2 (the audit's finding)
        assert row_of(cfg, "scenery/crop_of_an_ant.jpg")["reason"] is None      # the note is gone
    done = mlc_remove(config, photo["photo_id"])
    assert f"held 1 near duplicate(s) of the photos taken down for review: local:{crop['photo_id']}" in done.stdout, \
        done.stdout
    assert f"published versions that hold the copies held (the same pictures; rebuild with `mlc build`, or " \
           f"`mlc withdraw` them):\n  v1: 1 photo(s): {crop['photo_id']}\n" in done.stdout, done.stdout
    assert crop["photo_id"] not in rebuilt(cfg)
    with Catalog(cfg.catalog_path) as c:
        (hold,) = overrides.actions(c, crop["id"])
        assert hold["action"] == "reject" and hold["client"] == "mlc remove"
        assert hold["reason"] == (f"held: a near copy under another label (curate's review pair, s=0.95) of "
                                  f"local:{photo['photo_id']}, taken down (owner request); undo this if it is "
                                  "another picture"), hold["reason"]
        overrides.undo(c, crop["id"], hold["id"], "it is another picture", "test")      # the user's call
    assert crop["photo_id"] in rebuilt(cfg)
