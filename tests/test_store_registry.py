"""The model registry on an object-store data root (storemodels.py): `mlc promote` moves the store's
models/LATEST and no later fetch moves it back; `mlc models`, `mlc predict --model latest` and
`mlc promote` from a fresh cache see the store's bundles; two trainings publishing LATEST at once
never overwrite each other silently (the scale26 audit, finding 2). On moto (S3, conditional writes)
and a `file://` store."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers import ENV, MLC
from mlc_pipeline import sync
from mlc_pipeline.config import load_config
from mlc_pipeline.objectstore import store_of
from mlc_pipeline.storemodels import POINTER_KEY, store_pointer

CLASSES = {"classes": {"cat": {"queries": ["cat"], "count": 1}}, "other": {"queries": ["x"], "count": 1}}


def cache_config(tmp_path: Path, store_url: tuple[str, dict], name: str) -> Path:
    "A config file for one machine: the store's URL and a cache of its own."
    url, options = store_url
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"data_dir": url, "cache_dir": str(tmp_path / name), "storage_options": options,
                                    **CLASSES}))
    return path


def run_mlc(*args: str) -> subprocess.CompletedProcess:
    "`mlc` as a user runs it, with the store's credentials (s3_server's) in its environment."
    creds = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
             if k in os.environ}
    return subprocess.run(MLC + list(args), env={**ENV, **creds}, text=True, capture_output=True, timeout=300)


def trained(cfg, bundle: Path, *names: str) -> None:
    """Bundles `names` in this cache (copies of one trained bundle), the last one LATEST, as `mlc train`
    leaves them."""
    for name in names:
        shutil.copytree(bundle, cfg.layout.models / name)
    (cfg.layout.models / "LATEST").write_text(names[-1] + "\n")


def cached_latest(cfg) -> str:
    return (cfg.layout.models / "LATEST").read_text().strip()


@pytest.fixture
def published(tmp_path, store_url, trained_shapes_bundle):
    """Machine A trained m1 then m2 and published both: the store's LATEST is m2."""
    config = cache_config(tmp_path, store_url, "cache-a")
    cfg = load_config(config)
    trained(cfg, trained_shapes_bundle[1], "m1", "m2")
    sync.publish(cfg)
    assert store_pointer(store_of(cfg)) == "m2"
    return config


def test_promote_moves_the_stores_latest_and_the_next_fetch_keeps_it(tmp_path, store_url, published):
    """It moved only the cache's LATEST: no other machine saw it, and the next `mlc mine` (its fetch of
    the model) put the demoted model back and scored the pool with it."""
    cfg = load_config(published)
    res = run_mlc("promote", "m1", "-c", str(published))
    assert res.returncode == 0, res.stderr[-2000:]
    assert store_pointer(store_of(cfg)) == "m1" and cached_latest(cfg) == "m1"
    assert f"{cfg.data_url}/models/LATEST: m2 -> m1" in res.stdout, res.stdout
    sync.pull(cfg, "mine")                      # what `mlc mine` fetches first
    assert cached_latest(cfg) == "m1"
    other = load_config(cache_config(tmp_path, store_url, "cache-b"))
    sync.pull(other, "mine")                    # and another machine's mine scores with it
    assert cached_latest(other) == "m1" and (other.layout.models / "m1" / "export.pkl").is_file()


