"""`mlc remove` on an object-store data root names every model bundle of the store that learned the
photo, not only those in the cache (the last-session note: "checks only the models in the cache"): it
reads each bundle's bundle.json and the versions' manifests from the store, never a bundle's weights;
and when the store cannot be read for them, it says the check is incomplete, the takedown done and
published all the same. A real S3-compatible server (moto) on loopback, the tiny project's v1 and v2
built through the CLI; the bundles are the files a training publishes that the check reads."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest

import helpers
from helpers import ENV, MLC, Gateway, free_port, tiny_config
from mlc_pipeline import objectstore, sync
from mlc_pipeline.catalog import Catalog, overrides
from mlc_pipeline.config import load_config
from mlc_pipeline.manifest import read_manifest

pytestmark = pytest.mark.slow
BUCKET = "mlc-remove-models"


def mlc(*args: str, config: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    creds = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    res = subprocess.run(MLC + [args[0], "-c", str(config), *args[1:]], env={**ENV, **creds, **(env or {})},
                         text=True, capture_output=True, timeout=600)
    assert res.returncode == 0, f"mlc {' '.join(args)}:\n{res.stdout}\n{res.stderr[-3000:]}"
    return res


def bucket_config(folder: Path, endpoint: str, cache: str) -> Path:
    return helpers.bucket_config(folder, endpoint, BUCKET, cache)


def publish_bundle(store: objectstore.Store, folder: Path, name: str, meta: dict) -> None:
    """A bundle as a training publishes it (its files, then its marker): bundle.json, metrics.json, and
    weights that a takedown must never fetch."""
    bundle = folder / name
    bundle.mkdir(parents=True)
    (bundle / "bundle.json").write_text(json.dumps({"format": 1, "arch": "resnet18", **meta}))
    (bundle / "metrics.json").write_text(json.dumps({"test": {}}))
    (bundle / "export.pkl").write_bytes(os.urandom(4096))
    objectstore.push_folder(store, bundle, f"models/{name}", {"bundle": name})


@pytest.fixture(scope="module")
def world(s3_server, tmp_path_factory):
    """Machine A built v1, rejected photo P in review and built v2 without it. The store holds three
    bundles no other cache ever fetched: m1 trained on v1; m2, the store's LATEST, continued m1's
    network on v2 (a mining round's retrain: its bundle.json records both trainings); m3, from before
    bundle.json recorded them, continued m1 on v2 too (its chain walked through m1's bundle.json).
    Q: another photo of v1's train split, in v2 too."""
    import s3fs
    s3fs.S3FileSystem(endpoint_url=s3_server).mkdir(BUCKET)
    folder = tmp_path_factory.mktemp("store-remove")
    tiny_config(folder, free_port())
    config = bucket_config(folder, s3_server, "cache-a")
    for command in ("collect", "curate", "build"):
        mlc(command, "--no-progress" if command == "collect" else "--no-wait", config=config)
    cfg = load_config(config)
    trained = [r for r in read_manifest(cfg.layout.version("v1") / "manifest.csv") if r["split"] == "train"]
    p, q = trained[0], trained[1]
    with Catalog(cfg.catalog_path) as catalog:        # as the review app records a reject
        overrides.ensure_schema(catalog)
        overrides.act(catalog, catalog.get_by_photo(p["source"], p["photo_id"])["id"], "reject", "blurry", "test",
                      list(cfg.classes))
    assert "v2: published" in mlc("build", "--no-wait", config=config).stdout
    in_v2 = {(r["source"], r["photo_id"]) for r in read_manifest(cfg.layout.version("v2") / "manifest.csv")}
    assert (p["source"], p["photo_id"]) not in in_v2 and (q["source"], q["photo_id"]) in in_v2
    store, name = objectstore.store_of(cfg), cfg.build.name
    v1, v2 = {"dataset_version": f"{name}/v1", "left_out": []}, {"dataset_version": f"{name}/v2", "left_out": []}
    publish_bundle(store, folder / "bundles", "m1", {"dataset_version": f"{name}/v1", "learned_from": [v1],
                                                    "created_at": "2026-12-01T00:00:00"})
    publish_bundle(store, folder / "bundles", "m2", {"dataset_version": f"{name}/v2", "learned_from": [v1, v2],
                                                    "weights": {"continued_from": "m1"},
                                                    "created_at": "2026-12-02T00:00:00"})
    publish_bundle(store, folder / "bundles", "m3", {"dataset_version": f"{name}/v2",
                                                    "weights": {"continued_from": "m1"},
                                                    "created_at": "2026-12-03T00:00:00"})
    store.write_text("models/LATEST", "m2\n")
    return SimpleNamespace(folder=folder, endpoint=s3_server, cfg=cfg, p=p, q=q)


def model_lines(out: str) -> dict[str, str]:
    "`mlc remove`'s bundle lines: name -> what follows it."
    return dict(re.findall(r"^  (m\d) (.*)$", out, re.M))


def test_a_takedown_names_every_store_bundle_that_learned_the_photo(world):
    """m2 and m3 learned P through m1's network, though their own version (v2) does not list it: a
    cache that never fetched them named m1 alone ("trained on a version that holds them"), and said
    nothing of LATEST."""
    fresh = bucket_config(world.folder, world.endpoint, "cache-p")
    out = mlc("remove", "--photo-id", world.p["photo_id"], "--reason", "owner request", config=fresh).stdout
    photo = f"{world.p['source']}:{world.p['photo_id']}"
    assert model_lines(out) == {"m1": f"(in the store): 1 photo(s): {photo}",
                                "m2": f"(in the store, the store's LATEST): 1 photo(s): {photo}",
                                "m3": f"(in the store): 1 photo(s): {photo}"}, out
    assert "\nthe store's LATEST is one of them: " in out and "not checked" not in out, out
    cache = load_config(fresh).data_dir       # the bundles' metadata and the manifests alone
    assert not list((cache / "models").rglob("export.pkl")), "a takedown fetched a bundle's weights"
    assert not [p for p in (cache / "datasets").rglob("*") if p.is_file() and ".listings" not in p.parts]


class ModelsUnreachable(Gateway):
    """A front to the S3 server that resets every connection asking for a model bundle's file (its
    marker, its bundle.json): the store fails just as the takedown, published, goes on to read them."""

    def __init__(self, port: int):
        self.refused = 0
        super().__init__(port)

    def request(self, conn: SimpleNamespace, data: bytes) -> None:
        if re.match(rb"GET /\S*/models/[^/ ]+/\S+ ", data):
            with self.lock:
                self.refused += 1
            raise ConnectionResetError("the store is out of reach")


def out_of_reach(endpoint: str, config: Callable[[str], Path], *args: str) -> tuple[str, str, str]:
    """`mlc ARGS` with the store's model bundles out of reach (`ModelsUnreachable` in front of the S3
    server at `endpoint`; `config`: the config that points at a given address), under credentials of
    its own that it must never say: (its stdout, all it said, the data root's URL)."""
    proxy = ModelsUnreachable(int(endpoint.rsplit(":", 1)[1]))
    at = config(proxy.address)
    secrets = {"AWS_ACCESS_KEY_ID": "AKIAREMOVETEST7Q2X", "AWS_SECRET_ACCESS_KEY": "rm-secret-5d0c81e2f7"}
    try:
        res = mlc(*args, config=at, env=secrets)
    finally:
        proxy.close()
    assert proxy.refused, "the proxy refused nothing: the test tests nothing"
    said = res.stdout + res.stderr
    assert not [s for s in secrets.values() if s in said], said
    return res.stdout, said, load_config(at).data_url


def test_a_store_out_of_reach_makes_the_check_incomplete_said_and_the_takedown_stands(world):
    """The check failing is one line saying so, after the takedown's lines, with no credentials in it
    (it was a one-line error, exit 2, the takedown's lines lost); the same command again checks them."""
    with Catalog(world.cfg.catalog_path, readonly=True) as catalog:
        rel = catalog.stored_path(catalog.get_by_photo(world.q["source"], world.q["photo_id"])["file_path"])
    assert rel in sync.file_listing(objectstore.store_of(world.cfg))
    out, said, url = out_of_reach(world.endpoint, lambda at: bucket_config(world.folder, at, "cache-q"),
                                  "remove", "--photo-id", world.q["photo_id"], "--reason", "owner request")
    assert "removed 1 photo(s)" in out, said
    assert f"the store's model bundles were NOT all checked, the check is incomplete (object store {url}: " in out \
        and "run the same `mlc remove` again to check them" in out, said
    assert rel not in sync.file_listing(objectstore.store_of(world.cfg)), "the takedown was not published"
    again = mlc("remove", "--photo-id", world.q["photo_id"], "--reason", "owner request",
                config=bucket_config(world.folder, world.endpoint, "cache-q")).stdout
    assert "1 already removed" in again and set(model_lines(again)) == {"m1", "m2", "m3"}, again
    assert "NOT all checked" not in again, again
