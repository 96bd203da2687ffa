"""Curate and build end to end on real photos served by the bundled server in folder mode."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import FIXTURES, tree_digest

from mlc_pipeline.dataset import build as dataset_mod
from mlc_pipeline.dataset.splits import mined_split
from mlc_pipeline.catalog import Catalog
from mlc_pipeline.collect.stage import collect
from mlc_pipeline.config import parse_config
from mlc_pipeline.curate.stage import curate
from mlc_pipeline.fsutil import sha256_file
from mlc_pipeline.dataset.build import build_dataset
from mlc_pipeline.manifest import MANIFEST_COLUMNS, read_manifest
from mlc_pipeline.flickr_server.folder import photo_id_for
from mlc_pipeline.curate.hashing import hex_to_uint64
from mlc_pipeline.curate.neardup import find_pairs
from mlc_pipeline.report.inspect import dataset_summary, format_dataset_summary, write_html_report

FIXTURES = FIXTURES / "hymenoptera"


def reencode(src: Path, dest: Path, scale: float = 1.0, quality: int = 70) -> None:
    with Image.open(src) as im:
        im = im.convert("RGB")
        if scale != 1.0:
            im = im.resize((int(im.width * scale), int(im.height * scale)), Image.LANCZOS)
        im.save(dest, "JPEG", quality=quality)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """ants/ and bees/ (two classes), scenery/ (other), with planted duplicates and bad files."""
    root = tmp_path_factory.mktemp("world")
    ants, bees = sorted((FIXTURES / "ants").glob("*.jpg")), sorted((FIXTURES / "bees").glob("*.jpg"))
    for name, files in (("ants", ants[:20]), ("bees", bees[:20]), ("scenery", ants[100:115])):
        (root / name).mkdir()
        for f in files:
            shutil.copy(f, root / name / f.name)
    shutil.copy(ants[0], root / "ants" / "zz_exact_copy.jpg")                 # exact, same label
    reencode(ants[1], root / "ants" / "zz_small_copy.jpg", scale=0.7)         # near, same label
    reencode(ants[2], root / "bees" / "zz_cross_class.jpg", quality=80)       # near, other class -> multi-label
    shutil.copy(bees[3], root / "scenery" / "zz_negative_copy.jpg")           # class vs other -> class wins
    data = (ants[5]).read_bytes()
    (root / "ants" / "zz_truncated.jpg").write_bytes(data[: len(data) * 6 // 10])
    Image.new("RGB", (90, 90), (200, 30, 30)).save(root / "bees" / "zz_tiny.jpg")
    Image.new("RGB", (600, 100), (30, 200, 30)).save(root / "scenery" / "zz_strip.jpg")
    return root


def make_cfg(tmp_path, world, **build):
    return parse_config(make_settings(tmp_path, world, **build))


def make_settings(tmp_path, world, **build) -> dict:
    return ({
        "data_dir": str(tmp_path / "data"),
        "source": {"kind": "local", "licenses": "any", "sizes": ["url_m", "url_n", "url_s", "url_t", "url_sq"],
                   "local": {"port": 0, "folder": str(world),
                             "query_map": {"ants": "ants", "bees": "bees", "scenery": "scenery"}}},
        "classes": {"ants": {"queries": ["ants"], "count": 100}, "bees": {"queries": ["bees"], "count": 100}},
        "other": {"queries": ["scenery"], "count": 100},
        "curate": {"min_side": 96, "max_aspect": 4.0},
        "build": {"max_side": 160, **build},
    })


@pytest.fixture(scope="module")
def curated(world, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    cfg = make_cfg(tmp, world)
    collect(cfg, progress=False)
    summary = curate(cfg)
    with Catalog(cfg.catalog_path) as c:
        by_file = {r["id"]: r for r in c.candidates()}
    return cfg, summary, by_file


def by_name(rows: dict, world: Path, name: str) -> dict:
    """Find a candidate by its file name (folder mode derives photo ids from relative paths)."""
    relative = next(world.rglob(name)).relative_to(world).as_posix()
    matches = [r for r in rows.values() if r["photo_id"] == photo_id_for(relative)]
    assert len(matches) == 1, name
    return matches[0]


def test_bad_files_are_quarantined_with_reasons(curated, world):
    cfg, summary, rows = curated
    rejected = {r["reason"] for r in rows.values() if r["status"] == "rejected"}
    assert {"truncated", "too-small", "extreme-aspect"} <= rejected, rejected
    for r in rows.values():
        if r["status"] == "rejected":
            assert "quarantine" in r["file_path"] and Path(r["file_path"]).exists()   # moved, not deleted
    assert summary.rejected["truncated"] == 1


def test_exact_near_and_cross_label_duplicates(curated, world):
    cfg, summary, rows = curated
    original0 = by_name(rows, world, sorted((FIXTURES / "ants").glob("*.jpg"))[0].name)
    exact = by_name(rows, world, "zz_exact_copy.jpg")
    assert (exact["status"], exact["duplicate_of"]) == ("duplicate", original0["id"])
    assert exact["reason"].startswith("exact-duplicate")
    small = by_name(rows, world, "zz_small_copy.jpg")
    original1 = by_name(rows, world, sorted((FIXTURES / "ants").glob("*.jpg"))[1].name)
    assert small["status"] == "duplicate" and small["duplicate_of"] == original1["id"]   # the larger one stays
    assert small["reason"].startswith("near-duplicate")
    # a near copy of an ants photo filed under bees: one image, both labels
    original2 = by_name(rows, world, sorted((FIXTURES / "ants").glob("*.jpg"))[2].name)
    cross = by_name(rows, world, "zz_cross_class.jpg")
    kept, dropped = (original2, cross) if original2["status"] == "accepted" else (cross, original2)
    assert dropped["status"] == "duplicate"
    assert kept["curated_label"] == "ants bees" and kept["reason"] == "conflict:multi-label"
    # a class image also found as "other": the class wins, it is never a negative
    bee3 = by_name(rows, world, sorted((FIXTURES / "bees").glob("*.jpg"))[3].name)
    neg = by_name(rows, world, "zz_negative_copy.jpg")
    assert bee3["status"] == "accepted" and bee3["curated_label"] == "bees"
    assert neg["status"] == "duplicate" and neg["duplicate_of"] == bee3["id"]


def test_curate_again_reuses_hashes_and_changes_nothing(curated):
    cfg, _, rows = curated
    again = curate(cfg)
    assert again.inspected == 0 and again.reused > 0
    with Catalog(cfg.catalog_path) as c:
        now = {r["id"]: (r["status"], r["reason"], r["curated_label"]) for r in c.candidates()}
    assert now == {i: (r["status"], r["reason"], r["curated_label"]) for i, r in rows.items()}


def test_build_publishes_a_complete_version(curated):
    cfg, _, rows = curated
    res = build_dataset(cfg)
    assert res.published and res.version == "v1"
    folder = res.path
    manifest = read_manifest(folder / "manifest.csv")
    assert list(manifest[0].keys()) == MANIFEST_COLUMNS
    accepted = {r["id"] for r in rows.values() if r["status"] == "accepted"}
    assert {int(m["candidate_id"]) for m in manifest} == accepted
    for m in manifest:  # the query that found it: the report breaks probe acceptance down by it
        assert m["query"] == json.loads(rows[int(m["candidate_id"])]["queries"])[0]
    for m in manifest:
        with Image.open(folder / m["path"]) as im:
            im.load()
            assert im.mode == "RGB" and max(im.size) <= 160
        assert m["split"] in ("train", "valid", "test")
        folder_label = Path(m["path"]).parent.name
        assert folder_label == ("+".join(m["labels"].split()) or "other")
    multi = [m for m in manifest if m["labels"] == "ants bees"]
    assert len(multi) == 1
    # no near-duplicate pair survives anywhere in the dataset, so none straddles the splits
    hashes = hex_to_uint64([m["phash"] for m in manifest])
    assert len(find_pairs(hashes, cfg.curate.hamming_threshold)) == 0
    attribution = (folder / "ATTRIBUTION.md").read_text()
    assert all(m["url"] in attribution for m in manifest)
    with_deed = [m for m in manifest if m["license_id"] not in ("", "0")]    # each licence linked to its deed
    assert with_deed and all(m["license_url"].startswith(("https://", "http://")) and f"]({m['license_url']})" in attribution
                             for m in with_deed)
    card = (folder / "README.md").read_text()
    assert "ants" in card and "rejected: truncated" in card
    assert (folder.parent / "latest").resolve() == folder.resolve()
    assert (folder.parent / "LATEST").read_text().strip() == "v1"


def test_rebuild_is_idempotent_and_a_killed_build_leaves_the_previous_version(curated, monkeypatch):
    cfg, _, _ = curated
    first = build_dataset(cfg)
    before = tree_digest(first.path)
    again = build_dataset(cfg)
    assert not again.published and again.version == first.version
    # change the parameters, and fail half-way through writing images
    cfg.build.max_side = 128
    calls = {"n": 0}
    real = dataset_mod.load_rgb

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] > 10:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    monkeypatch.setattr(dataset_mod, "load_rgb", dying)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(cfg)
    root = first.path.parent
    assert not (root / "v2").exists() and (root / "LATEST").read_text().strip() == first.version
    monkeypatch.setattr(dataset_mod, "load_rgb", real)
    second = build_dataset(cfg)
    assert second.published and second.version == "v2"
    assert not list(root.glob(".build-*")), "the killed build's leftovers are cleaned"
    assert tree_digest(first.path) == before, "earlier versions are never touched"
    summary = dataset_summary(cfg)
    assert summary["version"] == "v2" and summary["previous"] == "v1" and summary["diff"] == {}
    assert "Changes since v1" in format_dataset_summary(summary)


def test_inspect_shows_the_label_conflicts_of_the_version_asked(world, tmp_path):
    """`mlc inspect --version v1` showed the catalog's conflicts now ("0" once v1's conflicted photo was
    taken down), not v1's. A version keeps its own in dataset.json; an older one, without them, gets
    the catalog's now, said to be so."""
    import subprocess
    import yaml
    from helpers import ENV, MLC
    from mlc_pipeline.curate.takedown import remove_photos
    settings = make_settings(tmp_path, world)
    cfg = parse_config(settings)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(settings))
    collect(cfg, progress=False)
    curate(cfg)
    v1 = build_dataset(cfg)
    with Catalog(cfg.catalog_path) as c:
        conflicts = c.candidates("status='accepted' AND reason LIKE 'conflict:%'")
    (conflict,) = [r for r in conflicts if r["reason"] == "conflict:multi-label"]
    remove_photos(cfg, "owner asked", photo_id=conflict["photo_id"])        # the catalog has one less now
    assert build_dataset(cfg).version == "v2"

    def inspect(*args):
        res = subprocess.run([*MLC, "inspect", "-c", str(tmp_path / "cfg.yaml"), *args], env=ENV,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        return res.stdout
    shown = inspect("--version", "v1")
    assert f"Label conflicts resolved in v1: {len(conflicts)}" in shown, shown
    assert f"photo {conflict['photo_id']}: {conflict['label']} -> ants bees (conflict:multi-label)" in shown
    recorded = json.loads(inspect("--version", "v1", "--json"))["dataset"]["conflicts"]
    assert {(r["candidate_id"], r["resolution"]) for r in recorded} == {(r["id"], r["reason"]) for r in conflicts}
    assert f"Label conflicts resolved in v2: {len(conflicts) - 1}" in inspect()
    meta = json.loads((v1.path / "dataset.json").read_text())
    del meta["conflicts"]                                   # as a version built before they were recorded
    (v1.path / "dataset.json").write_text(json.dumps(meta))
    assert ("Label conflicts resolved (the catalog's now: v1 was built before versions recorded them): "
            f"{len(conflicts) - 1}" in inspect("--version", "v1"))


def test_html_report_in_a_real_browser(curated, tmp_path):
    import subprocess
    cfg, _, _ = curated
    build_dataset(cfg)
    page = write_html_report(cfg, tmp_path / "report.html")
    text = page.read_text()
    for anchor in ("thumbnails", "duplicates", "quarantine", "attribution"):
        assert f"id='{anchor}'" in text
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "scripts/test.sh installs Debian's chromium for this test"
    shot = tmp_path / "shot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chrome'}"]
    res = subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1200,2000", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert shot.exists(), res.stderr[-2000:]
    # the thumbnails rendered: the screenshot is not a blank page
    with Image.open(shot) as im:
        arr = np.asarray(im.convert("RGB")).astype(int)
    assert arr.std() > 20 and len(np.unique(arr.reshape(-1, 3)[::97], axis=0)) > 200
    dom = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.stdout.count("<img") >= 30 and "data:image/jpeg;base64" in dom.stdout


