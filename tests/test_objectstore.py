"""A data root on object storage (sync.py, objectstore.py): the tiny project collected, curated, built and
trained into s3://<bucket>/proj on a real S3-compatible server (moto, on loopback), then used from a
second machine's empty cache; the marker is the publish; reruns upload nothing."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers import ENV, MLC, Gateway, bucket_config, free_port, tiny_config
from mlc_pipeline import objectstore, sync
from mlc_pipeline.catalog import Catalog
from mlc_pipeline.config import ConfigError, load_config, parse_config
from mlc_pipeline.manifest import latest_version, read_manifest, versions
from mlc_pipeline.storemodels import store_pointer

pytestmark = pytest.mark.slow


def mlc(*args: str, config: Path) -> str:
    """The CLI as a user runs it, with the store's credentials in its environment (s3_server's)."""
    creds = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    res = subprocess.run(MLC + [args[0], "-c", str(config), *args[1:]], env={**ENV, **creds},
                         text=True, capture_output=True, timeout=600)
    assert res.returncode == 0, f"mlc {' '.join(args)}:\n{res.stdout}\n{res.stderr[-3000:]}"
    return res.stdout


def store(cfg) -> objectstore.Store:
    return objectstore.store_of(cfg)


@pytest.fixture(scope="module")
def published(s3_server, tmp_path_factory):
    """collect + curate + build + train into the bucket from machine A's cache (the `mlc` CLI)."""
    import s3fs
    s3fs.S3FileSystem(endpoint_url=s3_server).mkdir("mlc-e2e")
    folder = tmp_path_factory.mktemp("s3project")
    tiny_config(folder, free_port())
    config = bucket_config(folder, s3_server, "mlc-e2e", "cache-a")
    for command in ("collect", "curate", "build", "train"):
        mlc(command, "--no-progress" if command == "collect" else "--no-wait", config=config)
    return folder, config


def test_data_dir_url_means_a_cache_and_a_store(tmp_path, monkeypatch):
    classes = {"classes": {"a": {"queries": ["a"], "count": 1}}, "other": {"queries": ["o"], "count": 1}}
    cfg = parse_config({"data_dir": "s3://bkt/some/prefix/", "cache_dir": "cache",
                        "storage_options": {"endpoint_url": "http://127.0.0.1:1"}, **classes}, tmp_path)
    assert cfg.data_url == "s3://bkt/some/prefix" and cfg.data_dir == tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cfg = parse_config({"data_dir": "s3://bkt/p", **classes}, tmp_path)
    assert cfg.data_dir.parent == tmp_path / "xdg" / "mlc" and cfg.data_dir.name.startswith("bkt-p-")
    assert parse_config({"data_dir": "data", **classes}, tmp_path).data_url is None
    for options in ({"secret": "x"}, {"key": "x"}, {"client_kwargs": {"aws_secret_access_key": "x"}}):
        with pytest.raises(ConfigError, match="storage_options.*credentials"):
            parse_config({"data_dir": "s3://bkt/p", "storage_options": options, **classes}, tmp_path)
    assert parse_config({"data_dir": "s3://bkt/p", "storage_options": {"s3_additional_kwargs": {
        "SSEKMSKeyId": "alias/x"}}, **classes}, tmp_path).storage_options


def test_collect_curate_build_train_publish_into_the_bucket(published):
    folder, config = published
    cfg = load_config(config)
    s = store(cfg)
    with Catalog(cfg.catalog_path, readonly=True) as catalog:
        named = {p for p in catalog.stored_file_paths() if p.startswith(("raw/", "quarantine/"))}
    held = sync.file_listing(s)
    assert named and set(held) == named          # exactly the catalog's files, quarantine moves included
    assert sync.remote_versions(s, cfg) == ["v1"]
    marker = objectstore.read_marker(s, "datasets/default/v1")
    local = objectstore.folder_files(cfg.layout.version("v1"))
    assert marker["files"] == {r: p.stat().st_size for r, p in local.items()}
    assert marker["files_sha256"] == json.loads((cfg.layout.version("v1") / "dataset.json").read_text())["files_sha256"]
    bundle = (cfg.layout.models / "LATEST").read_text().strip()
    assert store_pointer(s) == bundle
    assert objectstore.read_marker(s, f"models/{bundle}")["files"].keys() >= {"bundle.json", "export.pkl"}
    assert s.info(sync.CATALOG_OBJECT)["size"] > 0


