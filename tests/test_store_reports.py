"""What the last run shipped travels with an object-store data root (storereports.py): reports/
shipped.json and reports/latest.json are fetched by `mlc run` (and the flow) into any cache, so that
a rerun on another machine, or from a fresh cache, reuses the shipped round 0 or must beat it,
instead of training round 0 again and publishing it with no comparison. On moto (S3) and a
`file://` store."""

from __future__ import annotations

import json

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