def test_curate_judges_the_bytes_on_disk_not_the_recorded_hash(tmp_path):
    """A downloaded file recorded without a sha256, or changed on disk since its download, is
    hashed from its bytes; curation neither crashes nor deduplicates it by a stale hash."""
    from mlc_pipeline.catalog import Found
    cfg = parse_config({"data_dir": str(tmp_path / "data"), "classes": {"ants": {"queries": ["ants"], "count": 5}},
                        "other": {"queries": ["x"], "count": 5}})
    cfg.data_dir.mkdir()
    photos = sorted(FIXTURES.glob("ants/*.jpg"))[:3]
    with Catalog(cfg.catalog_path) as c:
        run = c.start_run("plant")
        c.upsert_found([Found("flickr", f"p{i}", "train", "ants", "ants", f"http://h/{i}", "url_m", None, None, 4,
                              "CC BY 2.0", "o", "o", "t", None, None, "ants") for i in range(3)], run)
        for i, photo in enumerate(photos):
            dest = tmp_path / f"p{i}.jpg"
            shutil.copyfile(photo, dest)
            recorded = {0: None, 1: "f" * 64, 2: hashlib.sha256(dest.read_bytes()).hexdigest()}[i]
            c.set_status(c.get_by_photo("flickr", f"p{i}")["id"], "downloaded", None, run, "download",
                         file_path=str(dest), sha256=recorded)
    summary = curate(cfg)
    with Catalog(cfg.catalog_path) as c:
        rows = {r["photo_id"]: r for r in c.candidates()}
    assert summary.inspected == 3
    for i, photo in enumerate(photos):
        row = rows[f"p{i}"]
        assert row["status"] == "accepted" and row["sha256"] == hashlib.sha256(photo.read_bytes()).hexdigest()
        assert row["hashed_sha256"] == row["sha256"]


