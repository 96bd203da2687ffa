"""Issue 15's cluster test, literally: a real `distributed.LocalCluster` of 2 worker processes on
loopback, and the catalog on a real PostgreSQL server. Two collects run at once as tasks on the two
workers (what a flow's stage tasks do on a DaskTaskRunner), each writing into the same PostgreSQL
catalog while its downloads are spread in chunks over both workers; then collect + curate + build
finish from this process with curation's hashing on the cluster too. The catalog and the manifest
must match a single-process run of the same config on SQLite, with no row lost or duplicated.

The two collects take different sets (the class "balloon" and the "other" set) whose searches share
no photo in this world (checked below): so what each records, and in which order, is what the
single-process run records for those sets, and the comparison can be exact. Overlapping sets are
the case of tests/test_catalog_postgres.py (two processes collecting one config at once)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import yaml

distributed = pytest.importorskip("distributed")
import cloudpickle  # noqa: E402  (comes with distributed)

from mlc_pipeline.catalog import Catalog  # noqa: E402
from mlc_pipeline.config import load_config  # noqa: E402
from mlc_pipeline.executor import ADDRESS_ENV  # noqa: E402
from mlc_pipeline.flickr_server import FaultSpec, FlickrServer, WorldSpec  # noqa: E402
from mlc_pipeline.manifest import read_manifest  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])   # workers cannot import this test module

FLICKR_ENV = {"FLICKR_API_KEY": "test-key-0123456789", "FLICKR_API_SECRET": "test-secret-98765"}
CONCURRENT_SETS = ("balloon", "other")       # collected at once, one per worker; "kite" comes after


def collect_sets(config: str, labels: list[str], go: str) -> dict:
    """A collect of some of the config's training sets, as a task on a Dask worker: it opens the
    catalog there and records what it finds and downloads; its downloads run as chunks on the cluster."""
    from mlc_pipeline.collect.stage import collect_session, targets
    cfg = load_config(config)
    while not Path(go).exists():        # both tasks start their searches at the same moment
        time.sleep(0.01)
    with collect_session(cfg, False, None) as (_, collector, summary):
        for target, queries, count in targets(cfg):
            if target.purpose == "train" and target.label in labels:
                collector.collect_target(target, queries, count, summary.run_id, summary)
    return {"pid": os.getpid(), "run_id": summary.run_id, "downloaded": summary.downloaded}


def run_to_build(cfg) -> Path:
    from mlc_pipeline.collect.stage import collect_in_rounds
    from mlc_pipeline.curate.stage import curate
    from mlc_pipeline.dataset.build import build_dataset
    collect_in_rounds(cfg, curate, progress=False)
    return Path(build_dataset(cfg).path)


def catalog_state(cfg) -> tuple[dict, dict]:
    """Per photo, what the catalog decided (ids, times and run ids aside; a duplicate names the photo
    it duplicates), and its history (stage and status of each event, in order)."""
    with Catalog(cfg.catalog_path, readonly=True) as c:
        rows = c.candidates()
        events = c.db.execute("SELECT candidate_id, stage, status FROM events ORDER BY id").fetchall()
    photo = {r["id"]: r["photo_id"] for r in rows}
    out, history = {}, {}
    for r in rows:
        kept = {k: v for k, v in r.items() if k not in ("id", "run_id", "first_seen_at", "updated_at")}
        kept["duplicate_of"] = photo.get(r["duplicate_of"])
        kept["file_path"] = r["file_path"] and str(Path(r["file_path"]).relative_to(cfg.data_dir))
        out[r["photo_id"]] = kept
    for e in events:
        history.setdefault(photo[e["candidate_id"]], []).append((e["stage"], e["status"]))
    assert len(out) == len(rows), "a photo recorded twice"
    return out, history


def manifest_rows(version: Path) -> list[dict]:
    """The manifest without candidate ids (assigned in another order when two collects insert at once)."""
    rows = [{k: v for k, v in r.items() if k != "candidate_id"} for r in read_manifest(version / "manifest.csv")]
    return sorted(rows, key=lambda r: r["path"])


def test_two_workers_collect_into_one_postgres_catalog_and_match_a_single_process_run(pg_url, tmp_path,
                                                                                       monkeypatch):
    monkeypatch.delenv(ADDRESS_ENV, raising=False)
    for k, v in FLICKR_ENV.items():         # before the workers start: they inherit the environment
        monkeypatch.setenv(k, v)
    # 150 ms per image through 4 connections (a cluster-wide bound): each collect's downloads take a
    # second or more, so that the two collects overlap however late one of them starts
    faults = FaultSpec(truncated=0.08, html=0.05, dup_exact=0.06, dup_near=0.06, image_latency_ms=150)
    with FlickrServer(WorldSpec(seed=0, scale=0.1), faults) as srv, \
            distributed.LocalCluster(n_workers=2, threads_per_worker=2, processes=True, host="127.0.0.1",
                                     dashboard_address=None) as cluster, \
            distributed.Client(cluster, set_as_default=False) as client:
        base = {"source": {"kind": "flickr", "rest_url": srv.rest_url, "allowed_hosts": [srv.static_host],
                           "sizes": ["url_n", "url_m"], "per_page": 20, "per_host_concurrency": 4,
                           "retry": {"attempts": 3, "base_delay_s": 0.01, "max_delay_s": 0.05}},
                "classes": {"balloon": {"queries": ["balloon"], "count": 20},
                            "kite": {"queries": ["kite"], "count": 20}},
                "other": {"queries": ["landscape", "texture"], "count": 20}}
        single = load_config(write(tmp_path / "single.yaml", {**base, "data_dir": str(tmp_path / "single")}))
        pg_yaml = write(tmp_path / "pg.yaml", {**base, "data_dir": str(tmp_path / "pg"), "catalog": {"url": pg_url},
                                               "cluster": {"address": cluster.scheduler_address,
                                                           "download_chunk": 8, "hash_chunk": 16}})
        pg = load_config(pg_yaml)
        assert_sets_share_no_photo(srv, base)

        single_version = run_to_build(single)                 # this process alone, SQLite

        Catalog(pg.catalog_path).close()         # the tables, so that neither collect waits for their creation
        workers = sorted(client.scheduler_info()["workers"])
        go = tmp_path / "go"
        tasks = [client.submit(collect_sets, str(pg_yaml), [label], str(go), workers=[w], allow_other_workers=False,
                               pure=False) for label, w in zip(CONCURRENT_SETS, workers)]
        time.sleep(1.0)
        go.touch()
        done = [t.result(timeout=240) for t in tasks]
        with Catalog(pg.catalog_path, readonly=True) as c:
            runs = {r["run_id"]: r for r in c.runs()}
            during = c.candidates()
        pg_version = run_to_build(pg)                          # kite, curation and top-ups, on the cluster

    # the two collects ran on the two workers, at the same time, and both wrote into PostgreSQL
    assert len({d["pid"] for d in done} | {os.getpid()}) == 3
    first, second = (runs[d["run_id"]] for d in done)
    assert first["status"] == second["status"] == "completed"
    assert max(first["started_at"], second["started_at"]) < min(first["finished_at"], second["finished_at"])
    assert all(d["downloaded"] >= 20 for d in done)
    by_run = {d["run_id"]: sum(r["run_id"] == d["run_id"] and r["status"] == "downloaded" for r in during)
              for d in done}
    assert by_run == {d["run_id"]: d["downloaded"] for d in done}    # every download each counted is recorded

    rows, events = catalog_state(pg)
    single_rows, single_events = catalog_state(single)
    statuses = {r["status"] for r in rows.values()}
    assert {"accepted", "rejected", "duplicate", "failed"} <= statuses, statuses   # bad files, copies, html
    assert rows == single_rows, row_differences(rows, single_rows)
    assert events == single_events           # no event lost or doubled: the same history for every photo
    assert manifest_rows(pg_version) == manifest_rows(single_version)
    assert (pg_version / "SHA256SUMS").read_bytes() == (single_version / "SHA256SUMS").read_bytes()
    labels = {r["labels"] for r in manifest_rows(pg_version)}
    splits = {r["split"] for r in manifest_rows(pg_version)}
    assert {"balloon", "kite"} <= labels and len(splits) >= 2, (labels, splits)


def row_differences(rows: dict, single_rows: dict) -> str:
    """What differs, photo by photo, so that a failure says which photos and fields (a truncated
    dict diff does not)."""
    lines = [f"only in the cluster run: {rows[p]}" for p in sorted(rows.keys() - single_rows.keys())]
    lines += [f"only in the single run: {single_rows[p]}" for p in sorted(single_rows.keys() - rows.keys())]
    for p in sorted(rows.keys() & single_rows.keys()):
        diff = {k: (rows[p].get(k), single_rows[p].get(k)) for k in rows[p].keys() | single_rows[p].keys()
                if rows[p].get(k) != single_rows[p].get(k)}
        if diff:
            lines.append(f"photo {p} ({rows[p]['purpose']}/{rows[p]['label']}), cluster vs single: {diff}")
    return "\n".join(lines)


def write(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def assert_sets_share_no_photo(srv, base: dict) -> None:
    """The precondition of an exact comparison: "other" shares no photo with either class, so neither
    running it beside "balloon" nor before "kite" (one process runs it after both) changes what any set
    records. The two classes share a few photos; "balloon" comes before "kite" in both runs."""
    from mlc_pipeline.flickr_server.search import normalize_tag, normalize_word, text_tokens
    words = [({normalize_word(normalize_tag(t)) for t in p.tags} | text_tokens(p.title), p.id)
             for p in srv.world.photos]
    sets = {name: qs["queries"] for name, qs in base["classes"].items()} | {"other": base["other"]["queries"]}
    found = {name: {pid for ws, pid in words if any(normalize_word(q) in ws for q in queries)}
             for name, queries in sets.items()}
    assert all(found.values()), found
    for name in base["classes"]:
        assert not found[name] & found["other"], (name, sorted(found[name] & found["other"]))