def test_an_empty_cache_sees_the_same_latest_and_builds_and_trains_from_it(published, s3_server):
    folder, config = published
    fresh = bucket_config(folder, s3_server, "mlc-e2e", "cache-b")
    out = mlc("inspect", config=fresh)
    assert "v1" in out
    assert "unchanged" in mlc("build", config=fresh)      # the same latest version, not a new one
    cfg = load_config(fresh)
    assert latest_version(cfg.layout.datasets) == "v1"
    # `mlc run` from there: trains on v1, mines, publishes v2 and the retrained model (the stage loop's hooks)
    mlc("run", "--no-progress", config=fresh)
    summary = json.loads((cfg.layout.reports / "latest.json").read_text())
    rounds = summary["rounds"]
    assert [r["dataset_version"] for r in rounds] == ["v1", "v2"]
    s = store(cfg)
    assert sync.remote_versions(s, cfg) == ["v1", "v2"]
    # the shipped model: round 1's, unless it accepted more unknowns (then round 0's, in the store too)
    assert summary["shipped"] in {r["bundle"] for r in rounds}
    assert store_pointer(s) == summary["shipped"] == (cfg.layout.models / "LATEST").read_text().strip()
    assert f"models/{rounds[1]['bundle']}/{objectstore.MARKER}" in s.listing("models")     # published all the same
    assert {"reports/latest.html", "reports/latest.json"} <= set(s.listing("reports"))
    assert f"models/{rounds[0]['bundle']}/mined.csv" in s.listing("models")     # written after its marker
    # a third machine's `mlc inspect --html` shows that run's model section, every round of it: a fresh
    # cache fetched neither the last run's record nor a model, and its page said "No model yet"
    seen = bucket_config(folder, s3_server, "mlc-e2e", "cache-html")
    mlc("inspect", "--html", str(folder / "seen.html"), config=seen)
    page = (folder / "seen.html").read_text()
    assert "No model yet" not in page and "<h2 id='model'>Model</h2>" in page
    assert all(r["bundle"] in page for r in rounds), [r["bundle"] for r in rounds]



def test_an_export_names_the_version_as_the_store_does_not_the_cache(published, s3_server, tmp_path):
    """The beyond28 audit (finding 4): export.json's "source" was the exporting machine's cache folder,
    which means nothing to whoever receives the export."""
    folder, _ = published
    config = bucket_config(folder, s3_server, "mlc-e2e", "cache-export")
    mlc("export", "v1", "--format", "hf", "--out", str(tmp_path / "out"), config=config)
    meta = json.loads((tmp_path / "out" / "export.json").read_text())
    assert meta["source"] == f"s3://mlc-e2e/proj/datasets/{load_config(config).build.name}/v1", meta["source"]


def test_a_rerun_from_another_cache_reuses_the_round_0_the_last_run_shipped(published, s3_server):
    """reports/shipped.json (what a run shipped) travels with the store (storereports.py): from a fresh
    cache, a run with nothing new trained round 0 again, and published it with no comparison."""
    folder, _ = published
    first = bucket_config(folder, s3_server, "mlc-e2e", "cache-ship")
    mlc("run", "--no-progress", "--set", "mine.rounds=0", config=first)
    shipped = json.loads((load_config(first).layout.reports / "shipped.json").read_text())["shipped"]
    rerun = bucket_config(folder, s3_server, "mlc-e2e", "cache-rerun")
    mlc("run", "--no-progress", "--set", "mine.rounds=0", config=rerun)
    cfg = load_config(rerun)
    summary = json.loads((cfg.layout.reports / "latest.json").read_text())
    assert summary["reused"] and [r["bundle"] for r in summary["rounds"]] == [shipped] == [summary["shipped"]]
    assert [p.name for p in cfg.layout.models.iterdir() if p.is_dir()] == [shipped]      # nothing trained
    assert store_pointer(store(cfg)) == shipped

