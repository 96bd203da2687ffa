"""`mlc withdraw vN` (dataset/withdraw.py, withdrawal.py, storeversions.py): on a local data root, and
on an object store (a real S3-compatible server, moto on loopback) seen from two machines' caches; and
the model bundles it names, every one whose network learned from the version (model/learned.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import test_store_remove
from helpers import ENV, MLC, bucket_config, free_port, tiny_config, tree_digest
from mlc_pipeline import objectstore, sync
from mlc_pipeline.catalog import Catalog
from mlc_pipeline.config import load_config
from mlc_pipeline.layout import point_latest
from mlc_pipeline.manifest import PUBLISHED, latest_version, versions, withdrawn_versions

pytestmark = pytest.mark.slow


def mlc(*args: str, config: Path, rc: int = 0) -> subprocess.CompletedProcess:
    creds = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
             if k in os.environ}
    res = subprocess.run(MLC + [args[0], "-c", str(config), *args[1:]], env={**ENV, **creds},
                         text=True, capture_output=True, timeout=600)
    assert res.returncode == rc, f"mlc {' '.join(args)}:\n{res.stdout}\n{res.stderr[-3000:]}"
    return res


def two_versions(config: Path) -> None:
    """v1, then a photo taken down and v2 without it."""
    for command in ("collect", "curate", "build"):
        mlc(command, "--no-progress" if command == "collect" else "--no-wait", config=config)
    cfg = load_config(config)
    with Catalog(cfg.catalog_path, readonly=True) as catalog:
        victim = next(r for r in catalog.candidates("status='accepted'"))
    mlc("remove", "--photo-id", victim["photo_id"], "--reason", "owner request", config=config)
    assert "v2: published" in mlc("build", config=config).stdout


def test_withdraw_on_a_local_data_root(tmp_path: Path):
    config = tiny_config(tmp_path, free_port())
    two_versions(config)
    cfg = load_config(config)
    root = cfg.layout.datasets
    export = cfg.data_dir / "exports" / "default-v2-imagefolder"
    mlc("export", "v2", "--format", "imagefolder", "--out", str(export), config=config)
    from fastapi.testclient import TestClient
    from mlc_pipeline.review.app import create_app
    with Catalog(cfg.catalog_path, readonly=True) as catalog:
        kept = next(r for r in catalog.candidates("status='accepted'"))      # in v1 and v2
    with TestClient(create_app(cfg), base_url="http://127.0.0.1:8777") as client:      # indexes v1 and v2
        assert "<td>v2</td>" in client.get(f"/image/{kept['id']}").text

    v1_before = tree_digest(root / "v1")
    out = mlc("withdraw", "v2", "--reason", "  built  from a bad config ", config=config).stdout
    assert tree_digest(root / "v1") == v1_before, "withdrawing v2 touched v1 (files they share included)"
    assert "dataset default v2: withdrawn (built from a bad config)" in out and "latest is now v1" in out, out
    assert f"exports of it under {cfg.data_dir / 'exports'} (kept: delete them): {export}" in out
    assert versions(root) == ["v1"] and latest_version(root) == "v1"
    assert os.readlink(root / "latest") == "v1" and (root / "LATEST").read_text().strip() == "v1"
    assert withdrawn_versions(root)["v2"]["reason"] == "built from a bad config"
    assert "v2" in (root / PUBLISHED).read_text()
    assert not list(root.glob(".withdrawn-*"))
    with TestClient(create_app(cfg), base_url="http://127.0.0.1:8777") as client:
        shown = client.get(f"/image/{kept['id']}").text
    assert "<td>v1</td>" in shown and "<td>v2</td>" not in shown        # its index of v2 is not shown
    with TestClient(create_app(cfg), base_url="http://127.0.0.1:8777") as client:
        listed = client.get("/?version=v2").text
    assert '<span id="total">0</span>' in listed and "v2 is not a published version here" in listed

    again = mlc("withdraw", "v2", "--reason", "again", config=config).stdout       # a rerun: harmless
    assert "v2: already withdrawn (built from a bad config)" in again and "0 file(s) deleted" in again
    for spelt in ("v2", "2", "V2"):
        gone = mlc("inspect", "--version", spelt, config=config, rc=2).stderr
        assert "v2 was withdrawn" in gone and "built from a bad config" in gone, gone
    built = mlc("build", config=config)
    assert "v3: published" in built.stdout       # never v2 again
    assert "this build holds exactly what v2 held, withdrawn on" in built.stderr     # the same rows: said (verify21)
    for wrong, said in (("latest", "name the version to withdraw as vN"), ("v9", "no dataset version 'v9'")):
        assert said in mlc("withdraw", wrong, "--reason", "x", config=config, rc=2).stderr
    assert "--reason is empty" in mlc("withdraw", "v1", "--reason", " ", config=config, rc=2).stderr

    # v3 moved to another disk and linked back (verify21: the link was skipped, v3 stayed in use)
    elsewhere = tmp_path / "other-disk" / "v3"
    elsewhere.parent.mkdir()
    shutil.move(root / "v3", elsewhere)
    (root / "v3").symlink_to(elsewhere, target_is_directory=True)
    out = mlc("withdraw", "v3", "--reason", "x", config=config).stdout
    assert "0 file(s)" not in out and not (root / "v3").exists() and not (root / "v3").is_symlink()
    assert not elsewhere.exists() and not list(elsewhere.parent.iterdir()) and versions(root) == ["v1"]
    out = mlc("withdraw", "v1", "--reason", "x", config=config).stdout
    assert "latest is now none" in out and versions(root) == []
    left = root / ".withdrawn-v1-999999999-deadbeef"        # what a withdrawal killed mid-delete leaves
    (left / "images").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg"):
        (left / "images" / name).write_bytes(b"x")
    rerun = mlc("withdraw", "v1", "--reason", "another reason", config=config).stdout
    assert "v1: withdrawn (x); 2 file(s) deleted here" in rerun and not left.exists(), rerun
    assert not (root / "latest").is_symlink() and not (root / "LATEST").exists()
    assert "v4: published" in mlc("build", config=config).stdout


def test_withdraw_on_an_object_store_reaches_every_cache(s3_server, tmp_path: Path):
    """Deleting a version from a cache was undone by the next fetch, and deleting it from the bucket by
    hand was undone by any cache that still held it: its publish claimed the name again (the claim
    was its own build's) and uploaded it. A tombstone now withdraws it everywhere, for good."""
    import s3fs
    s3fs.S3FileSystem(endpoint_url=s3_server).mkdir("mlc-withdraw")
    tiny_config(tmp_path, free_port())
    config_a = bucket_config(tmp_path, s3_server, "mlc-withdraw", "cache-a")
    two_versions(config_a)
    config_b = bucket_config(tmp_path, s3_server, "mlc-withdraw", "cache-b")
    a, b = load_config(config_a), load_config(config_b)
    key = "datasets/default/v2"

    def store():        # a fresh one each time: s3fs keeps the listings it made
        return objectstore.store_of(a)
    sync.pull(b, "curate")                                   # machine B holds both versions
    assert versions(b.layout.datasets) == ["v1", "v2"]

    # a bundle another machine trained on v2 and published, the store's LATEST; and one whose bundle.json
    # is damaged: named as not checked, not an error
    test_store_remove.publish_bundle(store(), tmp_path / "bundles", "m-on-v2", {"dataset_version": "default/v2"})
    store().write_text("models/LATEST", "m-on-v2\n")
    (tmp_path / "bundles" / "broken").mkdir()
    (tmp_path / "bundles" / "broken" / "bundle.json").write_text("{not json")
    objectstore.push_folder(store(), tmp_path / "bundles" / "broken", "models/broken", {"bundle": "broken"})
    v1_key = "datasets/default/v1"
    v1_before = {k: store().sha256(k) for k in store().listing(v1_key)}
    assert len(v1_before) > 3
    out = mlc("withdraw", "v2", "--reason", "holds a photo taken down", config=config_a).stdout
    assert {k: store().sha256(k) for k in store().listing(v1_key)} == v1_before, "v1's objects changed"
    assert "v2: withdrawn" in out and f"object(s) deleted from {a.data_url}" in out and "latest is now v1" in out
    assert "model bundles that learned from it (kept: retrain, or delete them):\n  m-on-v2 (in the store, the " \
           "store's LATEST): trained on it\nmodel bundles not checked (1): cannot tell which images broken trained " \
           "on (" in out, out
    assert sorted(store().listing(key)) == [f"{key}/.claim", f"{key}/_WITHDRAWN"]
    assert sync.remote_versions(store(), a) == ["v1"] and versions(a.layout.datasets) == ["v1"]

    cut_short = b.layout.datasets / ".fetch-v2-999999999-abcd1234"     # a fetch of v2 killed on B (verify21)
    (cut_short / "images").mkdir(parents=True)
    sync.push_versions(store(), b)  # withdrawn after B's publish dropped what it knew of: dropped there too
    assert not cut_short.exists()
    assert versions(b.layout.datasets) == ["v1"]
    sync.publish(b)                 # B's copy is gone, not published again
    assert sorted(store().listing(key)) == [f"{key}/.claim", f"{key}/_WITHDRAWN"]
    assert versions(b.layout.datasets) == ["v1"] and withdrawn_versions(b.layout.datasets)["v2"]["reason"] == \
        "holds a photo taken down"
    assert latest_version(b.layout.datasets) == "v1"

    config_c = bucket_config(tmp_path, s3_server, "mlc-withdraw", "cache-c")     # a cache that never saw v2
    c = load_config(config_c)
    sync.pull(c, "build")
    mine = c.layout.version("v2")                           # its own build under the withdrawn name
    shutil.copytree(c.layout.version("v1"), mine)
    meta = json.loads((mine / "dataset.json").read_text())
    (mine / "dataset.json").write_text(json.dumps({**meta, "version": "v2", "fingerprint": "another build"}))
    claim = json.loads(store().read_text(f"{key}/.claim"))    # even once the claim looks like a dead machine's
    store().write_text(f"{key}/.claim", json.dumps({**claim, "at": time.time() - objectstore.STALE_CLAIM_S - 1}))
    with pytest.raises(objectstore.ObjectStoreError, match="v2 was withdrawn .*holds a photo taken down.*kept aside as"):
        sync.publish(c)
    assert sorted(store().listing(key)) == [f"{key}/.claim", f"{key}/_WITHDRAWN"]
    assert not mine.exists() and len(list(c.layout.datasets.glob(".unpublished-v2-*"))) == 1    # out of the versions

    assert "v3: published" in mlc("build", config=config_b).stdout       # B numbers past the withdrawn name
    assert sync.remote_versions(store(), a) == ["v1", "v3"]
    # a withdrawal of v3 killed after its tombstone, the marker still there (verify21: other caches
    # fetched it again): withdrawn all the same for every cache
    store().write_text("datasets/default/v3/_WITHDRAWN", json.dumps({"version": "v3", "reason": "killed",
                                                                    "fingerprint": None, "at": "2026-12-06"}))
    assert "datasets/default/v3/_COMPLETE" in store().listing("datasets/default/v3")
    assert sync.remote_versions(store(), a) == ["v1"]
    d = load_config(bucket_config(tmp_path, s3_server, "mlc-withdraw", "cache-d"))
    sync.pull(d, "curate")
    assert versions(d.layout.datasets) == ["v1"] and sync.pull_version(store(), d, "v3") is None
    sync.publish(b)
    assert versions(b.layout.datasets) == ["v1"]
    gone = mlc("inspect", "--version", "v2", config=config_c, rc=2).stderr
    assert "v2 was withdrawn" in gone, gone


def test_the_exports_listed_skip_a_damaged_marker_and_say_so(tmp_path: Path, caplog):
    """`mlc withdraw` reads the export markers as `mlc remove` does (manifest.read_export_markers): one
    that is not a JSON object used to be skipped without a word; now it is named, as an unreadable one is."""
    import logging
    from mlc_pipeline.config import parse_config
    from mlc_pipeline.dataset.withdraw import exports_of

    cfg = parse_config({"data_dir": str(tmp_path / "data"), "classes": {"ants": {"queries": ["ants"], "count": 5}},
                        "other": {"queries": ["scenery"], "count": 5}})
    exports = cfg.data_dir / "exports"
    for name, text in (("a-list", "[1, 2]"), ("b-cut", '{"dataset": '),
                       ("c-v2", json.dumps({"dataset": "default", "version": "v2"})),
                       ("d-v1", json.dumps({"dataset": "default", "version": "v1"}))):
        (exports / name).mkdir(parents=True)
        (exports / name / "export.json").write_text(text)
    with caplog.at_level(logging.WARNING):
        assert exports_of(cfg, "v2") == [str(exports / "c-v2")]
    for name, why in (("a-list", "not a JSON object"), ("b-cut", "Expecting value")):
        assert any(f"{exports / name / 'export.json'}: not read ({why}" in r.getMessage() for r in caplog.records), caplog.text


def lineage(name: str) -> dict[str, dict]:
    """Four bundles over v1 and v2, as trainings write their bundle.json: m1 trained on v1; m2 continued
    m1's network on v2 (a mining round's retrain: `learned_from` records both trainings); m3, from
    before bundle.json recorded them, continued m1 on v2 too (its chain walked through m1's
    bundle.json); m4 trained on v2 from scratch."""
    v1, v2 = {"dataset_version": f"{name}/v1", "left_out": []}, {"dataset_version": f"{name}/v2", "left_out": []}
    return {"m1": {"dataset_version": f"{name}/v1", "learned_from": [v1], "created_at": "2026-12-01T00:00:00"},
            "m2": {"dataset_version": f"{name}/v2", "learned_from": [v1, v2], "weights": {"continued_from": "m1"},
                   "created_at": "2026-12-02T00:00:00"},
            "m3": {"dataset_version": f"{name}/v2", "weights": {"continued_from": "m1"},
                   "created_at": "2026-12-03T00:00:00"},
            "m4": {"dataset_version": f"{name}/v2", "learned_from": [v2], "created_at": "2026-12-04T00:00:00"}}


CONTINUED = "continued a network trained on it"


def bundle_lines(out: str) -> dict[str, str]:
    "`mlc withdraw`'s lines of `lineage`'s bundles: name -> what follows it."
    return dict(re.findall(r"^  (m\d)(.*)$", out, re.M))


def test_withdraw_names_the_bundles_that_continued_a_network_trained_on_it(tmp_path: Path):
    """A network continued on a later version learned the withdrawn one as much as the network it
    continued: `mlc withdraw` named only the bundles whose own version it was (m1), not m2 (LATEST)
    nor m3."""
    config = tiny_config(tmp_path, free_port())
    two_versions(config)
    cfg = load_config(config)
    for name, meta in lineage(cfg.build.name).items():
        (cfg.layout.models / name).mkdir(parents=True)
        (cfg.layout.models / name / "bundle.json").write_text(json.dumps({"format": 1, "arch": "resnet18", **meta}))
    point_latest(cfg.layout.models, "m2")
    out = mlc("withdraw", "v1", "--reason", "holds photos that must not be used", config=config).stdout
    assert "dataset default v1: withdrawn" in out, out
    assert "model bundles that learned from it (kept: retrain, or delete them):" in out, out
    assert bundle_lines(out) == {"m1": ": trained on it", "m2": f" (models/LATEST): {CONTINUED}",
                                 "m3": f": {CONTINUED}"}, out
    assert "\nmodels/LATEST is one of them: " in out and "not checked" not in out, out
    again = mlc("withdraw", "v1", "--reason", "again", config=config).stdout    # a rerun lists them again
    assert "v1: already withdrawn" in again and set(bundle_lines(again)) == {"m1", "m2", "m3"}, again


@pytest.fixture(scope="module")
def store_world(s3_server, tmp_path_factory):
    """v1 and v2 built into a bucket by machine A, and `lineage`'s four bundles published there by
    other machines (their bundle.json, metrics.json and weights, then the marker), m2 the store's
    LATEST: no cache that withdraws has ever fetched one."""
    import s3fs
    s3fs.S3FileSystem(endpoint_url=s3_server).mkdir("mlc-withdraw-models")
    folder = tmp_path_factory.mktemp("withdraw-models")
    tiny_config(folder, free_port())
    config = bucket_config(folder, s3_server, "mlc-withdraw-models", "cache-a")
    two_versions(config)
    store = objectstore.store_of(load_config(config))
    for name, meta in lineage(load_config(config).build.name).items():
        test_store_remove.publish_bundle(store, folder / "bundles", name, meta)
    store.write_text("models/LATEST", "m2\n")
    return folder, s3_server


def test_withdraw_on_an_object_store_names_every_store_bundle_that_learned_from_it(store_world):
    """A fresh cache named, of the store's bundles, those whose bundle.json names the version (m1):
    not m2, the store's LATEST, nor m3, which continued m1's network. It reads their bundle.json and
    metrics.json (`mlc models`' listing), never their weights. The latest it names is the store's
    newest version left, v2, which this cache never fetched (it said `none ... run mlc build`: the
    cache's own LATEST, and the user rebuilt for nothing)."""
    folder, endpoint = store_world
    config = bucket_config(folder, endpoint, "mlc-withdraw-models", "cache-w1")
    out = mlc("withdraw", "v1", "--reason", "holds photos that must not be used", config=config).stdout
    assert "dataset default v1: withdrawn" in out and "latest is now v2\n" in out, out
    assert sync.remote_versions(objectstore.store_of(load_config(config)), load_config(config)) == ["v2"]
    assert bundle_lines(out) == {"m1": " (in the store): trained on it",
                                 "m2": f" (in the store, the store's LATEST): {CONTINUED}",
                                 "m3": f" (in the store): {CONTINUED}"}, out
    assert "\nthe store's LATEST is one of them: " in out and "not checked" not in out, out
    assert not list(load_config(config).layout.models.rglob("export.pkl")), "a withdrawal fetched a bundle's weights"


def test_withdraw_with_the_store_models_out_of_reach_says_the_check_is_incomplete(store_world):
    """The store failing as the withdrawal, done, goes on to read its bundles was an error (exit 2) with
    the withdrawal's lines lost: now it is a line saying the check is incomplete, with no credentials
    in it, the withdrawal standing; the same command again lists them."""
    folder, endpoint = store_world
    direct = bucket_config(folder, endpoint, "mlc-withdraw-models", "cache-w2")     # the cache, whose listing of
    assert mlc("models", config=direct).returncode == 0         # the store's bundles is stale once the store is unread
    out, said, url = test_store_remove.out_of_reach(
        endpoint, lambda at: bucket_config(folder, at, "mlc-withdraw-models", "cache-w2"),
        "withdraw", "v2", "--reason", "built from a bad config")
    assert "dataset default v2: withdrawn (built from a bad config)" in out, said
    assert "LATEST" not in out.split("withdrawn (built from a bad config)")[1], said   # not told from a stale copy
    assert f"the store's model bundles were NOT all checked, the check is incomplete (object store {url}: " in out \
        and "the withdrawal itself is done; run the same `mlc withdraw` again to check them" in out, said
    direct = bucket_config(folder, endpoint, "mlc-withdraw-models", "cache-w2")     # the same cache, direct again
    key = "datasets/default/v2"
    assert f"{key}/_WITHDRAWN" in objectstore.store_of(load_config(direct)).listing(key), "not withdrawn in the store"
    again = mlc("withdraw", "v2", "--reason", "again", config=direct).stdout
    assert "v2: already withdrawn" in again and "NOT all checked" not in again, again
    assert bundle_lines(again) == {"m2": " (in the store, the store's LATEST): trained on it",
                                   "m3": " (in the store): trained on it", "m4": " (in the store): trained on it"}, again