def test_a_stable_share_of_mined_negatives_calibrates_and_the_rest_trains():
    """mine.calibration_share: by photo, so an image keeps its split in every later version."""
    ids = [f"p{i}" for i in range(3000)]
    splits = [mined_split("flickr", pid, 1 / 3) for pid in ids]
    assert set(splits) == {"train", "valid"}
    assert 0.30 < splits.count("valid") / len(ids) < 0.37
    assert splits == [mined_split("flickr", pid, 1 / 3) for pid in ids]
    # a larger share only moves images from train to valid: none that calibrated starts training
    larger = [mined_split("flickr", pid, 0.5) for pid in ids]
    assert all(b == "valid" for a, b in zip(splits, larger) if a == "valid")
    assert {mined_split("flickr", pid, 0) for pid in ids} == {"train"}


def downloaded_noise(cfg, sizes: dict[str, tuple[int, int]]) -> None:
    """A noise picture of each size, named by its key, recorded as downloaded from flickr under raw/."""
    from mlc_pipeline.catalog import Found
    with Catalog(cfg.catalog_path) as c:
        run = c.start_run("plant")
        c.upsert_found([Found("flickr", name, "train", "cat", "cat", f"http://h/{name}", "url_m", None, None, 4,
                              "CC BY 2.0", "o", "o", "t", None, None, "cat") for name in sizes], run)
        for name, size in sizes.items():
            dest = cfg.layout.raw("flickr") / f"{name}.jpg"
            dest.parent.mkdir(parents=True, exist_ok=True)
            Image.effect_noise(size, 60).convert("RGB").save(dest)
            c.set_status(c.get_by_photo("flickr", name)["id"], "downloaded", None, run, "download", file_path=str(dest))


