"""Curate beside another machine's collect (curate/unpublished.py): two caches sharing one PostgreSQL
catalog and one store. A file the catalog names that is in neither this cache nor the store is lost
only when no writer can still publish it; on real fixture photos, with a real PostgreSQL server."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import FIXTURES

from mlc_pipeline import sync
from mlc_pipeline.catalog import Catalog, Found
from mlc_pipeline.catalog.store import RUNS_OF_THIS_PROCESS
from mlc_pipeline.collect.rawfiles import final_path
from mlc_pipeline.config import parse_config
from mlc_pipeline.curate.stage import curate
from mlc_pipeline.curate.unpublished import STALE_RUN_S
from mlc_pipeline.objectstore import store_of

PHOTOS = sorted((FIXTURES / "hymenoptera" / "ants").glob("*.jpg"))
pytestmark = pytest.mark.skipif(not PHOTOS, reason="fixture photos missing (../shared/fixtures)")
CLASSES = {"classes": {"ants": {"queries": ["ants"], "count": 10}}, "other": {"queries": ["x"], "count": 1}}


def machine(tmp_path: Path, name: str, pg_url: str | None):
    (tmp_path / "store").mkdir(exist_ok=True)
    if pg_url is None:          # a plain local data root, its SQLite catalog
        return parse_config({"data_dir": str(tmp_path / name), **CLASSES})
    return parse_config({"data_dir": f"file://{tmp_path}/store", "cache_dir": str(tmp_path / name),
                         "storage_options": {"auto_mkdir": True}, "catalog": {"url": pg_url}, **CLASSES})


def download(cfg, photo_id: str, run_id: str) -> Path:
    """What collect does for one photo: the file into the cache, then the row, in run `run_id`."""
    path = final_path(cfg.layout.raw("flickr"), photo_id, "jpg")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(PHOTOS[int(photo_id) % len(PHOTOS)].read_bytes())
    with Catalog(cfg.catalog_path) as c:
        c.upsert_found([Found("flickr", photo_id, "train", "ants", "ants", "http://x/a.jpg", "url_m", 1, 1, 4, "CC",
                              "o", "o", "t", None, None, "")], run_id)
        c.set_status(c.get_by_photo("flickr", photo_id)["id"], "downloaded", None, run_id, "download",
                     file_path=str(path))
    return path


def states(cfg) -> dict[str, tuple[str, str | None]]:
    with Catalog(cfg.catalog_path) as c:
        return {r["photo_id"]: (r["status"], r["reason"]) for r in c.candidates()}


def age(cfg, run_id: str, seconds: float) -> None:
    """Move a run, and the rows it changed, `seconds` into the past."""
    with Catalog(cfg.catalog_path) as c:
        c.db.execute("UPDATE runs SET started_at=started_at-?, finished_at=finished_at-? WHERE run_id=?",
                     (seconds, seconds, run_id))
        c.db.execute("UPDATE candidates SET updated_at=updated_at-? WHERE run_id=?", (seconds, run_id))


def test_another_machines_unpublished_downloads_are_left_for_the_next_curate(tmp_path, pg_url):
    """B's curate, 9 s after A's collect started, marked A's fresh downloads (in A's cache, not yet
    published) `failed transient:file-missing`, and they were downloaded again. They are left as they
    are now, counted as not yet published, and judged by the curate after A's publish. A file lost for
    good (in neither place, its run long over) and one of a run killed a day ago are still re-queued."""
    a, b = machine(tmp_path, "cache-a", pg_url), machine(tmp_path, "cache-b", pg_url)
    with Catalog(a.catalog_path) as c:
        old, killed = c.start_run("collect"), c.start_run("collect")
        c.finish_run(old, "completed")
    lost = download(a, "1", old)
    sync.publish(a)
    lost.unlink()
    store_of(a).delete([lost.relative_to(a.data_dir).as_posix()])          # deleted by hand, everywhere
    age(a, old, 3600)
    download(a, "4", killed)
    age(a, killed, STALE_RUN_S + 3600)          # its process was killed a day ago: it never ended
    with Catalog(a.catalog_path) as c:
        running = c.start_run("collect")        # A's collect, still downloading
    RUNS_OF_THIS_PROCESS.difference_update({old, killed, running})     # A is another machine's process
    download(a, "2", running), download(a, "3", running)

    sync.pull(b, "curate")
    summary = curate(b)
    got = states(b)
    assert summary.unpublished == 2
    assert got["2"] == got["3"] == ("downloaded", None)
    assert got["1"] == got["4"] == ("failed", "transient:file-missing")

    with Catalog(a.catalog_path) as c:
        c.finish_run(running, "completed")
    sync.publish(a)                             # A's collect ends and publishes
    sync.pull(b, "curate")
    assert curate(b).unpublished == 0
    assert {states(b)[p][0] for p in ("2", "3")} <= {"accepted", "duplicate"}


def test_a_file_gone_from_a_local_data_root_is_re_queued_even_during_a_run(tmp_path):
    """On a plain local data root nothing awaits a publish: a missing file is lost at once."""
    cfg = machine(tmp_path, "data", None)
    with Catalog(cfg.catalog_path) as c:
        running = c.start_run("collect")
    download(cfg, "2", running).unlink()
    assert curate(cfg).unpublished == 0
    assert states(cfg)["2"] == ("failed", "transient:file-missing")


def test_a_file_this_process_lost_is_re_queued_even_while_its_collect_runs(tmp_path, pg_url):
    """Curate inside `mlc run`'s collect (top-up rounds): a file of that very collect, gone from the
    cache, is nobody else's to publish. Held back, it stayed `downloaded` and the set stayed short."""
    cfg = machine(tmp_path, "cache", pg_url)
    with Catalog(cfg.catalog_path) as c:
        running = c.start_run("collect")        # this process's own collect, still open
    gone = download(cfg, "5", running)
    sync.publish(cfg)
    gone.unlink()
    store_of(cfg).delete([gone.relative_to(cfg.data_dir).as_posix()])
    assert curate(cfg).unpublished == 0
    assert states(cfg)["5"] == ("failed", "transient:file-missing")
