"""report/inspect.py: the version diff `mlc inspect` and the build's summary show."""

import pytest

from mlc_pipeline.report.inspect import PROBE_GROUP, version_diff


def row(photo_id: str, labels: str, split: str) -> dict:
    return {"source": "local", "photo_id": photo_id, "labels": labels, "split": split}


def test_probe_images_are_their_own_group_not_other_negatives():
    """A user's audit: adding a class that was a probe kind (fish) turned 6 fish probes into class
    images and the probe set was topped up with 6 others; `mlc inspect` said "other: added 6", read
    as six new negatives trained on, though the negatives had not changed."""
    old = [row("n1", "", "train"), row("n2", "", "test"), row("f1", "", "probe"), row("h1", "", "probe"),
           row("k1", "kite", "train")]
    new = [row("n1", "", "train"), row("n2", "", "test"), row("f1", "fish", "train"), row("h1", "", "probe"),
           row("h2", "", "probe"), row("k1", "kite", "train"), row("f2", "fish", "valid"), row("n3", "", "valid")]
    assert version_diff(old, new) == {PROBE_GROUP: {"added": 1}, "fish": {"added": 1, "relabelled": 1},
                                      "other": {"added": 1}}
    # A probe image that becomes a negative (it moved to "other") is a change of group too.
    assert version_diff([row("p", "", "probe")], [row("p", "", "train")]) == {"other": {"relabelled": 1}}
    assert version_diff(new, new) == {}