def test_a_change_of_limits_judges_cached_verdicts_again_both_ways(tmp_path, caplog):
    """Verdicts are cached per file *and* per limits: raising min_side / lowering max_aspect rejects
    images accepted before (from their recorded size: nothing decoded again), and undoing it brings
    the rejected ones back (re-inspected, hashed), whether rejected by record or at inspection."""

    def cfg_for(min_side, max_aspect):
        return parse_config({"data_dir": str(tmp_path / "data"), "classes": {"cat": {"queries": ["cat"], "count": 5}},
                             "other": {"queries": ["x"], "count": 5},
                             "curate": {"min_side": min_side, "max_aspect": max_aspect, "workers": 1}})

    strict, loose = cfg_for(200, 4.0), cfg_for(64, 5.0)
    sizes = {"big": (300, 300), "small": (100, 100), "wide": (900, 200)}     # wide: aspect 4.5
    downloaded_noise(strict, sizes)

    def state():
        with Catalog(strict.catalog_path, readonly=True) as c:
            return {r["photo_id"]: (r["status"], r["reason"]) for r in c.candidates()}

    first = curate(strict)
    assert first.inspected == 3
    assert state() == {"big": ("accepted", None), "small": ("rejected", "too-small"),
                       "wide": ("rejected", "extreme-aspect")}
    caplog.clear()
    caplog.set_level("INFO", logger="mlc_pipeline.curate.stage")
    relaxed = curate(loose)            # rejected at inspection, never hashed: inspected again, now in
    assert state() == {name: ("accepted", None) for name in sizes}
    # One line says how many came back, not one per image (a night of 197 lines in a user's audit).
    assert "passes now" not in caplog.text
    assert "2 rejected image(s) pass under the limits now and are judged again (were: extreme-aspect 1, too-small 1)" \
        in caplog.text, caplog.text
    assert (relaxed.inspected, relaxed.rejudged) == (2, 1)
    with Catalog(strict.catalog_path, readonly=True) as c:
        assert all(r["phash"] and r["curated_label"] == "cat" for r in c.candidates())
    tightened = curate(strict)         # judged on the recorded size alone
    assert state() == {"big": ("accepted", None), "small": ("rejected", "too-small"),
                       "wide": ("rejected", "extreme-aspect")}
    assert (tightened.inspected, tightened.rejudged) == (0, 3)
    [small] = strict.layout.quarantined("small.jpg")
    assert small.is_relative_to(strict.layout.quarantine("too-small")), small
    again = curate(strict)             # the same limits: the cache holds
    assert (again.inspected, again.rejudged) == (0, 0)
    assert curate(loose).inspected == 2 and state() == {name: ("accepted", None) for name in sizes}


