"""The model registry of an object-store data root, further (storemodels.py): a pointer written
again with the model it named before (a re-promote) is still a move to every compare-and-swap from
the older write. On moto (S3, conditional writes) and a `file://` store."""

from __future__ import annotations

import logging

import pytest

from test_store_registry import cache_config, cached_latest, killed_publishing_m3, run_mlc, trained

from mlc_pipeline import sync
from mlc_pipeline.config import load_config
from mlc_pipeline.objectstore import store_of
from mlc_pipeline.storemodels import POINTER_KEY, store_pointer


@pytest.fixture
def two_models(tmp_path, store_url, trained_shapes_bundle):
    """Machine A trained m1 then m2 and published both: the store's LATEST is m2."""
    config = cache_config(tmp_path, store_url, "cache-a")
    cfg = load_config(config)
    trained(cfg, trained_shapes_bundle[1], "m1", "m2")
    sync.publish(cfg)
    assert store_pointer(store_of(cfg)) == "m2"
    return config


def promote_elsewhere(tmp_path, store_url, *names: str) -> None:
    "`mlc promote NAME` on another machine, for each of `names` in turn."
    machine = cache_config(tmp_path, store_url, "cache-b")
    for name in names:
        res = run_mlc("promote", name, "-c", str(machine))
        assert res.returncode == 0, res.stderr[-2000:]


def test_a_promote_back_to_the_model_a_killed_publish_began_from_is_kept(tmp_path, store_url, two_models,
                                                                         trained_shapes_bundle, caplog):
    """Killed after its bundle's marker, a publish owes the pointer a move from the pointer it began
    with (m2). Another machine then promoted m1 and m2 again (the user's choice, made after that
    training): the pointer held the bytes it held before, so the same ETag (S3) or text, and the owed
    move passed its compare-and-swap and replaced the user's choice with the killed training's model.
    Each write of the pointer is its own (a token in it): the move fails and says so."""
    cfg = load_config(two_models)
    killed_publishing_m3(two_models, trained_shapes_bundle[1], "pointer")
    promote_elsewhere(tmp_path, store_url, "m1", "m2")
    with caplog.at_level(logging.WARNING, logger="mlc_pipeline"):
        sync.pull(cfg, "mine")
        sync.publish(cfg)
    assert store_pointer(store_of(cfg)) == "m2" and cached_latest(cfg) == "m2", caplog.text
    assert "moved to m2 by another machine" in caplog.text and "m3 is published" in caplog.text, caplog.text


def test_a_training_does_not_replace_a_promote_back_made_while_it_ran(tmp_path, store_url, two_models,
                                                                      trained_shapes_bundle, caplog):
    """The same without a kill: a training began with m2 as LATEST; meanwhile the user promoted m1, then
    m2 back. Its publish moved the pointer over that choice as if nobody had touched it."""
    cfg = load_config(two_models)
    store = store_of(cfg)
    sync.pull(cfg, "train")
    promote_elsewhere(tmp_path, store_url, "m1", "m2")
    trained(cfg, trained_shapes_bundle[1], "m4")
    with caplog.at_level(logging.WARNING, logger="mlc_pipeline"):
        sync.publish(cfg)
    assert store_pointer(store) == "m2" and cached_latest(cfg) == "m2", caplog.text
    assert "moved to m2 by another machine" in caplog.text, caplog.text
    assert store.read_text(POINTER_KEY).splitlines()[0] == "m2"     # a person reads the name first