def test_the_marker_is_written_last_and_a_version_without_it_is_ignored(published, s3_server, monkeypatch):
    folder, config = published
    cfg = load_config(config)
    s = store(cfg)
    # Machine B published since this cache (A) last synced: A's stale catalog must not overwrite B's.
    with pytest.raises(objectstore.ObjectStoreError, match="changed since this cache"):
        sync.publish(cfg)
    sync.pull(cfg, "build")                     # what every command does first
    before = sync.remote_versions(s, cfg)
    new = f"v{int(before[-1][1:]) + 1}"
    folder_new = cfg.layout.version(new)
    shutil.copytree(cfg.layout.version("v1"), folder_new)       # a version in the cache, not yet published
    meta = json.loads((folder_new / "dataset.json").read_text())
    (folder_new / "dataset.json").write_text(json.dumps({**meta, "version": new, "fingerprint": "another"}))

    writes = []
    real_upload, real_write = objectstore.Store.upload, objectstore.Store.write_text
    monkeypatch.setattr(objectstore.Store, "upload",
                        lambda self, pairs: writes.extend(r for _, r in pairs) or real_upload(self, pairs))

    def killed(self, rel, text):            # the process dies just before the marker
        raise KeyboardInterrupt
    monkeypatch.setattr(objectstore.Store, "write_text", killed)
    with pytest.raises(KeyboardInterrupt):
        sync.publish(cfg)
    assert any(w.startswith(f"datasets/default/{new}/images/") for w in writes)
    assert sync.remote_versions(s, cfg) == before
    other = load_config(bucket_config(folder, s3_server, "mlc-e2e", "cache-c"))
    assert sync.pull_version(store(other), other) == before[-1]
    assert latest_version(other.layout.datasets) == before[-1]

    writes.clear()
    monkeypatch.setattr(objectstore.Store, "write_text",
                        lambda self, rel, text: writes.append(rel) or real_write(self, rel, text))
    sync.publish(cfg)                # the rerun: what the killed one uploaded is not sent again
    assert writes == [f"datasets/default/{new}/_COMPLETE"]
    assert sync.remote_versions(s, cfg) == before + [new]
    writes.clear()
    sync.publish(cfg)
    assert writes == []                     # nothing new: nothing uploaded

    # curate checks against every version's test images: an empty cache gets every published version
    fresh = load_config(bucket_config(folder, s3_server, "mlc-e2e", "cache-d"))
    sync.pull(fresh, "curate")
    assert versions(fresh.layout.datasets) == before + [new]