def test_verdicts_from_before_limits_were_kept_are_not_judged_again(tmp_path):
    """A catalog curated before verify_limits existed has NULL there: the first curate after the
    upgrade took every row for 'the limits changed' and decoded large photos (no frame count on
    record) again in full. They count as reached under today's limits, as they were treated then."""
    cfg = parse_config({"data_dir": str(tmp_path / "data"), "classes": {"cat": {"queries": ["cat"], "count": 5}},
                        "other": {"queries": ["x"], "count": 5}, "curate": {"workers": 1, "min_side": 200}})
    sizes = {"camera": (1600, 1200), "small": (100, 100)}
    downloaded_noise(cfg, sizes)
    assert curate(cfg).inspected == 2
    with Catalog(cfg.catalog_path) as c:                  # what a catalog from before the upgrade holds
        for r in c.candidates():
            c.update_fields(r["id"], verify_limits=None, img_frames=None)
    after = curate(cfg)      # the one JPEG that passed is decoded once more, strictly (next test): no more
    assert (after.inspected, after.rejudged) == (1, 0)
    with Catalog(cfg.catalog_path, readonly=True) as c:
        assert {r["photo_id"]: (r["status"], r["reason"]) for r in c.candidates()} == {
            "camera": ("accepted", None), "small": ("rejected", "too-small")}
        assert all(r["verify_limits"] for r in c.candidates())
    again = curate(cfg)
    assert (again.inspected, again.rejudged) == (0, 0)


