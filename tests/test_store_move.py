"""A local data root moved to an object store, and what a fresh cache of the store shows (the scale26
audit, findings 4 and 7), on a real S3-compatible server (moto on loopback):

- the documented move (docs/orchestration.md, "Moving a local data root to an object store"): the
  local root made the cache of a store config, then one `mlc build`, publishes every version and
  model with its marker, and a fresh cache sees them;
- a fresh cache's `mlc inspect` shows the changes since the previous version, as the local root's does
  (only the previous version's manifest and dataset.json are fetched for it);
- a root copied into the store by hand (no markers) is not published over: `mlc build` refuses in
  one line, where it replaced the copied v1 with other contents.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers import ENV, MLC
from mlc_pipeline.catalog import Catalog
from mlc_pipeline.config import load_config
from mlc_pipeline.objectstore import read_marker, store_of
from mlc_pipeline.storefiles import file_listing, named_files
from mlc_pipeline.storemodels import store_pointer
from mlc_pipeline.storeversions import remote_versions
from storage_world import curated_root

pytestmark = pytest.mark.slow
BUCKET = "mlc-moved"


def run_mlc(*args: str) -> subprocess.CompletedProcess:
    creds = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    return subprocess.run(MLC + list(args), env={**ENV, **creds}, text=True, capture_output=True, timeout=300)


def ok(*args: str) -> str:
    res = run_mlc(*args)
    assert res.returncode == 0, f"mlc {' '.join(args)}:\n{res.stdout}\n{res.stderr[-3000:]}"
    return res.stdout


def store_config(local: Path, endpoint: str, prefix: str, cache: Path) -> Path:
    "The local root's config with its data root in the bucket under `prefix`, cached in `cache`."
    data = yaml.safe_load(local.read_text())
    data.update(data_dir=f"s3://{BUCKET}/{prefix}", cache_dir=str(cache), storage_options={"endpoint_url": endpoint})
    path = local.parent / f"{prefix}-{cache.name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def local_root(tmp_path_factory, trained_shapes_bundle):
    """A local data root with v1, then v2 without a photo taken down, and a model: its config."""
    config = curated_root(tmp_path_factory.mktemp("local"), per_class=6)
    ok("build", "-c", str(config))
    cfg = load_config(config)
    with Catalog(cfg.catalog_path, readonly=True) as catalog:
        victim = next(r for r in catalog.candidates("status='accepted'"))
    ok("remove", "-c", str(config), "--photo-id", victim["photo_id"], "--source", victim["source"], "--reason", "owner")
    ok("build", "-c", str(config))
    shutil.copytree(trained_shapes_bundle[1], cfg.layout.models / "m1")
    (cfg.layout.models / "LATEST").write_text("m1\n")
    return config


@pytest.fixture(scope="module")
def moved(local_root, s3_server, tmp_path_factory):
    """The documented move: a copy of the local root as the cache of a store config, then `mlc build`."""
    import s3fs
    s3fs.S3FileSystem(endpoint_url=s3_server).mkdir(BUCKET)
    cache = tmp_path_factory.mktemp("moving") / "cache"
    shutil.copytree(load_config(local_root).data_dir, cache, symlinks=True)
    config = store_config(local_root, s3_server, "moved", cache)
    assert "unchanged" in ok("build", "-c", str(config))
    return config


def test_the_documented_move_publishes_every_version_and_model(local_root, moved, s3_server, tmp_path):
    local, cfg = load_config(local_root), load_config(moved)
    store = store_of(cfg)
    assert remote_versions(store, cfg) == ["v1", "v2"]
    for version in ("v1", "v2"):
        meta = json.loads((local.layout.version(version) / "dataset.json").read_text())
        assert read_marker(store, f"datasets/default/{version}")["fingerprint"] == meta["fingerprint"]
    assert store_pointer(store) == "m1"
    assert set(file_listing(store)) == named_files(cfg) and named_files(cfg)      # raw/ and quarantine/
    fresh = store_config(local_root, s3_server, "moved", tmp_path / "fresh")
    assert "| LATEST | m1 |" in ok("models", "-c", str(fresh))
    assert json.loads(ok("inspect", "--json", "-c", str(fresh)))["dataset"]["version"] == "v2"


def test_a_fresh_cache_shows_the_changes_since_the_previous_version(local_root, moved, s3_server, tmp_path):
    """Only the latest version was fetched: "Changes since v1" vanished and JSON's dataset.diff was
    null, as if there were no previous version."""
    here = json.loads(ok("inspect", "--json", "-c", str(local_root)))["dataset"]
    assert here["version"] == "v2" and here["previous"] == "v1" and here["diff"], here["diff"]
    fresh = store_config(local_root, s3_server, "moved", tmp_path / "fresh")
    there = json.loads(ok("inspect", "--json", "-c", str(fresh)))["dataset"]
    assert there["diff"] == here["diff"]
    assert "Changes since v1" in ok("inspect", "-c", str(fresh))
    cfg = load_config(fresh)     # the previous version's listing alone, not its images
    assert not cfg.layout.version("v1").exists()
    assert sorted(p.name for p in cfg.layout.version_listing("v1").iterdir()) == ["dataset.json", "manifest.csv"]


def test_a_root_copied_by_hand_is_not_published_over(local_root, moved, s3_server, tmp_path):
    """`aws s3 sync` of a local root: no markers, so no version for any reader; `mlc build` then
    published its own "v1" over the copied one (other images under the same name)."""
    import s3fs
    fs = s3fs.S3FileSystem(endpoint_url=s3_server)
    root = load_config(local_root).data_dir
    files = [p for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(".")]
    fs.put([str(p) for p in files], [f"{BUCKET}/copied/{p.relative_to(root).as_posix()}" for p in files])
    store = store_of(load_config(store_config(local_root, s3_server, "copied", tmp_path / "c")))
    before = {k: v.get("ETag") for k, v in store.listing("datasets").items()}
    res = run_mlc("build", "-c", str(store_config(local_root, s3_server, "copied", tmp_path / "fresh")))
    assert res.returncode == 2, res.stdout + res.stderr[-3000:]
    assert "no _COMPLETE marker and no claim" in res.stderr.strip().splitlines()[-1], res.stderr[-3000:]
    assert "Moving a local data root to an object store" in res.stderr
    assert {k: v.get("ETag") for k, v in store.listing("datasets").items()} == before


def test_a_version_built_on_two_machines_reads_the_same_from_every_cache(local_root, moved, s3_server, tmp_path):
    """Two machines built v1 at once from one catalog (the same images, so one claim and one marker): the
    store kept one build's dataset.json and README.md and the other cache its own, so v1's created_at
    (and the card's "Built" line) differed between caches of one store version (scale26, finding 9).
    The cache that finds its version in the store takes the store's files; so does a cache whose
    publish was refused (the SQLite catalog) at its next fetch of that version."""
    from mlc_pipeline.dataset import build_dataset
    from mlc_pipeline.storeversions import pull_version, push_versions

    def fresh_cache(name: str):
        "A fresh cache holding the catalog and its files (fetched), no version yet."
        cache = tmp_path / name
        shutil.copytree(load_config(local_root).data_dir, cache, symlinks=True,
                        ignore=shutil.ignore_patterns("datasets", "models", "reports", ".*"))
        return load_config(store_config(local_root, s3_server, "twice", cache))

    a, b, c = fresh_cache("a"), fresh_cache("b"), fresh_cache("c")
    for cfg in (a, b, c):
        assert build_dataset(cfg).published            # each machine builds v1 before any publishes
    store = store_of(a)
    assert push_versions(store, a) == ["v1"]
    assert push_versions(store, b) == []               # the same build (fingerprint): not published again
    assert pull_version(store, c, "v1") == "v1"        # C's publish was refused: its next fetch
    stored = {name: store.read_text(f"datasets/default/v1/{name}") for name in ("dataset.json", "README.md")}
    for cfg in (a, b, c):
        here = {name: (cfg.layout.version("v1") / name).read_text() for name in stored}
        assert here == stored, cfg.data_dir
    created = {json.loads((cfg.layout.version("v1") / "dataset.json").read_text())["created_at"] for cfg in (a, b, c)}
    assert created == {json.loads(stored["dataset.json"])["created_at"]}
    fresh = load_config(store_config(local_root, s3_server, "twice", tmp_path / "d"))
    assert pull_version(store, fresh) == "v1"
    assert (fresh.layout.version("v1") / "dataset.json").read_text() == stored["dataset.json"]