def test_two_builds_of_one_version_number_never_both_publish(published, s3_server):
    """The scale2 audit: two machines building at once both published "v4" (one's files over the
    other's, one marker) and both said so. A version is claimed by a conditional write before any
    upload: the second build is refused in one line and uploads nothing; a dead machine's claim
    (no marker for STALE_CLAIM_S) is taken over, and its partial upload cleared."""
    import threading
    import time
    folder, config = published
    cfg = load_config(config)
    s = store(cfg)
    sync.pull(cfg, "build")
    new = f"v{int(sync.remote_versions(s, cfg)[-1][1:]) + 1}"
    mine = cfg.layout.version(new)
    shutil.copytree(cfg.layout.version("v1"), mine)
    meta = json.loads((mine / "dataset.json").read_text())
    (mine / "dataset.json").write_text(json.dumps({**meta, "version": new, "fingerprint": "this machine's"}))
    key = f"datasets/default/{new}"
    assert objectstore.claim_folder(s, key, "another machine's") is None        # it is uploading now
    s.write_text(f"{key}/images/partial.jpg", "half an upload")
    with pytest.raises(objectstore.ObjectStoreError, match=f"is receiving, another build.s {new} .*claimed by .* min ago.*"
                                                           f"kept aside as .*unpublished-{new}-.*run `mlc build` again"):
        sync.publish(cfg)
    assert sorted(s.listing(key)) == [f"{key}/.claim", f"{key}/images/partial.jpg"]      # nothing of ours
    assert new not in sync.remote_versions(s, cfg)
    # kept, out of the versions: a rerun does not meet it again (the user moved it by hand: beyond28)
    aside, = cfg.layout.datasets.glob(f".unpublished-{new}-*")
    assert not mine.exists() and json.loads((aside / "dataset.json").read_text())["fingerprint"] == "this machine's"
    assert latest_version(cfg.layout.datasets) != new and new not in versions(cfg.layout.datasets)
    sync.publish(cfg)                       # nothing of it is published now
    assert sorted(s.listing(key)) == [f"{key}/.claim", f"{key}/images/partial.jpg"]
    aside.rename(mine)                      # the user puts it back: published once the claim is stale

    claim = json.loads(s.read_text(f"{key}/.claim"))                          # that machine died
    s.write_text(f"{key}/.claim", json.dumps({**claim, "at": time.time() - objectstore.STALE_CLAIM_S - 1}))
    sync.publish(cfg)
    assert sync.remote_versions(s, cfg)[-1] == new
    assert objectstore.read_marker(s, key)["fingerprint"] == "this machine's"
    assert f"{key}/images/partial.jpg" not in s.listing(key)

    # A cache holding another build under a published name is set aside at the fetch, and the store's
    # version fetched (it was refused with "move it aside and rerun", every time until moved by hand).
    other = load_config(bucket_config(folder, s3_server, "mlc-e2e", "cache-x"))
    theirs = other.layout.version(new)
    shutil.copytree(mine, theirs)
    (theirs / "dataset.json").write_text(json.dumps({**meta, "version": new, "fingerprint": "a third build"}))
    (other.layout.datasets / "LATEST").write_text(f"{new}\n")
    assert sync.pull_version(store(other), other, new) == new
    assert (other.layout.datasets / "LATEST").read_text().strip() == new      # the store's, fetched at once
    assert json.loads((theirs / "dataset.json").read_text())["fingerprint"] == "this machine's"
    aside, = other.layout.datasets.glob(f".unpublished-{new}-*")
    assert json.loads((aside / "dataset.json").read_text())["fingerprint"] == "a third build"

    for attempt in range(5):             # the conditional write itself, two machines at the same moment
        start, won = threading.Barrier(2), []

        def claim(who, k=f"datasets/race/v{attempt}"):
            start.wait()
            won.append(who) if objectstore.claim_folder(s, k, who) is None else None
        threads = [threading.Thread(target=claim, args=(who,)) for who in ("a", "b")]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert len(won) == 1, won


def test_a_file_store_refuses_options_it_would_ignore(tmp_path):
    """fsspec's local file system takes any keyword and ignores it: `auto_mkdirs` ran the stage, then
    publishing failed with a bare FileNotFoundError (the verify21 audit)."""
    with pytest.raises(objectstore.ObjectStoreError, match=r"does not take storage_options \['auto_mkdirs'\].*auto_mkdir"):
        objectstore.Store(f"file://{tmp_path}/store", {"auto_mkdirs": True})
    assert objectstore.Store(f"file://{tmp_path}/store", {"auto_mkdir": True}).fs.auto_mkdir


def test_refused_credentials_say_where_to_look(tmp_path):
    """s3fs raises a 403 as PermissionError("Forbidden"): said as one line with no hint before (the
    secrets21 audit); it now names where the credentials come from. (moto accepts any credentials,
    so the error is raised here as s3fs raises it.)"""
    s = objectstore.Store(f"file://{tmp_path}/store", {})
    with pytest.raises(objectstore.ObjectStoreError, match="PermissionError: Forbidden; check the credentials in "
                                                           "the environment .AWS_ACCESS_KEY_ID"):
        with objectstore.store_errors(s):
            raise PermissionError("Forbidden")


def test_a_local_store_claims_a_folder_once(tmp_path):
    s = objectstore.Store(f"file://{tmp_path}/store", {})
    assert s.create_exclusive("datasets/x/v1/.claim", "a") and not s.create_exclusive("datasets/x/v1/.claim", "b")
    assert s.read_text("datasets/x/v1/.claim") == "a"
    assert objectstore.claim_folder(s, "datasets/x/v2", "one") is None
    assert objectstore.claim_folder(s, "datasets/x/v2", "one") is None       # the same build again
    assert objectstore.claim_folder(s, "datasets/x/v2", "two")["fingerprint"] == "one"
    assert [p.name for p in (tmp_path / "store/datasets/x/v1").iterdir()] == [".claim"]    # no temp left


