"""The reports a later run reads back, on an object-store data root: reports/shipped.json (the model
a run shipped, the version it counts for, its training key: shipping.record_shipped) and
reports/latest.json (the last run's rounds). Every publish uploads the reports folder (sync.py);
`mlc run` (and the flow) fetch these two before they run, so that a run from another machine's
cache, or from a fresh one, knows what the last run shipped: round 0 is that model when nothing it
learns from changed (shipping.last_shipped_model), and a new round 0 must beat it
(shipping.incumbent_model). Not fetched, such a rerun trained round 0 again and published it with no
comparison (the mining26 leftovers).
"""

from __future__ import annotations

import json
import logging

from mlc_pipeline.config import Config
from mlc_pipeline.fsutil import sha256_file, write_text_atomic
from mlc_pipeline.objectstore import Store

log = logging.getLogger(__name__)

RUN_RECORDS = ("shipped.json", "latest.json")     # shipping.SHIPPED_RECORD, pipeline.run_stages' record


def pull_run_records(store: Store, cfg: Config, published: dict[str, str]) -> dict[str, str]:
    """Fetch the store's RUN_RECORDS into the cache's reports folder. A cached one this cache changed
    since it last published it (`published`: the sync state's digests of what it published; a
    publish that failed) is kept, and its next publish decides, as for every report. Returns the
    digests of what it fetched, for the sync state (nothing is uploaded back)."""
    fetched = {}
    for name in RUN_RECORDS:
        key, local = f"reports/{name}", cfg.layout.reports / name
        text = store.read_text(key)
        if text is None:
            continue
        if local.is_file():
            if published.get(key) != sha256_file(local):
                log.info("%s: this cache's own, never published: kept (the next publish uploads it)", local)
                continue
            if local.read_text() == text:
                continue
        local.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(local, text)
        fetched[key] = sha256_file(local)
    return fetched


def last_run_bundles(cfg: Config) -> list[str]:
    """The bundles of the last run's rounds (reports/latest.json, as fetched): what `mlc inspect
    --html` shows beside the latest model (report/latest.py); [] without a readable record."""
    path = cfg.layout.reports / "latest.json"
    try:
        rounds = (json.loads(path.read_text()).get("rounds") or []) if path.is_file() else []
        names = [r.get("bundle") for r in rounds if isinstance(r, dict)]
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("%s unreadable (%s): its rounds' bundles are not fetched", path, exc)
        return []
    return [n for n in dict.fromkeys(names) if isinstance(n, str) and n and "/" not in n]
