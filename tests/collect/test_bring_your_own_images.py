"""Bring your own images (folder mode) end to end: every published sample traces back to its
original file, restricted licences are warned about and stated on the card, and a size setting
that fits none of the photos fails loudly (issue 17). Real photos, real HTTP, real `mlc` runs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

import pytest
import yaml
from PIL import Image

from camera_files import camera_folder
from helpers import ENV, MEASURED, MLC
from storage_world import make_world, write_config

from mlc_pipeline.catalog import Catalog
from mlc_pipeline.collect.stage import collect
from mlc_pipeline.config import RESTRICTED_LICENSES, load_config
from mlc_pipeline.curate.stage import curate
from mlc_pipeline.dataset.build import build_dataset
from mlc_pipeline.manifest import read_manifest


def mlc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*MLC, *args], env=ENV, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A folder world whose 'bees' subfolder is a link to a folder elsewhere, collected with
    `licenses: any`, curated and published; (world folder, config path, version folder)."""
    tmp = tmp_path_factory.mktemp("byo")
    world = make_world(tmp / "world", per_class=6)
    shutil.move(world / "bees", tmp / "elsewhere")
    os.symlink(tmp / "elsewhere", world / "bees")
    cfg_path = write_config(tmp / "cfg.yaml", tmp / "data", world)
    cfg = load_config(cfg_path)
    collect(cfg, progress=False)
    curate(cfg)
    return world, cfg_path, build_dataset(cfg).path


def test_every_published_sample_names_its_original_file(published):
    world, _, version = published
    rows = read_manifest(version / "manifest.csv")
    assert {r["source_file"].split("/")[0] for r in rows} == {"ants", "bees", "scenery"}   # bees: via the link
    for r in rows:
        original = world / r["source_file"]
        assert original.is_file(), r["source_file"]
        assert hashlib.sha256(original.read_bytes()).hexdigest() == r["sha256"]   # served byte for byte


def test_restricted_licences_are_on_the_card(published):
    _, _, version = published
    rows = read_manifest(version / "manifest.csv")
    restricted = [r for r in rows if int(r["license_id"]) in RESTRICTED_LICENSES]
    assert restricted, "the folder world gives some photos a restricted licence"
    card = (version / "README.md").read_text()
    assert "## Licences that restrict use" in card and "`source.licenses: any`" in card
    for name in {r["license"] for r in restricted}:
        assert f"{name} ({sum(r['license'] == name for r in restricted)})" in card


def test_open_licences_only_leave_the_card_quiet(published, tmp_path):
    _, cfg_path, _ = published
    data = yaml.safe_load(cfg_path.read_text())
    data["source"]["licenses"] = [4, 5, 9, 10, 11]
    data["data_dir"] = str(tmp_path / "data")
    (tmp_path / "open.yaml").write_text(yaml.safe_dump(data))
    res = mlc("collect", "-c", str(tmp_path / "open.yaml"), "--no-progress")
    assert res.returncode == 0 and "restrict use" not in res.stderr, res.stderr[-2000:]
    res = mlc("collect", "-c", str(cfg_path), "--no-progress")     # licenses: any
    assert res.returncode == 0 and "source.licenses (any) lets in licences that restrict use" in res.stderr


def test_photos_too_small_for_every_size_fail_the_run(published, tmp_path):
    world, cfg_path, _ = published
    data = yaml.safe_load(cfg_path.read_text())
    data["data_dir"] = str(tmp_path / "data")
    data["source"]["sizes"] = ["url_c"]                        # 800 px; the fixture photos are 400 px
    (tmp_path / "big.yaml").write_text(yaml.safe_dump(data))
    res = mlc("collect", "-c", str(tmp_path / "big.yaml"), "--no-progress")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert lines[-1].startswith("mlc: all 20 photos found were skipped") and "source.sizes (url_c)" in lines[-1]


def test_some_photos_too_small_is_a_warning_with_counts(published, tmp_path):
    world, cfg_path, _ = published
    mixed = tmp_path / "world"
    shutil.copytree(world, mixed, symlinks=False)
    first = sorted((mixed / "ants").glob("*.jpg"))[0]
    with Image.open(first) as im:
        im.resize((im.width * 2 + 40, im.height * 2 + 40)).save(first, quality=90)   # now over 800 px
    data = yaml.safe_load(cfg_path.read_text())
    data["data_dir"] = str(tmp_path / "data")
    data["source"]["sizes"] = ["url_c"]
    data["source"]["local"]["folder"] = str(mixed)
    (tmp_path / "mixed.yaml").write_text(yaml.safe_dump(data))
    res = mlc("collect", "-c", str(tmp_path / "mixed.yaml"), "--no-progress")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "19 of 20 photos found were skipped: offered in none of source.sizes (url_c)" in res.stderr
    assert '"downloaded": 1' in res.stdout