def test_a_takedown_deletes_the_photo_from_the_bucket(published, s3_server):
    """From a machine whose cache is empty too (the verify19 audit: it fetched only the catalog, so it
    kept no corner hashes of the photo and said no published version held it)."""
    folder, config = published
    cfg = load_config(config)
    trained = next(r for r in read_manifest(cfg.layout.version("v1") / "manifest.csv") if r["split"] == "train")
    with Catalog(cfg.catalog_path, readonly=True) as catalog:
        victim = catalog.get_by_photo(trained["source"], trained["photo_id"])
        rel = catalog.stored_path(victim["file_path"])
    assert rel in sync.file_listing(store(cfg))
    fresh = bucket_config(folder, s3_server, "mlc-e2e", "cache-remove")
    said = mlc("remove", "--photo-id", victim["photo_id"], "--reason", "owner request", config=fresh)
    assert rel not in sync.file_listing(store(cfg))
    assert "published versions that still contain them" in said and "\n  v1: 1 photo(s)" in said, said
    # the model trained on v1, the store's LATEST, though this cache has no model (curation29 finding 2c),
    # read from its bundle.json and v1's manifest in the store
    assert re.search(rf"\n  default-v1-\S+ \(in the store, the store's LATEST\): 1 photo\(s\): {victim['source']}:"
                     rf"{victim['photo_id']}\n", said) and "\nthe store's LATEST is one of them: " in said, said
    with Catalog(load_config(fresh).catalog_path, readonly=True) as catalog:
        assert len(catalog.get(victim["id"])["corner_hashes"].split(",")) == 7     # corners, then the mirror's views
    # and it fetched the photo's file alone, not every file and version (the verify20 audit): of the versions
    # their manifests, of the models their bundle.json and metrics.json, never the weights
    cache = load_config(fresh).data_dir
    assert not [p for p in (cache / "raw").rglob("*") if p.is_file()]
    assert not [p for p in (cache / "datasets").rglob("*") if p.is_file() and ".listings" not in p.parts]
    assert not [p for p in (cache / "models").rglob("*") if p.is_file() and ".listings" not in p.parts]


def test_a_missing_bucket_or_store_is_one_line_before_the_stage_runs(s3_server, tmp_path):
    classes = {"classes": {"a": {"queries": ["a"], "count": 1}}, "other": {"queries": ["o"], "count": 1}}
    cfg = parse_config({"data_dir": "s3://no-such-bucket/p", "cache_dir": "cache",
                        "storage_options": {"endpoint_url": s3_server}, **classes}, tmp_path)
    with pytest.raises(objectstore.ObjectStoreError, match="bucket 'no-such-bucket' does not exist"):
        sync.pull(cfg, "collect")


@pytest.mark.parametrize("options, named", [({"endpoint": "http://127.0.0.1:1"}, "['endpoint']"),
                                            ({"endpoint_url": 1}, "['endpoint_url']"),
                                            ({"client_kwargs": {"regoin": "x"}}, "['client_kwargs']"),
                                            ({"client_kwargs": "x"}, "['client_kwargs']")])   # verify21
def test_a_misspelt_or_mistyped_storage_option_is_one_line(s3_server, tmp_path, options, named):
    """The secrets21 audit: `endpoint` for `endpoint_url` (or a number for it) was a 28-51 line
    traceback from deep in aiobotocore, where the docs promise one line naming the key."""
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({"data_dir": "s3://b/p", "cache_dir": str(tmp_path / "cache"),
                                      "storage_options": options, "classes": {"a": {"queries": ["a"], "count": 1}},
                                      "other": {"queries": ["o"], "count": 1}}))
    # a key, so that the check for it (made before any write since dayone26 D8) passes and the store's is what fails
    res = run_mlc("collect", config=config, FLICKR_API_KEY="k" * 32, FLICKR_API_SECRET="s" * 16)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert res.stderr.count("\n") == 1 and f"the store does not take storage_options {named}" in res.stderr, res.stderr


