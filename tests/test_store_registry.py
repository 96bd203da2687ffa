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
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import ENV, MLC
from mlc_pipeline import sync
from mlc_pipeline.config import load_config
from mlc_pipeline.objectstore import read_marker, store_of
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


# A publish killed at an exact point: a real process, killed (SIGKILL) as it is about to write the
# bundle's marker or to move the store's pointer; nothing of the store is faked.
KILLED_PUBLISH = """
import os, shutil, signal, sys
from mlc_pipeline import sync
from mlc_pipeline.config import load_config
from mlc_pipeline.objectstore import MARKER, Store
config, point, bundle = sys.argv[1:]
write_text, replace_text = Store.write_text, Store.replace_text
def killed_at(name):
    if name == point:
        os.kill(os.getpid(), signal.SIGKILL)
def marker_written(self, rel, text):
    if rel == "models/m3/" + MARKER:
        killed_at("marker")             # every file of the bundle is up, its marker is not
    return write_text(self, rel, text)
def pointer_moved(self, rel, text, tag):
    if rel == "models/LATEST":
        killed_at("pointer")            # the bundle is published (its marker), the pointer not moved
    return replace_text(self, rel, text, tag)
Store.write_text, Store.replace_text = marker_written, pointer_moved
cfg = load_config(config)
sync.pull(cfg, "train")
shutil.copytree(bundle, cfg.layout.models / "m3")          # `mlc train`: a new bundle, made LATEST
(cfg.layout.models / "LATEST").write_text("m3\\n")
sync.publish(cfg)
"""


def killed_publishing_m3(config: Path, bundle: Path, point: str) -> None:
    creds = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
             if k in os.environ}
    killed = subprocess.run([sys.executable, "-c", KILLED_PUBLISH, str(config), point, str(bundle)],
                            env={**ENV, **creds}, text=True, capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]


@pytest.mark.parametrize("point,then", [("pointer", "mine"), ("pointer", "collect"), ("marker", "mine")])
def test_a_publish_killed_before_the_pointer_moved_is_finished_by_the_next_command(
        tmp_path, store_url, published, trained_shapes_bundle, point, then, caplog):
    """kill -9 after m3's marker and before models/LATEST moved: the rerun saw m3 published and never
    moved the pointer, and `mlc mine`'s fetch put the cache's LATEST back to m2 (mining then scored
    with the model the training had replaced; a `mlc run` trained round 0 again with no comparison).
    The publish records the move it owes first; the next command that publishes finishes it."""
    cfg = load_config(published)
    killed_publishing_m3(published, trained_shapes_bundle[1], point)
    store = store_of(cfg)
    assert store_pointer(store) == "m2" and cached_latest(cfg) == "m3"
    assert (read_marker(store, "models/m3") is not None) == (point == "pointer")
    with caplog.at_level(logging.INFO, logger="mlc_pipeline"):
        sync.pull(cfg, then)                # `mlc mine` fetches the model; `mlc collect` does not
        assert store_pointer(store) == "m3" and cached_latest(cfg) == "m3", caplog.text    # before it runs
        sync.publish(cfg)
    assert store_pointer(store) == "m3" and cached_latest(cfg) == "m3", caplog.text
    assert read_marker(store, "models/m3")["files"].keys() >= {"bundle.json", "export.pkl"}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    other = load_config(cache_config(tmp_path, store_url, "cache-b"))
    sync.pull(other, "mine")                # and another machine mines with it
    assert cached_latest(other) == "m3" and (other.layout.models / "m3" / "export.pkl").is_file()


def test_a_move_made_since_the_killed_publish_is_never_undone(tmp_path, store_url, published, trained_shapes_bundle,
                                                              caplog):
    """What the killed publish owed is a compare-and-swap from the pointer it began with: another machine
    that promoted m1 meanwhile keeps it; m3 stays published, not LATEST, said in a warning."""
    cfg = load_config(published)
    killed_publishing_m3(published, trained_shapes_bundle[1], "pointer")
    assert run_mlc("promote", "m1", "-c", str(cache_config(tmp_path, store_url, "cache-b"))).returncode == 0
    with caplog.at_level(logging.WARNING, logger="mlc_pipeline"):
        sync.pull(cfg, "mine")
        sync.publish(cfg)
    assert store_pointer(store_of(cfg)) == "m1" and cached_latest(cfg) == "m1"
    assert "moved to m1 by another machine" in caplog.text and "m3 is published" in caplog.text, caplog.text


