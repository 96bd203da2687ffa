"""Files another machine may still be about to publish (an object-store data root shared by several
machines, with a PostgreSQL catalog).

A writer records a file in the shared catalog when it lands in its own cache, and uploads it at its
publish, after its command: until then the other machines' catalogs name a file that is neither in
their cache nor in the store. Curate must not call it lost (and queue it for download again): it
leaves such a row as it is, counts it as "not yet published", and the next curate judges it.

A row is taken to await its writer's publish when it last changed during a run, other than this
curate's and this process's own (the collect a curate runs inside), that has not ended, or that ended
less than PUBLISH_GRACE_S ago (a command publishes after
its stage's run ends). A run recorded as running for more than STALE_RUN_S counts as ended: a killed
process never records its end, and its rows must not wait forever. (Its own machine's next command
records it as `crashed`, catalog/runs.py; no other machine can tell, so the rule holds for every
writer.) On a plain local data root, and on an object-store root whose
catalog is SQLite (one writer at a time: the store refuses a second publisher), nothing is ever
awaiting a publish and a missing file is lost at once.
"""

from __future__ import annotations

import logging
import time

from mlc_pipeline.catalog import Catalog
from mlc_pipeline.catalog.store import RUNS_OF_THIS_PROCESS
from mlc_pipeline.config import Config
from mlc_pipeline.sync import uses_local_catalog

log = logging.getLogger(__name__)

STALE_RUN_S = 24 * 3600       # a run still "running" after a day was killed: it counts as ended
PUBLISH_GRACE_S = 15 * 60     # a run's files are published within this long after it ends


def awaiting_publish(cfg: Config, catalog: Catalog, rows: list[dict], own_run: str) -> list[dict]:
    """Of `rows` (files in neither this cache nor the store), those another writer may still publish."""
    if not cfg.data_url or uses_local_catalog(cfg) or not rows:    # one writer: a missing file is lost
        return []
    now = time.time()
    runs = [r for r in catalog.runs_in_flight(now - STALE_RUN_S, now - PUBLISH_GRACE_S)
            if r["run_id"] != own_run and r["run_id"] not in RUNS_OF_THIS_PROCESS]

    def during(row: dict, run: dict) -> bool:
        return run["started_at"] <= row["updated_at"] and (run["finished_at"] is None
                                                           or row["updated_at"] <= run["finished_at"])
    waiting = [row for row in rows if any(during(row, run) for run in runs)]
    if waiting:
        log.warning("%d file(s) the catalog names are in neither this cache nor the store, recorded during a run "
                    "that may not have published yet (e.g. candidate %s, %s): left for the next curate",
                    len(waiting), waiting[0]["id"], waiting[0]["file_path"])
    return waiting