def run_mlc(*args: str, config: Path, **env: str) -> subprocess.CompletedProcess:
    """`mlc` as a user runs it, whatever its exit code; `env` over the store's credentials (s3_server's)."""
    creds = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    return subprocess.run(MLC + [args[0], "-c", str(config), *args[1:]], env={**ENV, **creds, **env},
                          text=True, capture_output=True, timeout=300)


def test_verbose_logs_never_show_the_store_credentials(s3_server, tmp_path):
    """`mlc -v` turned on botocore's wire-level DEBUG: every request's headers, the session token
    (X-Amz-Security-Token) and the access key id (Authorization: ... Credential=AKID/...) in clear."""
    import s3fs
    s3fs.S3FileSystem(endpoint_url=s3_server).mkdir("mlc-verbose")
    tiny_config(tmp_path, free_port())
    config = bucket_config(tmp_path, s3_server, "mlc-verbose", "cache")
    creds = {"AWS_ACCESS_KEY_ID": "AKIAVERBOSETEST01234", "AWS_SECRET_ACCESS_KEY": "SecretVerbose0123456789",
             "AWS_SESSION_TOKEN": "SessionTokenVerbose0123"}        # as long as real ones (a key id: 20)
    res = run_mlc("inspect", "-v", config=config, **creds)
    out = res.stdout + res.stderr
    assert "DEBUG mlc_pipeline" in out or "DEBUG filelock" in out      # -v is on
    assert "DEBUG botocore" not in out and "X-Amz-Security-Token" not in out, out[-3000:]
    assert not any(value in out for value in creds.values()), out[-3000:]
    # the libraries' own debug, asked for: headers and all, credentials masked
    res = run_mlc("inspect", "-v", config=config, MLC_LIBRARY_DEBUG="1", **creds)
    out = res.stdout + res.stderr
    assert "X-Amz-Security-Token': b'***'" in out and "Credential=***/" in out, out[-3000:]
    assert not any(value in out for value in creds.values()), out[-3000:]


def test_an_unreachable_store_is_not_called_a_missing_bucket(s3_server, tmp_path):
    """`fs.exists(bucket)` says False when nothing answers: the user was told to create the bucket."""
    tiny_config(tmp_path, free_port())
    endpoint = f"http://127.0.0.1:{free_port()}"
    res = run_mlc("inspect", config=bucket_config(tmp_path, endpoint, "mlc-audit", "cache"))
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr[-3000:]
    assert f"cannot reach the object store at {endpoint} (connection refused)" in lines[0], lines[0]
    res = run_mlc("inspect", config=bucket_config(tmp_path, s3_server, "no-such-bucket", "cache"))
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr[-3000:]
    assert "bucket 'no-such-bucket' does not exist" in lines[0], lines[0]


class FailingPuts(Gateway):
    """A TCP proxy on loopback in front of the S3 server at `target` (its URL): passes every request, or
    (`fail_puts`) answers each upload (a request starting `PUT `) with 503 ServiceUnavailable, as a store
    shedding load does (the scale26 audit's proxy). Reads and listings pass, so a command fetches, then
    fails to publish."""

    BODY = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable</Code>'
            b'<Message>Please reduce your request rate.</Message></Error>')

    def __init__(self, target: str):
        self.fail_puts, self.refused = False, 0
        super().__init__(int(target.rsplit(":", 1)[1]))

    def request(self, conn, data: bytes) -> None:
        if self.fail_puts and data.startswith(b"PUT "):
            self.refused += 1
            conn.client.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n"
                                b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(self.BODY) + self.BODY)
            raise ConnectionAbortedError("an upload refused")


