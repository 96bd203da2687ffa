"""What the last run shipped travels with an object-store data root (storereports.py): reports/
shipped.json and reports/latest.json are fetched by `mlc run` (and the flow) into any cache, so that
a rerun on another machine, or from a fresh cache, reuses the shipped round 0 or must beat it,
instead of training round 0 again and publishing it with no comparison. On moto (S3) and a
`file://` store."""

from __future__ import annotations

import json

import pytest

from test_store_registry import cache_config, cached_latest, trained

from mlc_pipeline import sync
from mlc_pipeline.config import load_config
from mlc_pipeline.objectstore import store_of
from mlc_pipeline.shipping import (SHIPPED_RECORD, last_shipped_model, record_shipped, round0_key, shipped_model,
                                   shipped_with)

BUNDLE = "default-v1-r0-20261207T000000"


def _shipped_from_cache_a(tmp_path, store_url, bundle_source):
    """Machine A's run shipped BUNDLE (trained on v1) and published: models, LATEST and reports."""
    a = load_config(cache_config(tmp_path, store_url, "cache-a"))
    trained(a, bundle_source, BUNDLE)
    record_shipped(a, {"bundle": BUNDLE, "dataset_version": "v1"}, round0_key(a))
    (a.layout.reports / "latest.json").write_text(json.dumps({"shipped": BUNDLE, "rounds": []}))
    sync.publish(a)
    return a


def test_a_fresh_cache_knows_the_model_the_last_run_shipped(tmp_path, store_url, trained_shapes_bundle):
    a = _shipped_from_cache_a(tmp_path, store_url, trained_shapes_bundle[1])
    assert {f"reports/{SHIPPED_RECORD}", "reports/latest.json"} <= set(store_of(a).listing("reports"))
    b = load_config(cache_config(tmp_path, store_url, "cache-b"))
    sync.pull(b, "run")                         # what `mlc run` and the flow fetch first
    assert cached_latest(b) == BUNDLE
    for name in (SHIPPED_RECORD, "latest.json"):
        assert (b.layout.reports / name).read_text() == (a.layout.reports / name).read_text()
    key = round0_key(b)
    assert shipped_with(b, key) == ("v1", b.layout.models / BUNDLE)          # a new round 0 must beat it
    reused = last_shipped_model(b, {"published": False, "version": "v1"}, shipped_model(b, key))   # nothing new
    assert reused is not None and reused["bundle"] == BUNDLE and reused["reused"]
    sync.publish(b)                             # what it fetched is recorded as the store's, not its own
    assert sync.read_state(b)["published"][f"reports/{SHIPPED_RECORD}"] == sync.read_state(a)["published"][
        f"reports/{SHIPPED_RECORD}"]


def test_a_record_this_cache_never_published_is_kept_and_a_published_one_follows_the_store(
        tmp_path, store_url, trained_shapes_bundle):
    """A publish that failed leaves this cache's own record: fetching would replace it with an older
    one. One this cache published and another machine replaced since is fetched."""
    a = _shipped_from_cache_a(tmp_path, store_url, trained_shapes_bundle[1])
    b = load_config(cache_config(tmp_path, store_url, "cache-b"))
    sync.pull(b, "run")
    own = b.layout.reports / SHIPPED_RECORD
    own.write_text('{"shipped": "never-published"}')
    sync.pull(b, "run")
    assert own.read_text() == '{"shipped": "never-published"}'
    sync.publish(b)                             # published now: the store's from here on
    (a.layout.reports / SHIPPED_RECORD).write_text('{"shipped": "from-a"}')
    sync.pull(a, "run")                         # a's own, unpublished: kept, then published
    sync.publish(a)
    sync.pull(b, "run")
    assert own.read_text() == '{"shipped": "from-a"}'


def test_a_fresh_cache_fetches_the_record_of_what_the_shipped_model_learned_in_the_bundles_it_continued(
        tmp_path, store_url, trained_shapes_bundle):
    """A model trained before bundle.json recorded `learned_from` names only the bundle it continued, and
    a fresh cache fetched LATEST alone (review29 finding 5): what it learned could not be told, so once the
    catalog recorded any takedown it was neither reused nor kept, and round 0 replaced it every night with
    no comparison. Fetching the model now fetches each such ancestor's bundle.json and metrics.json, never
    its weights, into models/.listings/ (as `mlc models` lists a store bundle): the model says what it
    learned. An ancestor gone from the store still cannot be told, and that is said, naming both."""
    from mlc_pipeline.model.lineage import UnknownLearning, learned_from
    from mlc_pipeline.storemodels import pull_model
    a = load_config(cache_config(tmp_path, store_url, "cache-a"))
    trained(a, trained_shapes_bundle[1], "m0", "m1", "m2")
    for name, parent, version in (("m0", None, "v1"), ("m1", "m0", "v2"), ("m2", "m1", "v2")):
        path = a.layout.models / name / "bundle.json"      # as bundles trained before the record are
        meta = {k: v for k, v in json.loads(path.read_text()).items() if k != "learned_from"}
        path.write_text(json.dumps({**meta, "weights": {**(meta.get("weights") or {}), "continued_from": parent},
                                    "dataset_version": f"default/{version}",
                                    "takedowns": {"checked": True, "left_out": [f"local:{name}"]}}))
    sync.publish(a)
    chain = [{"dataset_version": f"default/{v}", "left_out": [f"local:{n}"]} for n, v in
             (("m0", "v1"), ("m1", "v2"), ("m2", "v2"))]
    assert learned_from(a.layout.models / "m2") == chain

    b = load_config(cache_config(tmp_path, store_url, "cache-b"))
    assert pull_model(store_of(b), b) == "m2"
    assert learned_from(b.layout.models / "m2") == chain
    listed = b.layout.models / ".listings"
    assert sorted(p.name for p in listed.iterdir()) == ["m0", "m1"] and not (b.layout.models / "m1").exists()
    assert sorted(f.name for f in (listed / "m0").iterdir()) == ["_COMPLETE", "bundle.json", "metrics.json"]
    from mlc_pipeline.storemodels import pull_lineage
    assert pull_lineage(store_of(b), b, "m2") == []         # fetched once: nothing fetched again

    store_of(a).delete([k for k in store_of(a).listing("models") if k.startswith("models/m0/")])
    c = load_config(cache_config(tmp_path, store_url, "cache-c"))
    assert pull_model(store_of(c), c) == "m2"
    with pytest.raises(UnknownLearning, match=r"cannot tell which images m2 trained on \(the bundle it continued, "
                                              r"m0, unread: MetaError"):
        learned_from(c.layout.models / "m2")