def test_a_jpeg_that_passed_before_strict_decoding_is_inspected_again_once(tmp_path, monkeypatch, caplog):
    """Until 2026-12-07 a JPEG cut short with an end marker appended passed (libjpeg only warns and
    fills grey; Pillow raised nothing). A catalog curated then holds it accepted: the first curate
    after the upgrade decodes the JPEGs that passed once more, strictly, and quarantines the damaged;
    a PNG is judged on its record, nothing is decoded a second time after that."""
    from mlc_pipeline.curate import jpegcheck
    cfg = parse_config({"data_dir": str(tmp_path / "data"), "classes": {"cat": {"queries": ["cat"], "count": 5}},
                        "other": {"queries": ["x"], "count": 5}, "curate": {"workers": 1}})
    downloaded_noise(cfg, {"cut": (300, 300), "whole": (300, 300), "png": (300, 300)})
    raw = cfg.layout.raw("flickr")
    good = (FIXTURES / "ants").glob("*.jpg")
    data = [p.read_bytes() for p in sorted(good)[:3]]
    (raw / "cut.jpg").write_bytes(data[0][: len(data[0]) * 6 // 10] + b"\xff\xd9")
    (raw / "whole.jpg").write_bytes(data[1])
    (raw / "png.jpg").write_bytes(data[2])
    Image.open(raw / "png.jpg").save(raw / "png.jpg", format="PNG")        # a PNG under a .jpg name
    with monkeypatch.context() as m:         # the decoding before 2026-12-07: Pillow alone decides
        m.setattr(jpegcheck, "decode_strict", lambda data, im, draft: None)
        assert curate(cfg).inspected == 3
    with Catalog(cfg.catalog_path) as c:     # as that code recorded them: limits without the strict mark
        old = c.candidates()[0]["verify_limits"].replace(', "jpeg": "strict"', "")
        assert '"jpeg"' not in old
        for r in c.candidates():
            assert r["verify_reason"] is None, r
            c.update_fields(r["id"], verify_limits=old)
        c.db.execute("UPDATE meta SET value='2' WHERE key='schema_version'")     # and its schema: 0.2.0's
    caplog.set_level("INFO", logger="mlc_pipeline.curate.stage")
    after = curate(cfg)
    assert (after.inspected, after.rejudged) == (2, 1)
    assert "2 JPEG(s) that passed before JPEGs were decoded strictly are inspected again, once" in caplog.text
    # ... and the summary says both, as `mlc curate` prints it and `mlc run` after its rounds (the log
    # line was all: it scrolled past above the progress bars, and a Prefect run's summary lacked it)
    assert after.upgrade == [
        "catalog migrated from schema 2 to 3 (the columns and tables added since mlc-pipeline 0.2.0 are part of the "
        "schema; mlc-pipeline older than 0.3.0 refuses to write to this catalog from now on (upgrade every machine "
        "that uses it))",
        "2 JPEG(s) curated before JPEGs were decoded strictly (mlc-pipeline before 0.3.0) inspected again, once: 1 "
        "rejected now as damaged (quarantined: the next build leaves them out)"], after.upgrade
    with Catalog(cfg.catalog_path, readonly=True) as c:
        got = {r["photo_id"]: (r["status"], r["reason"]) for r in c.candidates()}
        assert got["cut"] == ("rejected", "truncated") and got["whole"] == got["png"] == ("accepted", None), got
        [cut] = c.candidates(status=["rejected"])
        assert Path(cut["file_path"]).is_relative_to(cfg.layout.quarantine("truncated")), cut["file_path"]
    assert (curate(cfg).inspected, curate(cfg).rejudged, curate(cfg).upgrade) == (0, 0, [])


def test_a_file_the_os_would_not_read_is_inspected_again_and_comes_back(tmp_path):
    """read-error (the OS refused: an NFS hiccup, a permission fixed later) was a final rejection, as
    final as a truncated file: a good image lost for good. It is inspected again at every curate."""
    from mlc_pipeline.catalog import Found
    cfg = parse_config({"data_dir": str(tmp_path / "data"), "classes": {"ants": {"queries": ["ants"], "count": 5}},
                        "other": {"queries": ["x"], "count": 5}, "curate": {"workers": 1}})
    photo = sorted(FIXTURES.glob("ants/*.jpg"))[0]
    dest = cfg.layout.raw("flickr") / "p0.jpg"
    dest.mkdir(parents=True)                      # a path open() refuses: IsADirectoryError
    with Catalog(cfg.catalog_path) as c:
        run = c.start_run("plant")
        c.upsert_found([Found("flickr", "p0", "train", "ants", "ants", "http://h/0", "url_m", None, None, 4,
                              "CC BY 2.0", "o", "o", "t", None, None, "ants")], run)
        c.set_status(c.get_by_photo("flickr", "p0")["id"], "downloaded", None, run, "download", file_path=str(dest),
                     sha256="0" * 64)
    curate(cfg)
    with Catalog(cfg.catalog_path, readonly=True) as c:
        row = c.get_by_photo("flickr", "p0")
    assert (row["status"], row["reason"]) == ("rejected", "read-error:IsADirectoryError")
    Path(row["file_path"]).rmdir()                # the fault passes: the file reads now
    shutil.copyfile(photo, row["file_path"])
    assert curate(cfg).accepted == 1


def test_a_curate_stopped_after_a_quarantine_move_finds_the_file_there_next_time(tmp_path, monkeypatch):
    """Files move inside curate's transaction: stopped after a move, the row rolls back to its raw/
    path while the file sits in the quarantine. The next curate marked it for download again and left
    the quarantined copy unnamed; it finds it there now (same name, same bytes) and judges it."""
    from mlc_pipeline.catalog import Found
    from mlc_pipeline.curate import stage
    cfg = parse_config({"data_dir": str(tmp_path / "data"), "classes": {"ants": {"queries": ["ants"], "count": 5}},
                        "other": {"queries": ["x"], "count": 5}, "curate": {"workers": 1}})
    photo = sorted(FIXTURES.glob("ants/*.jpg"))[0]
    dest = cfg.layout.raw("flickr") / "p0.jpg"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(photo.read_bytes()[:3000])                   # truncated: it goes to the quarantine
    with Catalog(cfg.catalog_path) as c:
        run = c.start_run("plant")
        c.upsert_found([Found("flickr", "p0", "train", "ants", "ants", "http://h/0", "url_m", None, None, 4,
                              "CC BY 2.0", "o", "o", "t", None, None, "ants")], run)
        c.set_status(c.get_by_photo("flickr", "p0")["id"], "downloaded", None, run, "download", file_path=str(dest),
                     sha256=sha256_file(dest))
    real = stage.quarantine

    def moved_then_stopped(*args):
        real(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(stage, "quarantine", moved_then_stopped)
    with pytest.raises(KeyboardInterrupt):
        curate(cfg)
    monkeypatch.setattr(stage, "quarantine", real)
    with Catalog(cfg.catalog_path, readonly=True) as c:
        assert c.get_by_photo("flickr", "p0")["status"] == "downloaded" and not dest.exists()   # rolled back
    curate(cfg)
    with Catalog(cfg.catalog_path, readonly=True) as c:
        row = c.get_by_photo("flickr", "p0")
    assert (row["status"], row["reason"]) == ("rejected", "truncated") and Path(row["file_path"]).is_file()
    assert Path(row["file_path"]).is_relative_to(cfg.layout.quarantine("truncated"))


def downloaded_ants(cfg, n: int) -> None:
    """n real ant photos, p0..p<n-1>, recorded as downloaded from flickr under raw/."""
    from mlc_pipeline.catalog import Found
    photos = sorted(FIXTURES.glob("ants/*.jpg"))[:n]
    with Catalog(cfg.catalog_path) as c:
        run = c.start_run("plant")
        c.upsert_found([Found("flickr", f"p{i}", "train", "ants", "ants", f"http://h/{i}", "url_m", None, None, 4,
                              "CC BY 2.0", "o", "o", "t", None, None, "ants") for i in range(len(photos))], run)
        for i, photo in enumerate(photos):
            dest = cfg.layout.raw("flickr") / f"p{i}.jpg"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(photo, dest)
            c.set_status(c.get_by_photo("flickr", f"p{i}")["id"], "downloaded", None, run, "download",
                         file_path=str(dest))


def test_build_leaves_out_a_missing_or_damaged_file_and_records_why(tmp_path):
    """An accepted image whose file is gone, or no longer decodes, does not end the build: it is left
    out, recorded in the catalog the way curate records a missing file (the next collect downloads it
    again), and counted in the build's result; the other images are published."""
    cfg = parse_config({"data_dir": str(tmp_path / "data"), "classes": {"ants": {"queries": ["ants"], "count": 5}},
                        "other": {"queries": ["x"], "count": 5}})
    downloaded_ants(cfg, 4)
    assert curate(cfg).accepted == 4
    raw = cfg.layout.raw("flickr")
    (raw / "p0.jpg").unlink()                                           # gone
    data = (raw / "p1.jpg").read_bytes()
    (raw / "p1.jpg").write_bytes(data[: len(data) // 2])                # damaged since curation
    res = build_dataset(cfg)
    assert res.published and res.skipped == {"file-missing": 1, "file-unreadable": 1}
    assert sorted(r["photo_id"] for r in read_manifest(res.path / "manifest.csv")) == ["p2", "p3"]
    with Catalog(cfg.catalog_path) as c:
        got = {r["photo_id"]: (r["status"], r["reason"]) for r in c.candidates()}
        events = c.events(c.get_by_photo("flickr", "p0")["id"])
    assert got["p0"] == ("failed", "transient:file-missing")
    assert got["p1"] == ("failed", "transient:file-unreadable:OSError")
    assert events[-1]["stage"] == "build"
    again = build_dataset(cfg)                  # the catalog no longer offers them: nothing to skip
    assert not again.published and again.version == res.version and again.skipped == {}


def test_on_an_object_store_root_a_file_not_in_the_cache_is_left_out_but_not_failed(tmp_path):
    """The cache holds what has been published: another machine's accepted but unpublished file is
    missing here and fine there. The build leaves it out; the shared catalog is not told it failed."""
    (tmp_path / "store").mkdir()
    cfg = parse_config({"data_dir": f"file://{tmp_path}/store", "cache_dir": str(tmp_path / "cache"),
                        "storage_options": {"auto_mkdir": True},
                        "classes": {"ants": {"queries": ["ants"], "count": 5}}, "other": {"queries": ["x"], "count": 5}})
    downloaded_ants(cfg, 3)
    assert curate(cfg).accepted == 3
    (cfg.layout.raw("flickr") / "p0.jpg").unlink()          # accepted elsewhere, not published yet
    res = build_dataset(cfg)
    assert res.published and res.skipped == {"file-missing": 1}
    with Catalog(cfg.catalog_path) as c:
        assert c.get_by_photo("flickr", "p0")["status"] == "accepted"


def test_a_class_taken_out_of_the_config_leaves_the_next_version_and_training_says_so(tmp_path):
    """A user's audit: with a class removed from the config, the build said 'unchanged' (it published
    every accepted label), and every later night's training crashed with a traceback (ValueError:
    manifest labels ['sailboat'] are not among the given classes). Now the next version leaves that
    class's images out (a photo of two classes keeps the other), says so, and training refuses an
    older version holding it in one line."""
    from mlc_pipeline.catalog import Found
    from mlc_pipeline.config import ConfigError
    from mlc_pipeline.model.stage import check_every_class_trains

    def cfg_for(classes):
        return parse_config({"data_dir": str(tmp_path / "data"), "other": {"queries": ["x"], "count": 5},
                             "classes": {c: {"queries": [c], "count": 20} for c in classes}, "curate": {"workers": 1}})

    both, ants_only = cfg_for(["ants", "bees"]), cfg_for(["ants"])
    photos = sorted(FIXTURES.glob("ants/*.jpg"))[:16] + sorted(FIXTURES.glob("bees/*.jpg"))[:8]
    labels = ["ants"] * 16 + ["bees"] * 8
    with Catalog(both.catalog_path) as c:
        run = c.start_run("plant")
        found = [Found("flickr", f"p{i}", "train", label, label, f"http://h/{i}", "url_m", None, None, 4,
                       "CC BY 2.0", "o", "o", "t", None, None, "") for i, label in enumerate(labels)]
        found.append(Found("flickr", "p0", "train", "bees", "bees", "http://h/0", "url_m", None, None, 4,
                           "CC BY 2.0", "o", "o", "t", None, None, ""))     # p0: found by both classes
        c.upsert_found(found, run)
        for i, photo in enumerate(photos):
            dest = both.layout.raw("flickr") / f"p{i}.jpg"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(photo, dest)
            c.set_status(c.get_by_photo("flickr", f"p{i}")["id"], "downloaded", None, run, "download", file_path=str(dest))
    curate(both)
    v1 = build_dataset(both)
    v1_rows = read_manifest(v1.path / "manifest.csv")
    assert {r["labels"] for r in v1_rows} == {"ants", "bees", "ants bees"}

    with pytest.raises(ConfigError) as refused:
        check_every_class_trains(ants_only, v1.version, v1_rows)
    assert "bees, not a class of the config" in str(refused.value) and "\n" not in str(refused.value)
    v2 = build_dataset(ants_only)
    assert v2.published and v2.version != v1.version
    assert v2.left_out == {"bees": 8}
    v2_rows = read_manifest(v2.path / "manifest.csv")
    assert {r["labels"] for r in v2_rows} == {"ants"} and len(v2_rows) == 16     # p0 kept, as ants
    assert {r["labels"] for r in read_manifest(build_dataset(both).path / "manifest.csv")} == {"ants", "bees", "ants bees"}
