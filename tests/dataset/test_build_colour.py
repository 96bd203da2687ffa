"""What the build writes of a photo's colours (the realfiles27 audit, findings 1 and 3).

- A photo with an embedded Adobe RGB or Display P3 profile is published in sRGB (the copy holds no
  profile, so every reader takes its numbers as sRGB): its copy matches the sRGB photo's copy, where
  it held the raw wide-gamut numbers, a washed-out picture. An sRGB photo and its Adobe RGB twin are
  near duplicates; the one kept (the Adobe RGB file: more bytes, `dedup._rank` rule 4) is now the
  same picture. A profile that cannot be applied leaves the photo in, read as before, and says why.
- `build.jpeg_subsampling` reaches the files; its default (4:2:0) counts in no fingerprint, so a
  version built before it existed is not rebuilt.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil

import numpy as np
import pytest
from PIL import Image, ImageCms, JpegImagePlugin

import iccprofiles as icc
from helpers import FIXTURES
from mlc_pipeline.catalog import Catalog
from mlc_pipeline.collect.stage import collect
from mlc_pipeline.config import parse_config
from mlc_pipeline.curate.stage import curate
from mlc_pipeline.dataset.build import build_dataset
from mlc_pipeline.dataset.verify import verify_version
from mlc_pipeline.images import load_rgb
from mlc_pipeline.manifest import read_manifest

pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason="fixture photos missing (../shared/fixtures)")
SAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}      # JpegImagePlugin.get_sampling's numbers


def in_profile(src, dest, profile: bytes) -> None:
    "The photo `src` saved as a camera saves it in `profile`'s space, the profile embedded."
    im = Image.open(src).convert("RGB")
    if profile.startswith(b"not a profile"):
        im.save(dest, quality=92, icc_profile=profile)
        return
    wide = ImageCms.ImageCmsProfile(io.BytesIO(profile))
    ImageCms.applyTransform(im, ImageCms.buildTransform(ImageCms.createProfile("sRGB"), wide, "RGB", "RGB")).save(
        dest, quality=92, icc_profile=profile)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A folder of real photos, four of the bees in a wide-gamut space or with a broken profile, collected
    and curated; returns (settings, {source file: the sRGB photo it shows})."""
    root = tmp_path_factory.mktemp("colour")
    photos = root / "photos"
    bees, ants = (sorted((FIXTURES / "hymenoptera" / kind).glob("*.jpg")) for kind in ("bees", "ants"))
    shows = {}
    for name, files in (("bees", bees[:8]), ("ants", ants[:8]), ("scenery", ants[100:104])):
        (photos / name).mkdir(parents=True)
        for f in files:
            shutil.copy(f, photos / name / f.name)
            shows[f"{name}/{f.name}"] = f
    for stem, src, profile in (("twin_adobe", bees[0], icc.ADOBE_RGB), ("adobe", bees[8], icc.ADOBE_RGB),
                               ("p3", bees[9], icc.DISPLAY_P3), ("broken", bees[10], b"not a profile" * 20)):
        in_profile(src, photos / "bees" / f"{stem}.jpg", profile)
        shows[f"bees/{stem}.jpg"] = src
    raw = {"data_dir": str(root / "data"),
           "source": {"kind": "local", "licenses": "any", "sizes": ["url_m", "url_n", "url_s"],
                      "local": {"port": 0, "folder": str(photos), "query_map": {q: q for q in ("bees", "ants", "scenery")}}},
           "classes": {"bees": {"queries": ["bees"], "count": 12}, "ants": {"queries": ["ants"], "count": 8}},
           "other": {"queries": ["scenery"], "count": 4}}
    cfg = parse_config(raw)
    collect(cfg, progress=False)
    curate(cfg)
    return raw, shows


def as_built(path) -> np.ndarray:
    "The pixels of the copy the build makes of an sRGB photo (256 px, q90)."
    buf = io.BytesIO()
    load_rgb(path, max_side=256).save(buf, "JPEG", quality=90)
    return np.asarray(Image.open(buf), float)


def built(raw: dict, **build) -> tuple:
    result = build_dataset(parse_config({**raw, "build": build}))
    return result, {r["source_file"]: r for r in read_manifest(result.path / "manifest.csv")}


def test_a_wide_gamut_photo_is_published_in_srgb(world, caplog):
    raw, shows = world
    with caplog.at_level(logging.WARNING, logger="mlc_pipeline.images"):
        result, rows = built(raw, name="colour")
    assert result.published
    kept = {"bees/twin_adobe.jpg", f"bees/{shows['bees/twin_adobe.jpg'].name}"} & set(rows)
    assert len(kept) == 1, kept             # the twins are near duplicates: one is kept, and it shows...
    for source_file in sorted(kept) + ["bees/adobe.jpg", "bees/p3.jpg"]:
        copy = Image.open(result.path / rows[source_file]["path"])
        assert "icc_profile" not in copy.info
        srgb = as_built(shows[source_file])
        # ... the sRGB photo: the copy was 8-11 levels off (the raw Adobe RGB / P3 numbers)
        assert float(np.abs(np.asarray(copy, float) - srgb).mean()) < 2.5, source_file

    broken = rows["bees/broken.jpg"]                # kept, read as before, and the log says why
    assert (result.path / broken["path"]).is_file()
    with Catalog(parse_config(raw).catalog_path) as catalog:
        file_path = catalog.get(int(broken["candidate_id"]))["file_path"]
    warned = [r.getMessage() for r in caplog.records if "colour profile" in r.getMessage()]
    assert warned == [f"{file_path}: its embedded colour profile is not applied: unreadable profile (cannot open "
                      "profile from string); its numbers are read as sRGB"]


def test_the_chroma_subsampling_reaches_the_files_and_counts_only_when_not_the_default(world):
    raw, _ = world
    default, rows = built(raw, name="chroma")
    assert default.published and default.version == "v1"
    files = [default.path / r["path"] for r in rows.values()]
    assert {JpegImagePlugin.get_sampling(Image.open(f)) for f in files} == {SAMPLING["4:2:0"]}
    # The fingerprint of a version built before the setting existed: max side, quality, the rows.
    meta = json.loads((default.path / "dataset.json").read_text())
    h = hashlib.sha256(json.dumps([256, 90]).encode())
    for r in read_manifest(default.path / "manifest.csv"):
        h.update(f"{r['path']}|{r['labels']}|{r['split']}|{r['sha256']}|{r['license_id'] or None}\n".encode())
    assert meta["fingerprint"] == default.fingerprint == h.hexdigest()
    assert not built(raw, name="chroma", jpeg_subsampling="4:2:0")[0].published      # nothing rebuilt

    full, rows = built(raw, name="chroma", jpeg_subsampling="4:4:4")
    assert full.published and full.version == "v2" and full.fingerprint != default.fingerprint
    assert {JpegImagePlugin.get_sampling(Image.open(full.path / r["path"])) for r in rows.values()} == {SAMPLING["4:4:4"]}
    assert sum(f.stat().st_size for f in full.path.rglob("*.jpg")) > sum(f.stat().st_size for f in files)
    verify_version(full.path)                       # its fingerprint, recomputed from dataset.json's params
    assert not built(raw, name="chroma", jpeg_subsampling="4:4:4")[0].published
    half, rows = built(raw, name="chroma", jpeg_subsampling="4:2:2")
    assert half.version == "v3"
    assert {JpegImagePlugin.get_sampling(Image.open(half.path / r["path"])) for r in rows.values()} == {SAMPLING["4:2:2"]}