def test_a_promote_here_after_the_killed_publish_is_the_choice_kept(tmp_path, store_url, published,
                                                                    trained_shapes_bundle):
    """`mlc promote m1` on the same cache after the kill: the user chose m1 after the training; the next
    command does not move the pointer to m3."""
    cfg = load_config(published)
    killed_publishing_m3(published, trained_shapes_bundle[1], "pointer")
    res = run_mlc("promote", "m1", "-c", str(published))
    assert res.returncode == 0, res.stderr[-2000:]
    sync.pull(cfg, "mine")
    sync.publish(cfg)
    assert store_pointer(store_of(cfg)) == "m1" and cached_latest(cfg) == "m1"


def test_a_bundle_the_cache_did_not_make_latest_never_becomes_the_stores(tmp_path, store_url, published,
                                                                         trained_shapes_bundle):
    """A mining round the shipping rule refused: its bundle is published (for `mlc models` and `mlc
    promote`) and the cache's LATEST stays; nothing ever moves the store's pointer to it."""
    cfg = load_config(published)
    sync.pull(cfg, "run")
    shutil.copytree(trained_shapes_bundle[1], cfg.layout.models / "m3-refused")
    sync.publish(cfg)
    sync.pull(cfg, "mine")
    sync.publish(cfg)
    assert read_marker(store_of(cfg), "models/m3-refused") is not None
    assert store_pointer(store_of(cfg)) == "m2" and cached_latest(cfg) == "m2"


def test_listing_from_a_fresh_cache_fetches_the_bundles_metadata_alone(tmp_path, store_url, published,
                                                                     trained_shapes_bundle):
    """The first `mlc models` of a fresh cache downloaded every bundle whole, weights included, to list
    them. It reads each bundle's bundle.json and metrics.json (and its marker) alone; the table is the
    one a warm cache prints, and a bundle named afterwards (`predict`, `promote`) is fetched whole."""
    warm = run_mlc("models", "-c", str(published))
    fresh = cache_config(tmp_path, store_url, "cache-f")
    listing = run_mlc("models", "-c", str(fresh))
    assert listing.returncode == 0, listing.stderr[-2000:]
    assert listing.stdout == warm.stdout and "| LATEST | m2 |" in listing.stdout and "UNUSABLE" not in listing.stdout
    cache = load_config(fresh).data_dir
    fetched = {p.relative_to(cache).as_posix(): p.stat().st_size for p in cache.rglob("*") if p.is_file()}
    weights = (trained_shapes_bundle[1] / "export.pkl").stat().st_size
    assert not [p for p in fetched if p.endswith("export.pkl")], sorted(fetched)
    assert sum(fetched.values()) < weights / 4, fetched
    assert {p.rsplit("/", 1)[-1] for p in fetched if p.startswith("models/")} <= {
        "bundle.json", "metrics.json", "_COMPLETE", "LATEST"}, sorted(fetched)
    promoted = run_mlc("promote", "m1", "-c", str(fresh))
    assert promoted.returncode == 0, promoted.stderr[-2000:]
    assert (load_config(fresh).layout.models / "m1" / "export.pkl").is_file()
    again = run_mlc("models", "-c", str(fresh))       # m1 whole in the cache now, m2 still listed from the store
    rows = {line.split("|")[2].strip(): line.split("|")[1].strip() for line in again.stdout.splitlines()[2:]}
    assert rows == {"m1": "LATEST", "m2": ""} and "UNUSABLE" not in again.stdout, again.stdout


def test_a_bundle_whose_version_the_store_lacks_waits_for_the_publish(tmp_path, store_url, published,
                                                                     trained_shapes_bundle):
    """Killed before the marker of a bundle trained on a version never published (its build's publish
    failed too): the next command's fetch does not publish the bundle ahead of its version (markers go
    up in order: versions, then models); the move stays owed until that version is in the store."""
    bundle = tmp_path / "m3-on-v7"
    shutil.copytree(trained_shapes_bundle[1], bundle)
    meta = json.loads((bundle / "bundle.json").read_text())
    (bundle / "bundle.json").write_text(json.dumps({**meta, "dataset_version": "default/v7"}))
    cfg = load_config(published)
    killed_publishing_m3(published, bundle, "marker")
    store = store_of(cfg)
    sync.pull(cfg, "collect")
    assert read_marker(store, "models/m3") is None and store_pointer(store) == "m2"
    store.write_text("datasets/default/v7/_COMPLETE", json.dumps({"version": "v7", "files": {}}))  # v7 published
    sync.pull(cfg, "collect")
    assert read_marker(store, "models/m3") is not None and store_pointer(store) == "m3" and cached_latest(cfg) == "m3"