def test_a_fresh_cache_lists_predicts_with_and_promotes_the_stores_models(tmp_path, store_url, published,
                                                                          trained_shapes_bundle):
    """`mlc models` said "no model bundles", `predict --model latest` "no model trained or promoted there
    yet (train one ...)", `promote NAME` "no model bundle": each read only the empty cache."""
    listing = run_mlc("models", "-c", str(cache_config(tmp_path, store_url, "cache-b")))
    assert listing.returncode == 0, listing.stderr[-2000:]
    rows = {line.split("|")[2].strip(): line.split("|")[1].strip() for line in listing.stdout.splitlines()[2:]}
    assert rows == {"m1": "", "m2": "LATEST"}, listing.stdout

    manifest = trained_shapes_bundle[0]
    image = manifest.parent / next(r for r in manifest.read_text().splitlines()[1:] if "red_" in r).split(",")[0]
    fresh = cache_config(tmp_path, store_url, "cache-c")
    said = run_mlc("predict", "--model", "latest", "-c", str(fresh), "--json", str(image))
    assert said.returncode == 0, said.stderr[-2000:]
    assert json.loads(said.stdout)[0]["path"] == str(image) and not json.loads(said.stdout)[0]["error"], said.stdout
    assert cached_latest(load_config(fresh)) == "m2"

    promoted = run_mlc("promote", "m1", "-c", str(cache_config(tmp_path, store_url, "cache-d")))
    assert promoted.returncode == 0, promoted.stderr[-2000:]
    assert store_pointer(store_of(load_config(published))) == "m1"


def test_two_trainings_publishing_latest_at_once_warn_the_one_that_lost(tmp_path, store_url, published,
                                                                        trained_shapes_bundle, caplog):
    """Both said "published"; the store's LATEST was whichever published last, with no word to the
    other. The pointer moves from what each command saw when it began: the second is kept from
    overwriting the first's, told which model is LATEST, and its cache follows the store."""
    a, b = load_config(published), load_config(cache_config(tmp_path, store_url, "cache-b"))
    sync.pull(a, "train")
    sync.pull(b, "train")                       # both began with m2 as LATEST
    trained(a, trained_shapes_bundle[1], "a-model")
    sync.publish(a)
    assert store_pointer(store_of(a)) == "a-model"
    trained(b, trained_shapes_bundle[1], "b-model")
    with caplog.at_level(logging.WARNING, logger="mlc_pipeline.sync"):
        sync.publish(b)
    assert store_pointer(store_of(b)) == "a-model"
    assert "moved to a-model by another machine" in caplog.text and "b-model is published" in caplog.text, caplog.text
    assert "models/b-model/_COMPLETE" in store_of(b).listing("models/b-model")
    assert cached_latest(b) == "a-model"
    sync.pull(a, "train")                       # a later training on A moves it as before
    trained(a, trained_shapes_bundle[1], "a-model-2")
    sync.publish(a)
    assert store_pointer(store_of(a)) == "a-model-2"


def test_the_pointer_is_replaced_only_from_the_object_seen(tmp_path, store_url):
    "Store.replace_text: the compare-and-swap itself (S3: If-Match / If-None-Match)."
    store = store_of(load_config(cache_config(tmp_path, store_url, "cache-a")))
    first = store.replace_text(POINTER_KEY, "m1\n", None)
    assert first is not None and store.replace_text(POINTER_KEY, "m0\n", None) is None     # created meanwhile
    second = store.replace_text(POINTER_KEY, "m2\n", first)
    assert second is not None and second != first
    assert store.replace_text(POINTER_KEY, "m3\n", first) is None                         # moved meanwhile
    assert store_pointer(store) == "m2" and store.pointer_tag(POINTER_KEY) == second


def test_a_promote_whose_pointer_moved_meanwhile_is_refused(tmp_path, store_url, published):
    "Another machine moved LATEST between promote's fetch and its publish: one line, nothing moved."
    from mlc_pipeline.model.registry import promote
    from mlc_pipeline.objectstore import ObjectStoreError
    from mlc_pipeline.storemodels import promoting
    cfg = load_config(cache_config(tmp_path, store_url, "cache-b"))
    with pytest.raises(ObjectStoreError, match=r"models/LATEST was moved to m0 by another machine while promoting: "
                                               r"m1 is not promoted \(nothing changed here\)"):
        with promoting(cfg, "m1") as publish:
            store_of(cfg).write_text(POINTER_KEY, "m0\n")          # the other machine's promote
            promote("m1", cfg.layout.models, publish)
    assert store_pointer(store_of(cfg)) == "m0" and not (cfg.layout.models / "LATEST").exists()
