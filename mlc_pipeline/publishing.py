"""A publish to an object store that fails (sync.publish): what it leaves, recorded and said.

The stages record their runs `completed` before the publish that uploads their work. When that publish
fails, those runs of this process are recorded `failed`, the reason in their summary, as any other
failure is (the scale26 audit: `mlc inspect` showed a completed collect whose 433 files were in no
store). Where the store failed under the publish (unreachable, 503, reset: an error `store_errors`
turned into one line), that line also says what is kept and what to do: nothing is lost, the cache and
the catalog hold it, and the next command that publishes from this cache uploads it (`mlc build`
cheaply, where a rerun of `mlc train` would train another model). A publish refused
on purpose (the catalog moved, another machine's catalog newer) keeps its own line, which says so.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

from mlc_pipeline.catalog import Catalog, CatalogError
from mlc_pipeline.catalog.runs import RUNS_OF_THIS_PROCESS
from mlc_pipeline.config import Config
from mlc_pipeline.objectstore import ObjectStoreError
from mlc_pipeline.secrets import redact

log = logging.getLogger(__name__)
PUBLISHED_RUNS: set[str] = set()    # runs of this process whose work a publish has uploaded
# What publishes a cache (sync.synced, pipeline's publish, review's sync.served): a rerun of the failed
# command would redo its work (a train trained a second model: the beyond28 audit), `mlc build` publishes
PUBLISHERS = "collect, curate, build, train, mine, remove, run, review"


@contextmanager
def failed_publish_recorded(cfg: Config) -> Iterator[None]:
    """Around a publish of `cfg`'s cache: on an ObjectStoreError, this process's runs not published yet
    are recorded failed, and a store's failure says what is kept; on success they count as published."""
    unpublished = set(RUNS_OF_THIS_PROCESS) - PUBLISHED_RUNS
    try:
        yield
    except ObjectStoreError as exc:
        failed = record_failed(cfg, sorted(unpublished), f"not published to {cfg.data_url}: {redact(str(exc))}")
        if exc.__cause__ is None:       # refused on purpose: its line says what happens to the work
            raise
        runs = f" (run{'s' * (len(failed) > 1)} {', '.join(failed)} recorded as failed)" if failed else ""
        raise ObjectStoreError(
            f"{str(exc).rstrip('.')}. Not published, nothing lost: what this command wrote is kept in this "
            f"machine's cache {cfg.data_dir} and in the catalog, and the next command that publishes from this "
            f"cache uploads it ({PUBLISHERS}): `mlc build -c CONFIG` does it without collecting or training "
            f"again (with nothing new in the catalog since the latest version it answers \"unchanged\" and only "
            f"publishes){runs}") from exc.__cause__
    PUBLISHED_RUNS.update(unpublished)


def record_failed(cfg: Config, run_ids: list[str], error: str) -> list[str]:
    """Record `run_ids` (those recorded completed) as failed with `error`; the runs recorded so. A
    catalog that cannot be written now is said in a warning: the publish's own error is the one raised."""
    if not run_ids:
        return []
    try:
        with Catalog(cfg.catalog_path) as catalog:
            return catalog.fail_completed_runs(run_ids, error)
    except CatalogError as exc:
        log.warning("could not record the runs %s as failed in the catalog (%s)", ", ".join(run_ids), exc)
        return []