def test_folder_mode_report_names_the_files_left_out_and_the_holds_of_a_takedown(tmp_path):
    """A user's audit of folder mode: a zero-byte file and an HTML page named .jpg were skipped with a
    log line only (no count anywhere); the report captioned quarantined and duplicate images with
    generated photo ids, not the user's file names; and a near copy held for a takedown was counted as
    `rejected: review`, which reads as a reviewer's decision."""
    import json
    import shutil
    import subprocess

    import yaml
    from PIL import Image

    from helpers import ENV, FIXTURES, MLC
    from mlc_pipeline.collect.stage import collect
    from mlc_pipeline.config import parse_config
    from mlc_pipeline.curate.stage import curate
    from mlc_pipeline.curate.takedown import remove_photos
    from mlc_pipeline.flickr_server.folder import photo_id_for

    ants = sorted((FIXTURES / "hymenoptera" / "ants").glob("*.jpg"))
    world = tmp_path / "photos"
    (world / "ants").mkdir(parents=True)
    (world / "scenery").mkdir()
    for f in ants[:6]:
        shutil.copy(f, world / "ants" / f.name)
    for f in ants[100:102]:
        shutil.copy(f, world / "scenery" / f.name)
    (world / "ants" / "empty.jpg").write_bytes(b"")
    (world / "ants" / "page.jpg").write_text("<html>404</html>")
    Image.open(ants[0]).resize((50, 40)).save(world / "ants" / "tiny.jpg")
    with Image.open(ants[1]) as im:                  # a re-upload: a 5 % crop, re-encoded
        w, h = im.size
        im.convert("RGB").crop((w // 20, h // 20, w - w // 20, h - h // 20)).save(world / "ants" / "zz_recrop.jpg", quality=80)
    raw = {"data_dir": str(tmp_path / "data"),
           "source": {"kind": "local", "licenses": "any", "sizes": ["url_m", "url_n", "url_s", "url_q", "url_t", "url_sq"],
                      "local": {"port": 0, "folder": str(world), "query_map": {"ants": "ants", "scenery": "scenery"}}},
           "classes": {"ants": {"queries": ["ants"], "count": 10}}, "other": {"queries": ["scenery"], "count": 2}}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    cfg = parse_config(raw)
    summary = collect(cfg, progress=False)
    assert summary.unreadable == {"count": 2, "files": ["ants/empty.jpg (empty file)", "ants/page.jpg (not an image)"]}
    curate(cfg)
    # The photo whose copy curate dropped is taken down: its near copy is held for review.
    removed = remove_photos(cfg, "owner request", photo_id=photo_id_for(f"ants/{ants[1].name}"))
    assert len(removed.removed) == 1 and len(removed.held) == 1
    curate(cfg)

    shown = subprocess.run(MLC + ["inspect", "-c", str(config), "--html", str(tmp_path / "r.html")],
                           env=ENV, text=True, capture_output=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert "rejected: held-for-takedown = 1" in text and "rejected: review" not in text, text
    assert "rejected: held-for-takedown 1, too-small 1" in text               # the short set's line too
    assert "Not collected: 2 file(s) in the folder are no readable image" in text, text
    assert "ants/empty.jpg (empty file)" in text and "ants/page.jpg (not an image)" in text
    page = (tmp_path / "r.html").read_text()
    assert "<figcaption>ants/tiny.jpg: too-small</figcaption>" in page
    assert "<li>ants/page.jpg (not an image)</li>" in page
    as_json = json.loads(subprocess.run(MLC + ["inspect", "-c", str(config), "--json"], env=ENV, text=True,
                                        capture_output=True, timeout=300).stdout)
    assert as_json["catalog"]["unreadable_in_folder"]["count"] == 2


def test_recent_runs_say_why_a_run_failed(tmp_path):
    """`mlc inspect` printed "collect  failed" and nothing more (audit collect25 D5)."""
    from mlc_pipeline.catalog import Catalog
    from mlc_pipeline.report.inspect import catalog_summary, format_catalog_summary
    with Catalog(tmp_path / "catalog.sqlite") as catalog:
        ok, bad = catalog.start_run("collect"), catalog.start_run("collect")
        catalog.finish_run(ok, "completed", {"api_calls": 3})
        catalog.finish_run(bad, "failed", {"api_calls": 8, "error": "RetriesExhausted: flickr.photos.search still "
                                                                     "failing after 6 attempts: HTTP 429 from the API"})
        text = format_catalog_summary(catalog_summary(catalog))
    assert f"{bad} collect  failed: RetriesExhausted: flickr.photos.search still failing after 6 attempts" in text
    assert f"{ok} collect  completed\n" in text + "\n"


def test_a_version_withdrawn_while_inspect_reads_it_is_said_so(tmp_path):
    """`mlc inspect` during `mlc withdraw v1` said "no dataset version v1" (the user had named none), or
    called v1 damaged as its files went (the concurrency28 audit): the withdrawal is what it says."""
    from mlc_pipeline.config import Config
    from mlc_pipeline.dataset.verify import VersionDamaged, read_version
    from mlc_pipeline.manifest import UnknownVersion, record_withdrawal
    from mlc_pipeline.report.inspect import dataset_summary
    cfg = Config(data_dir=tmp_path / "data", classes={"a": {"queries": ["a"], "count": 1}},
                 other={"queries": ["o"], "count": 1})
    root = cfg.layout.datasets
    (root / "v1").mkdir(parents=True)
    (root / "v1" / "dataset.json").write_text("{}")         # its manifest already deleted
    with pytest.raises(VersionDamaged, match="manifest.csv is missing"):
        read_version(root / "v1")
    record_withdrawal(root, "v1", "ab12", "built from a bad config")
    with pytest.raises(VersionDamaged, match=r"^dataset version v1 was withdrawn \(.*: built from a bad config\) "
                                             r"while this command read it"):
        read_version(root / "v1")
    (root / "v1" / "dataset.json").unlink()
    (root / "v1").rmdir()
    with pytest.raises(UnknownVersion, match="v1 was withdrawn .* while this command read it"):
        dataset_summary(cfg, "v1")


def test_a_build_that_only_moves_images_between_splits_says_so(tmp_path):
    """The upgrade29 audit: a build that only moved mined negatives between train and valid (then: the
    first build after an upgrade, `mine.calibration_share`) published a new version and `mlc build`
    said "changes since the previous version: none", `mlc inspect` the same. A published negative now
    keeps its split (dataset/splits.py), so the move left is the one a user asks for: the share set to
    0 trains every mined negative, the validating third included. Each output names it, per label and
    split pair."""
    import json
    import subprocess

    import yaml
    from PIL import Image

    from helpers import ENV, MLC
    from mlc_pipeline.catalog import Catalog, Found
    from mlc_pipeline.config import parse_config
    from mlc_pipeline.curate.stage import curate
    from mlc_pipeline.dataset.build import build_dataset
    from mlc_pipeline.dataset.splits import mined_split

    settings = {"data_dir": str(tmp_path / "data"), "classes": {"cat": {"queries": ["cat"], "count": 8}},
                "other": {"queries": ["o"], "count": 4}, "mine": {"pool": {"queries": ["p"], "count": 6}},
                "curate": {"workers": 1}}
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(settings))
    cfg = parse_config(settings)
    share = cfg.mine.calibration_share         # three mined negatives that now validate, three that train
    ids = [f"pool{k}" for k in range(100)]
    pool = ([p for p in ids if mined_split("flickr", p, share) == "valid"][:3]
            + [p for p in ids if mined_split("flickr", p, share) == "train"][:3])
    photos = [(f"cat{k}", "train", "cat") for k in range(8)] + [(f"o{k}", "train", "other") for k in range(4)]
    with Catalog(cfg.catalog_path) as c:
        run = c.start_run("plant")
        c.upsert_found([Found("flickr", pid, purpose, label, label, f"http://h/{pid}", "url_m", None, None, 4,
                              "CC BY 2.0", "o", "o", "t", None, None, label)
                        for pid, purpose, label in photos + [(p, "pool", "other") for p in pool]], run)
        for pid, *_ in photos + [(p, "", "") for p in pool]:
            dest = cfg.layout.raw("flickr") / f"{pid}.jpg"
            dest.parent.mkdir(parents=True, exist_ok=True)
            Image.effect_noise((96, 96), 60).convert("RGB").save(dest)
            c.set_status(c.get_by_photo("flickr", pid)["id"], "downloaded", None, run, "download", file_path=str(dest))
    curate(cfg)
    with Catalog(cfg.catalog_path) as c:        # mined in round 1, as `mlc mine` records them
        run = c.start_run("mine")
        for pid in pool:
            assert c.get_by_photo("flickr", pid)["status"] == "accepted"
            c.set_status(c.get_by_photo("flickr", pid)["id"], "accepted", "hard-negative:round=1", run, "mine",
                         purpose="train", curated_label="other", mined_round=1)
    assert build_dataset(cfg).version == "v1"     # a third of the mined negatives validate
    config.write_text(yaml.safe_dump({**settings, "mine": {**settings["mine"], "calibration_share": 0}}))
    moved = 3

    def mlc(*args):
        res = subprocess.run([*MLC, *args, "-c", str(config)], env=ENV, text=True, capture_output=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        return res.stdout
    built = mlc("build", "--no-progress")
    assert "dataset default v2: published" in built, built
    assert f"  changes since the previous version: other moved valid->train {moved}\n" in built, built
    assert f"Changes since v1\n  other: moved valid->train {moved}\n" in mlc("inspect") + "\n"
    assert json.loads(mlc("inspect", "--json"))["dataset"]["diff"] == {"other": {"moved valid->train": moved}}
    mlc("inspect", "--html", str(tmp_path / "r.html"))
    assert (f"<tr><td>other</td><td>0</td><td>0</td><td>0</td><td>valid-&gt;train {moved}</td><td>0</td></tr>"
            in (tmp_path / "r.html").read_text())


def test_a_move_between_splits_is_counted_per_label_and_once_for_a_relabelled_photo():
    old = [row("m1", "", "train"), row("m2", "", "train"), row("c1", "ants bees", "valid"), row("p", "", "probe")]
    new = [row("m1", "", "valid"), row("m2", "", "train"), row("c1", "ants bees", "train"), row("p", "ants", "train")]
    assert version_diff(old, new, ["local:c1"]) == {
        "ants": {"relabelled": 1, "moved valid->train": 1, "changed in review": 1},
        "bees": {"moved valid->train": 1, "changed in review": 1}, "other": {"moved train->valid": 1}}