def test_unmapped_queries_are_warned_about(published, tmp_path):
    _, cfg_path, _ = published
    data = yaml.safe_load(cfg_path.read_text())
    data["data_dir"] = str(tmp_path / "data")
    data["probe"] = {"queries": ["wasps"], "count": 5}
    (tmp_path / "probe.yaml").write_text(yaml.safe_dump(data))
    res = mlc("collect", "-c", str(tmp_path / "probe.yaml"), "--no-progress")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "folder mode: 1 query has no subfolder in source.local.query_map and will find nothing: 'wasps'" \
        in res.stderr


def test_a_file_over_max_image_bytes_is_named_and_never_read_whole(tmp_path):
    """The security26 audit: the bundled server read each file whole to serve it, so a 2 GB `.jpg`
    (a real JPEG's header, then sparse zeros) made folder-mode collect peak at 2.1 GB of memory before
    the download failed `too-large`. Such a file is now named when the folder is scanned, with why,
    as a file that is no image is, and never read."""
    world = make_world(tmp_path / "world", per_class=3)
    huge = world / "bees" / "huge.jpg"
    shutil.copy(sorted((world / "bees").glob("*.jpg"))[0], huge)
    os.truncate(huge, 2 * 1024**3)                   # sparse: no disk used, 2 GiB to read
    cfg_path = write_config(tmp_path / "cfg.yaml", tmp_path / "data", world)
    res = subprocess.run(MEASURED + ["collect", "-c", str(cfg_path), "--no-progress"], env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    peak_mb = int(res.stderr.split("PEAK_KB")[-1]) / 1024
    assert peak_mb < 400, f"collect peaked at {peak_mb:.0f} MB serving a 2 GiB file"
    why = "too large: 2147483648 bytes, over source.max_image_bytes 20000000"
    assert f"skipping {huge}, {why}" in res.stderr
    assert json.loads(res.stdout)["unreadable"] == {"count": 1, "files": [f"bees/huge.jpg ({why})"]}
    shown = mlc("inspect", "-c", str(cfg_path))
    assert shown.returncode == 0 and f"  bees/huge.jpg ({why})" in shown.stdout, shown.stdout[-2000:]


def test_camera_files_are_collected_or_named_and_a_bomb_never_stops_the_run(tmp_path):
    """The realfiles27 audit: one 196 MP PNG (25 KB) in the folder stopped `mlc collect` with Pillow's
    traceback naming no file, and nothing was collected (#2); TIFF, JFIF and files without an extension
    were left out without a word, HEIC too (#6); a WebP was recorded as image/jpeg (#10). Now the bomb
    and the HEIC/SVG files are named in the summary with why, and the rest is collected as its type."""
    world = make_world(tmp_path / "world", per_class=3)
    served = camera_folder(tmp_path / "camera")
    for path in (tmp_path / "camera" / "ants").iterdir():
        shutil.copy(path, world / "ants" / path.name)
    cfg_path = write_config(tmp_path / "cfg.yaml", tmp_path / "data", world,
                            source={"sizes": ["url_m", "url_n", "url_s", "url_q", "url_t", "url_sq"]})
    res = mlc("collect", "-c", str(cfg_path), "--no-progress")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert "DecompressionBombWarning" not in res.stderr and "DOS attack" not in res.stderr, res.stderr[-3000:]
    unreadable = json.loads(res.stdout)["unreadable"]
    size = (world / "ants" / "pano.png").stat().st_size
    assert unreadable == {"count": 4, "files": [
        "ants/IMG_0002.HEIC (unsupported format (HEIC): not served)",
        "ants/IMG_0003.jpg (unsupported format (HEIF, brand heic): not served)",
        "ants/drawing.svg (unsupported format (SVG): not served)",
        f"ants/pano.png (too large to open (decompression-bomb): 196 MP in {size} bytes, over the 179 MP Pillow opens)"]}
    assert "folder mode: 3 file(s) left out, in a format not served here (HEIC 1, HEIF, brand heic 1, SVG 1)" in res.stderr
    with Catalog(load_config(cfg_path).catalog_path, readonly=True) as catalog:
        got = {r["source_file"]: r["content_type"] for r in catalog.candidates() if r["status"] == "downloaded"}
    assert {f: t for f, t in got.items() if f in served} == served
