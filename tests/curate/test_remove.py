"""After a version is published: `mlc remove` takedowns (through the real CLI, in a real process),
and new images that copy a published test image, on real fixture photos."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from helpers import FIXTURES

from mlc_pipeline.catalog import Catalog
from mlc_pipeline.collect.stage import collect
from mlc_pipeline.config import parse_config
from mlc_pipeline.curate.stage import curate
from mlc_pipeline.dataset.build import build_dataset
from mlc_pipeline.manifest import read_manifest
from mlc_pipeline.flickr_server.folder import photo_id_for

FIXTURES = FIXTURES / "hymenoptera"
pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason="fixture photos missing (../shared/fixtures)")


def settings(tmp_path: Path, world: Path) -> dict:
    return {
        "data_dir": str(tmp_path / "data"),
        "source": {"kind": "local", "licenses": "any", "sizes": ["url_m", "url_n", "url_s"],
                   "local": {"port": 0, "folder": str(world), "query_map": {"ants": "ants", "bees": "bees", "scenery": "scenery"}}},
        "classes": {"ants": {"queries": ["ants"], "count": 50}, "bees": {"queries": ["bees"], "count": 50}},
        "other": {"queries": ["scenery"], "count": 50},
        "build": {"max_side": 96},
    }


def mlc(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlc_pipeline.cli", *args, "-c", str(config)],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ))


@pytest.fixture
def published(tmp_path, request):
    """A published v1; `request.param` (indirect parametrisation) picks the catalog backend."""
    backend = getattr(request, "param", "sqlite")
    catalog = {"catalog": {"url": request.getfixturevalue("pg_url")}} if backend == "postgresql" else {}
    world = tmp_path / "world"
    for name, files in (("ants", sorted((FIXTURES / "ants").glob("*.jpg"))[:10]),
                        ("bees", sorted((FIXTURES / "bees").glob("*.jpg"))[:10]),
                        ("scenery", sorted((FIXTURES / "ants").glob("*.jpg"))[100:104])):
        (world / name).mkdir(parents=True)
        for f in files:
            shutil.copy(f, world / name / f.name)
    raw = {**settings(tmp_path, world), **catalog}
    cfg = parse_config(raw)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    collect(cfg, progress=False)
    curate(cfg)
    v1 = build_dataset(cfg)
    return cfg, config, v1, world


@pytest.mark.parametrize("published", ["sqlite", "postgresql"], indirect=True)
def test_remove_photo_id_takes_it_out_of_every_future_version(published):
    cfg, config, v1, _ = published
    rows = read_manifest(v1.path / "manifest.csv")
    target = rows[0]
    with Catalog(cfg.catalog_path) as c:
        before = c.get(int(target["candidate_id"]))
    assert Path(before["file_path"]).exists() and target["photo_id"] in (v1.path / "ATTRIBUTION.md").read_text()

    done = mlc(config, "remove", "--photo-id", target["photo_id"], "--reason", "owner asked on 2026-12-01")
    assert done.returncode == 0, done.stderr
    assert "removed 1 photo(s)" in done.stdout and "1 file(s) deleted" in done.stdout
    assert f"{v1.version}: 1 photo(s): {target['photo_id']}" in done.stdout     # still published there

    assert not Path(before["file_path"]).exists()
    with Catalog(cfg.catalog_path) as c:
        row = c.get(before["id"])
        (removal,) = c.removals()
    assert row["status"] == "removed" and row["reason"] == "takedown:owner asked on 2026-12-01"
    assert row["file_path"] is None
    assert removal["photo_id"] == target["photo_id"] and removal["reason"] == "owner asked on 2026-12-01"
    assert json.loads(removal["files_deleted"]) == [before["file_path"]]

    # Collect, curate and build again: the photo stays out, the next version's attribution is regenerated.
    collect(cfg, progress=False)
    curate(cfg)
    with Catalog(cfg.catalog_path) as c:
        assert c.get(before["id"])["status"] == "removed"
    v2 = build_dataset(cfg)
    assert v2.published and v2.version != v1.version
    assert target["photo_id"] not in {r["photo_id"] for r in read_manifest(v2.path / "manifest.csv")}
    assert target["photo_id"] not in (v2.path / "ATTRIBUTION.md").read_text()
    assert len(read_manifest(v2.path / "manifest.csv")) == len(rows) - 1
    assert target["photo_id"] in (v1.path / "ATTRIBUTION.md").read_text()     # published versions are immutable

    again = mlc(config, "remove", "--photo-id", target["photo_id"], "--reason", "again")   # idempotent
    assert again.returncode == 0 and "removed 0 photo(s)" in again.stdout and "1 already removed" in again.stdout


@pytest.mark.parametrize("published", ["sqlite", "postgresql"], indirect=True)
def test_remove_by_owner_and_by_query(published):
    cfg, config, v1, _ = published
    with Catalog(cfg.catalog_path) as c:
        rows = c.candidates("status='accepted'")
    owner = rows[0]["owner"]
    owned = [r for r in rows if r["owner"] == owner]
    done = mlc(config, "remove", "--owner", owner, "--reason", "licence changed to all rights reserved")
    assert done.returncode == 0, done.stderr
    assert f"removed {len(owned)} photo(s)" in done.stdout

    done = mlc(config, "remove", "--query", "bees", "--reason", "bees withdrawn")
    assert done.returncode == 0, done.stderr
    with Catalog(cfg.catalog_path) as c:
        left = c.candidates("status='accepted'")
        assert {r["selector"].split(":")[0] for r in c.removals()} == {"owner", "query"}
    assert all(r["owner"] != owner and "bees" not in json.loads(r["queries"]) for r in left)
    v2 = build_dataset(cfg)
    assert {r["candidate_id"] for r in read_manifest(v2.path / "manifest.csv")} == {str(r["id"]) for r in left}


def test_remove_refuses_without_reason_or_match(published):
    _, config, _, _ = published
    assert mlc(config, "remove", "--photo-id", "1").returncode == 2                       # no --reason
    assert mlc(config, "remove", "--photo-id", "1", "--reason", "  ").returncode == 2     # empty reason
    nothing = mlc(config, "remove", "--photo-id", "no-such-photo", "--reason", "x")
    assert nothing.returncode == 2 and "nothing removed" in nothing.stderr
    assert mlc(config, "remove", "--photo-id", "1", "--owner", "x", "--reason", "x").returncode == 2


def test_copies_of_published_test_images_never_enter_training(published):
    cfg, _, v1, world = published
    manifest = read_manifest(v1.path / "manifest.csv")
    tests = [r for r in manifest if r["split"] == "test"]
    assert tests, "the split hash put no image in test; pick another world"
    test = tests[0]
    with Catalog(cfg.catalog_path) as c:
        source_file = Path(c.get(int(test["candidate_id"]))["file_path"])
    # A new upload of the same photo, cropped 5 % per side and re-encoded, found by another query.
    with Image.open(source_file) as im:
        w, h = im.size
        im.convert("RGB").crop((w // 20, h // 20, w - w // 20, h - h // 20)).save(world / "bees" / "zz_recrop.jpg", quality=85)
    collect(cfg, progress=False)
    curate(cfg)
    with Catalog(cfg.catalog_path) as c:
        new = c.get_by_photo("local", photo_id_for("bees/zz_recrop.jpg"))
        original = c.get(int(test["candidate_id"]))
    assert new["status"] == "duplicate", new
    assert new["reason"].startswith(f"near-duplicate-of-test:{v1.version}:d=")
    assert new["duplicate_of"] == original["id"] and original["status"] == "accepted"
    v2 = build_dataset(cfg)
    assert str(new["id"]) not in {r["candidate_id"] for r in read_manifest(v2.path / "manifest.csv")}