def test_a_failed_publish_says_what_is_kept_and_the_run_is_recorded_failed(s3_server, tmp_path):
    """The scale26 audit (finding 6): the store answered 503 to the uploads after a collect's downloads.
    The one-line error said only the store's words, and the collect was recorded `completed` with its
    files in no store. Now the line says the downloads are kept in the cache and the catalog and that a
    rerun publishes them, the run is recorded failed with the reason, and the rerun publishes all of
    them without downloading any again."""
    import s3fs
    s3fs.S3FileSystem(endpoint_url=s3_server).mkdir("mlc-pubfail")
    proxy = FailingPuts(s3_server)
    config = tmp_path / "pubfail.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": "s3://mlc-pubfail/proj", "cache_dir": str(tmp_path / "cache"),
        "storage_options": {"endpoint_url": proxy.address, "config_kwargs": {"retries": {"max_attempts": 2}}},
        "source": {"kind": "local", "local": {"seed": 0, "scale": 0.1, "port": free_port()},
                   "retry": {"attempts": 2, "base_delay_s": 0.05, "max_delay_s": 0.2}},
        "classes": {"balloon": {"queries": ["balloon"], "count": 4}},
        "other": {"queries": ["landscape"], "count": 4}}))
    try:
        proxy.fail_puts = True
        res = run_mlc("collect", "--no-progress", config=config)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1 and proxy.refused, res.stderr[-3000:]
        assert "Please reduce your request rate" in lines[0], lines[0]
        assert f"kept in this machine's cache {tmp_path / 'cache'} and in the catalog" in lines[0], lines[0]
        assert "only publishes) (run collect " in lines[0], lines[0]
        cfg = load_config(config)
        with Catalog(cfg.catalog_path, readonly=True) as c:
            (run,) = c.runs()
            downloaded = {r["file_path"] for r in c.candidates("status='downloaded'")}
        assert run["command"] == "collect" and run["status"] == "failed", run
        assert "not published to s3://mlc-pubfail/proj" in json.loads(run["summary"])["error"], run["summary"]
        assert json.loads(run["summary"])["downloaded"] == len(downloaded) > 0     # what it did is kept
        proxy.fail_puts = False
        rerun = json.loads(mlc("collect", "--no-progress", config=config))
        assert rerun["downloaded"] == 0
        with Catalog(cfg.catalog_path, readonly=True) as c:
            statuses = {r["run_id"]: r["status"] for r in c.runs()}
        assert statuses == {run["run_id"]: "failed", rerun["run_id"]: "completed"}
        listed = sync.file_listing(store(cfg))
        assert {Path(p).relative_to(cfg.data_dir).as_posix() for p in downloaded} <= set(listed)
    finally:
        proxy.close()


def test_a_failed_model_upload_names_a_command_that_publishes_it_without_training(s3_server, tmp_path):
    """The beyond28 audit (finding 2): the store failed under `mlc train`'s publish and the line said
    "rerun the same command to publish it": that trained a second model. `mlc build` (answering
    "unchanged") publishes the bundle and moves the store's LATEST to it, without training."""
    import s3fs
    from mlc_pipeline.layout import latest_name
    s3fs.S3FileSystem(endpoint_url=s3_server).mkdir("mlc-trainfail")
    proxy = FailingPuts(s3_server)
    tiny_config(tmp_path, free_port())
    config = bucket_config(tmp_path, proxy.address, "mlc-trainfail", "cache")
    try:
        for command in ("collect", "curate", "build"):
            mlc(command, "--no-progress" if command == "collect" else "--no-wait", config=config)
        proxy.fail_puts = True
        res = run_mlc("train", "--no-wait", config=config)       # training's INFO lines, then the one line
        line = res.stderr.strip().splitlines()[-1]
        assert res.returncode == 2 and proxy.refused and "Traceback" not in res.stderr, res.stderr[-3000:]
        assert line.startswith("mlc: object store s3://mlc-trainfail/proj: ") and "Not published" in line, line
        assert "rerun the same command" not in line, line
        assert "`mlc build -c CONFIG` does it without collecting or training again" in line, line
        cfg = load_config(config)
        name = latest_name(cfg.layout.models)
        s3 = store(cfg)
        assert name and objectstore.read_marker(s3, f"models/{name}") is None     # not published
        proxy.fail_puts = False
        assert "unchanged" in mlc("build", "--no-wait", config=config)
        assert objectstore.read_marker(s3, f"models/{name}") is not None and store_pointer(s3) == name
        assert len([p for p in cfg.layout.models.iterdir() if (p / "bundle.json").is_file()]) == 1    # no training
    finally:
        proxy.close()
