"""`mlc inspect --html`, the report the README recommends, on a data root planted with real photos:
every image of a label is on the page, rejections are rejections, a very long owner name stays in
its column, and the page has a model section once there is a model."""

import json
import re
import shutil
import subprocess

import pytest

from helpers import ENV, FIXTURES, MLC

from mlc_pipeline.catalog import Catalog, Found
from mlc_pipeline.config import parse_config
from mlc_pipeline.curate.stage import curate
from mlc_pipeline.dataset.build import build_dataset
from mlc_pipeline.report.inspect import GRID_LIMIT, write_html_report

LONG_OWNER = "Ow" * 150          # 300 characters
N_ANTS = GRID_LIMIT + 12


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A catalog of downloaded photos (more ants than a grid shows, a few bees and scenery, an ant
    photo also found as a bee, a truncated file), curated and built into v1."""
    tmp = tmp_path_factory.mktemp("planted")
    (tmp / "config.yaml").write_text(json.dumps({
        "data_dir": str(tmp / "data"),
        "classes": {"ants": {"queries": ["ants"], "count": 100}, "bees": {"queries": ["bees"], "count": 100}},
        "other": {"queries": ["scenery"], "count": 100}, "curate": {"min_side": 96}, "build": {"max_side": 96}}))
    cfg = parse_config(json.loads((tmp / "config.yaml").read_text()))
    cfg.data_dir.mkdir()
    ants, bees = sorted((FIXTURES / "hymenoptera" / "ants").glob("*.jpg")), sorted((FIXTURES / "hymenoptera" / "bees").glob("*.jpg"))
    plan = ([("ants", f) for f in ants[:N_ANTS]] + [("bees", f) for f in bees[:8]]
            + [("other", f) for f in ants[150:156]] + [("bees", ants[0])])     # an ant also found as a bee
    raw = tmp / "raw"
    raw.mkdir()
    with Catalog(cfg.catalog_path) as c:
        run = c.start_run("plant")
        for i, (label, src) in enumerate(plan):
            purpose, query = ("train", label) if label != "other" else ("train", "scenery")
            owner = LONG_OWNER if i == 3 else f"owner {i}"
            c.upsert_found([Found("flickr", f"p{i}", purpose, label, query, f"http://h/{i}", "url_m", None, None, 4,
                                  "CC BY 2.0", f"o{i}", owner, f"title {i}", None, None, query)], run)
            dest = raw / f"p{i}.jpg"
            shutil.copyfile(src, dest)
            c.set_status(c.get_by_photo("flickr", f"p{i}")["id"], "downloaded", None, run, "download", file_path=str(dest))
        data = bees[9].read_bytes()          # one truncated download: quarantined by curate
        (raw / "bad.jpg").write_bytes(data[: len(data) // 2])
        c.upsert_found([Found("flickr", "bad", "train", "bees", "bees", "http://h/bad", "url_m", None, None, 4,
                              "CC BY 2.0", "ob", "ob", "t", None, None, "bees")], run)
        c.set_status(c.get_by_photo("flickr", "bad")["id"], "downloaded", None, run, "download", file_path=str(raw / "bad.jpg"))
    curate(cfg)
    build_dataset(cfg)
    return tmp / "config.yaml", cfg


def section(page: str, anchor: str) -> str:
    """The HTML from the element with id `anchor` to the next <h2>."""
    start = page.index(f"id='{anchor}'")
    end = page.find("<h2", start)
    return page[start:end if end > 0 else None]


def test_every_image_of_a_label_is_on_the_page_the_rest_folded(planted, tmp_path):
    _, cfg = planted
    page = write_html_report(cfg, tmp_path / "r.html").read_text()
    grids = section(page, "thumbnails")
    ants = grids[grids.index(">ants <"):grids.index("<h3", grids.index(">ants <") + 1)]
    assert ants.count("<figure>") == N_ANTS - 1            # p0 went to "ants bees", the multi-label group
    assert ants.count("<details>") == 1 and f"the other {N_ANTS - 1 - GRID_LIMIT} images of ants" in ants
    assert ants.count("data:image/jpeg;base64") == N_ANTS - 1


def test_rejections_hold_no_accepted_rows(planted, tmp_path):
    _, cfg = planted
    page = write_html_report(cfg, tmp_path / "r.html").read_text()
    rejections = page[page.index("id='rejections'"):page.index("id='accepted-notes'")]
    assert "truncated" in rejections
    assert not re.search(r"<td>accepted</td>", rejections)
    notes = section(page, "rejections")[section(page, "rejections").index("id='accepted-notes'"):]
    assert "conflict:multi-label" in notes                     # the ant found as a bee: kept, with a note


def test_a_300_character_owner_stays_in_its_column(planted, tmp_path):
    _, cfg = planted
    page = write_html_report(cfg, tmp_path / "r.html").read_text()
    assert f"<td class='clip' title='{LONG_OWNER}'>{LONG_OWNER}</td>" in section(page, "attribution")
    assert re.search(r"td\.clip\{max-width:[^}]*text-overflow:ellipsis;white-space:nowrap", page)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "scripts/test.sh installs Debian's chromium"
    # the rendered page is no wider than the window: nothing pushed off screen
    probe = tmp_path / "width.html"
    probe.write_text(page.replace("</body>", "<script>document.title='W'+document.documentElement.scrollWidth"
                                             "</script></body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--window-size=1200,900",
             f"--user-data-dir={tmp_path / 'chrome'}"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    width = int(re.search(r"<title>W(\d+)</title>", dom.stdout).group(1))
    assert width <= 1200, width


def test_inspect_html_has_a_model_section_or_says_there_is_none(planted, tmp_path, trained_shapes_bundle):
    config, cfg = planted
    run = lambda: subprocess.run(MLC + ["inspect", "-c", str(config), "--html", str(tmp_path / "r.html")],
                                 env=ENV, text=True, capture_output=True, timeout=300)
    res = run()
    assert res.returncode == 0, res.stderr[-2000:]
    assert "No model yet" in section((tmp_path / "r.html").read_text(), "model")
    _, bundle = trained_shapes_bundle
    models = cfg.layout.models
    models.mkdir(parents=True, exist_ok=True)
    shutil.copytree(bundle, models / "shapes-model")
    (models / "LATEST").write_text("shapes-model\n")
    res = run()
    assert res.returncode == 0, res.stderr[-2000:]
    model = section((tmp_path / "r.html").read_text(), "model")
    for anchor in ("thresholds", "confusion", "top-losses", "unknowns-accepted"):
        assert f"id='{anchor}'" in model
    assert "shapes-model" in model and "Per-class metrics" in model


def test_duplicate_groups_show_the_review_decisions_over_curations(tmp_path):
    """A reviewer rejected the copy curation kept and put a dropped copy back: the group's captions
    must say so, not "kept" for an image no version holds (note-stop58)."""
    from mlc_pipeline.catalog import overrides
    cfg = parse_config({"data_dir": str(tmp_path / "data"), "classes": {"ants": {"queries": ["ants"], "count": 10}},
                        "other": {"queries": ["scenery"], "count": 10}, "curate": {"min_side": 96}})
    cfg.data_dir.mkdir()
    src = sorted((FIXTURES / "hymenoptera" / "ants").glob("*.jpg"))
    raw = tmp_path / "raw"
    raw.mkdir()
    from PIL import Image
    Image.open(src[0]).save(tmp_path / "reencoded.jpg", quality=60)
    plan = [("k", src[0]), ("c1", tmp_path / "reencoded.jpg"), ("c2", src[0]), ("x", src[1])]   # one photo 3 times
    with Catalog(cfg.catalog_path) as c:
        run = c.start_run("plant")
        for pid, f in plan:
            c.upsert_found([Found("flickr", pid, "train", "ants", "ants", f"http://h/{pid}", "url_m", None, None, 4,
                                  "CC BY 2.0", "o", "owner", "t", None, None, "ants")], run)
            shutil.copyfile(f, raw / f"{pid}.jpg")
            c.set_status(c.get_by_photo("flickr", pid)["id"], "downloaded", None, run, "download",
                         file_path=str(raw / f"{pid}.jpg"))
    curate(cfg)
    with Catalog(cfg.catalog_path) as c:
        dups = c.candidates(status="duplicate")
        assert len(dups) == 2
        kept = c.get(dups[0]["duplicate_of"])
        before = write_html_report(cfg, tmp_path / "before.html").read_text()
        assert f"kept {kept['photo_id']} " in section(before, "duplicates")
        overrides.ensure_schema(c)
        overrides.act(c, kept["id"], "reject", "blurry", "t", ["ants"])
        near = next(d for d in dups if d["photo_id"] == "c1")       # a byte copy cannot be put back
        overrides.act(c, near["id"], "restore", "another angle", "t", ["ants"])
    groups = section(write_html_report(cfg, tmp_path / "after.html").read_text(), "duplicates")
    assert f"rejected in review {kept['photo_id']} " in groups and "kept " not in groups
    assert groups.count(", put back in review</figcaption>") == 1


@pytest.fixture(scope="module")
def pair_and_held_copy(tmp_path_factory):
    """A folder-mode world published as v1: twenty ants, four bees, scenery, and a 10 %/side crop of an ant
    filed under scenery (curate keeps both: a review pair, their labels differ). Then a mirror image of
    a v1 test ant is collected (dropped as its copy), and that ant is taken down: the mirror is held.
    (cfg, config path, the ant of the pair, its crop, the test ant, its mirror), rows as after curate."""
    import yaml
    from PIL import Image, ImageOps

    from mlc_pipeline.collect.stage import collect
    from mlc_pipeline.flickr_server.folder import photo_id_for
    from mlc_pipeline.manifest import read_manifest
    tmp = tmp_path_factory.mktemp("pairs")
    ants = sorted((FIXTURES / "hymenoptera" / "ants").glob("*.jpg"))
    world = tmp / "photos"
    for name, files in (("ants", ants[:20]), ("bees", sorted((FIXTURES / "hymenoptera" / "bees").glob("*.jpg"))[:4]),
                        ("scenery", ants[100:104])):
        (world / name).mkdir(parents=True)
        for f in files:
            shutil.copy(f, world / name / f.name)
    pair = "ants/1030023514_aad5c608f9.jpg"       # its crop scores 0.95: confirmed, but kept (labels differ)
    with Image.open(world / pair) as im:
        w, h = im.size
        im.convert("RGB").crop((w // 10, h // 10, w - w // 10, h - h // 10)).save(world / "scenery" / "crop.jpg",
                                                                                quality=85)
    raw = {"data_dir": str(tmp / "data"),
           "source": {"kind": "local", "licenses": "any", "sizes": ["url_m", "url_n", "url_s"],
                      "local": {"port": 0, "folder": str(world),
                                "query_map": {"ants": "ants", "bees": "bees", "scenery": "scenery"}}},
           "classes": {"ants": {"queries": ["ants"], "count": 50}, "bees": {"queries": ["bees"], "count": 50}},
           "other": {"queries": ["scenery"], "count": 50}, "build": {"max_side": 96}}
    (tmp / "config.yaml").write_text(yaml.safe_dump(raw))
    cfg = parse_config(raw)
    collect(cfg, progress=False)
    curate(cfg)
    manifest = read_manifest(build_dataset(cfg).path / "manifest.csv")
    by_id = {photo_id_for(f"ants/{f.name}"): f"ants/{f.name}" for f in ants[:20]}
    test_ant = next(by_id[r["photo_id"]] for r in manifest if r["split"] == "test" and r["photo_id"] in by_id
                    and by_id[r["photo_id"]] != pair)
    with Image.open(world / test_ant) as im:
        ImageOps.mirror(im.convert("RGB")).save(world / "ants" / "zz_mirror.jpg", quality=90)
    collect(cfg, progress=False)
    curate(cfg)
    with Catalog(cfg.catalog_path) as c:
        rows = [c.get_by_photo("local", photo_id_for(f)) for f in (pair, "scenery/crop.jpg", test_ant, "ants/zz_mirror.jpg")]
    return (cfg, tmp / "config.yaml", *rows)


def test_a_review_pair_names_both_files_and_classes(pair_and_held_copy, tmp_path):
    # The curation29 audit (finding 7): the note read `review:label-conflict:with=133:d=2:s=0.96 = 1`,
    # a candidate id that nothing but SQL maps to a file.
    cfg, config, ant, crop, _, _ = pair_and_held_copy
    assert ant["status"] == crop["status"] == "accepted"
    assert ant["reason"].startswith(f"review:label-conflict:with={crop['id']}:d=") and crop["reason"].startswith(
        f"review:label-conflict:with={ant['id']}:d="), (ant, crop)
    text = subprocess.run(MLC + ["inspect", "-c", str(config)], env=ENV, text=True, capture_output=True,
                          timeout=300).stdout
    for me, other in ((ant, crop), (crop, ant)):
        note = f"accepted: {me['reason']} = 1: {me['source_file']} ({me['curated_label']}) with " \
               f"{other['source_file']} ({other['curated_label']})"
        assert note in text, text
    assert "ants/1030023514_aad5c608f9.jpg (ants) with scenery/crop.jpg (other)" in text
    notes = section(write_html_report(cfg, tmp_path / "r.html").read_text(), "rejections")
    assert "<td>scenery/crop.jpg (other) with ants/1030023514_aad5c608f9.jpg (ants)</td>" in notes, notes


def test_a_copy_whose_kept_image_was_taken_down_says_so_and_that_it_is_held(pair_and_held_copy, tmp_path):
    # The curation29 audit (finding 7): a mirror of a published test image, dropped as its copy, whose
    # kept image was then taken down, showed as a group with no kept image, and nothing said that the
    # mirror is held for that takedown.
    from mlc_pipeline.curate.takedown import remove_photos
    cfg, _, _, _, test_ant, mirrored = pair_and_held_copy
    assert mirrored["status"] == "duplicate" and mirrored["duplicate_of"] == test_ant["id"], mirrored
    assert mirrored["reason"].startswith("mirror-duplicate-of-test:v1:"), mirrored
    assert mirrored in remove_photos(cfg, "owner request", photo_id=test_ant["photo_id"]).held
    taken = f"local:{test_ant['photo_id']}"
    held = f"<figcaption>ants/zz_mirror.jpg: {mirrored['reason']}, held for the takedown of {taken}</figcaption>"
    groups = section(write_html_report(cfg, tmp_path / "now.html").read_text(), "duplicates")
    assert held in groups, groups
    assert f"<figcaption>kept {taken} ({test_ant['source_file']}), taken down since: owner request</figcaption>" \
           in groups, groups
    curate(cfg)             # the kept image is no longer in the catalog's decisions: no duplicate_of
    with Catalog(cfg.catalog_path) as c:
        assert c.get(mirrored["id"])["duplicate_of"] is None and c.get(mirrored["id"])["status"] == "duplicate"
    groups = section(write_html_report(cfg, tmp_path / "after.html").read_text(), "duplicates")
    assert held in groups and "<figcaption>kept: a test image of v1, no longer in the catalog" in groups, groups
