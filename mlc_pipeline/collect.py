"""Collect: search -> catalog -> download, until every class, "other", probe and pool set has its count.

Resumable: search results and download outcomes are committed to the catalog as they happen, and a
rerun only downloads what is still missing (candidates left pending, transient failures, files gone
from disk). Killing a run at any point and rerunning gives the same catalog as one uninterrupted run.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from tqdm import tqdm

from .catalog import Catalog, Found, merge_labels, run_end_status
from .config import Config
from .download import Downloader, DownloadJob, clean_stale_temp
from .flickr_source import FlickrSource, Target
from .secrets import flickr_credentials, install_log_redaction

log = logging.getLogger(__name__)


@dataclass
class CollectSummary:
    run_id: str
    api_calls: int = 0
    found_new: int = 0
    downloaded: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    shortfall: dict[str, int] = field(default_factory=dict)   # "purpose/label" -> images missing
    max_connections_per_host: dict[str, int] = field(default_factory=dict)


def targets(cfg: Config) -> list[tuple[Target, list[str], int]]:
    """Every set to collect: (target, queries, count). Classes first, so a photo found by a class
    query and an "other" query ends up a class image."""
    out = [(Target("train", name), qs.queries, qs.count) for name, qs in cfg.classes.items()]
    out.append((Target("train", "other"), cfg.other.queries, cfg.other.count))
    if cfg.probe:
        out.append((Target("probe", "other"), cfg.probe.queries, cfg.probe.count))
    if cfg.mine.pool:
        out.append((Target("pool", "other"), cfg.mine.pool.queries, cfg.mine.pool.count))
    return out


@contextmanager
def open_source(cfg: Config) -> Iterator[tuple[FlickrSource, list[str]]]:
    """The configured source and the image hosts it may download from.

    `source.kind: local` starts the bundled Flickr-compatible server on loopback for the duration."""
    s = cfg.source
    if s.kind == "flickr":
        yield FlickrSource(s, flickr_credentials(local=False), "flickr", result_cap=s.result_cap), s.allowed_hosts
        return
    from .flickr_server import FaultSpec, FlickrServer, WorldSpec
    world = WorldSpec(kind="folder" if s.local.folder else "default", seed=s.local.seed, scale=s.local.scale,
                      folder=s.local.folder, query_map=dict(s.local.query_map), result_cap=s.local.result_cap)
    with FlickrServer(world, FaultSpec.parse(s.local.faults), host="127.0.0.1", port=s.local.port) as srv:
        source = FlickrSource(s, flickr_credentials(local=True), "local", rest_url=srv.rest_url,
                              result_cap=s.local.result_cap, static_host=srv.static_host)
        yield source, [srv.static_host, *s.allowed_hosts]


def interleave(streams: list[Iterator[Found]]) -> Iterator[Found]:
    """Round-robin over streams, one item at a time, until all are exhausted."""
    live = list(streams)
    while live:
        for stream in list(live):
            item = next(stream, None)
            if item is None:
                live.remove(stream)
            else:
                yield item


def gains_label(known: dict | None, found: Found) -> bool:
    """Does recording `found` give its target one more candidate? A new photo does; a known one does
    when the merge adds the target's label (a photo of two classes found by the second class query)."""
    if known is None:
        return True
    if known["purpose"] != found.purpose or known["status"] in ("failed", "skipped"):
        return False
    return found.label not in known["label"].split() and found.label in merge_labels(known["label"], found.label).split()


class Collector:
    def __init__(self, cfg: Config, catalog: Catalog, source: FlickrSource, allowed_hosts: list[str],
                 progress: bool = True, on_progress: Callable[[int, int], None] | None = None):
        self.cfg, self.catalog, self.source = cfg, catalog, source
        self.downloader = Downloader(cfg.source, allowed_hosts, cfg.data_dir / "raw" / source.name,
                                     cfg.data_dir / "tmp" / "downloads")
        self.progress = progress
        self.on_progress = on_progress

    def pending(self, target: Target, limit: int) -> list[dict]:
        rows = self.catalog.candidates("source=? AND purpose=? AND status='pending'",
                                       (self.source.name, target.purpose))
        return [r for r in rows if target.label in r["label"].split()][:limit]

    def have(self, target: Target) -> int:
        return self.catalog.count_downloaded(target.purpose, target.label)

    def search_more(self, results: Iterator[Found], wanted: int, run_id: str) -> tuple[int, bool]:
        """Pull search results until `wanted` more candidates hold the target's label.
        Returns (gained, exhausted)."""
        gained, batch = 0, []
        for found in results:
            known = self.catalog.get_by_photo(found.source, found.photo_id)
            batch.append(found)           # known photos are recorded too: their query and labels merge
            gained += gains_label(known, found)
            if len(batch) >= 100:
                self.catalog.upsert_found(batch, run_id)
                batch = []
            if gained >= wanted:
                break
        else:
            self.catalog.upsert_found(batch, run_id)
            return gained, True
        self.catalog.upsert_found(batch, run_id)
        return gained, False

    def collect_target(self, target: Target, queries: list[str], count: int, run_id: str,
                       summary: CollectSummary) -> None:
        # One stream, queries taking turns item by item: the order never depends on where an
        # earlier run stopped, so a resumed run records exactly what an uninterrupted one would.
        results = interleave([self.source.search(q, target) for q in queries])
        exhausted = False
        while True:
            need = count - self.have(target)
            if need <= 0:
                return
            jobs = self.pending(target, need)
            if len(jobs) < need and not exhausted:
                added, exhausted = self.search_more(results, need - len(jobs), run_id)
                summary.found_new += added
                continue
            if not jobs:
                summary.shortfall[f"{target.purpose}/{target.label}"] = need
                log.warning("%s/%s: only %d of %d images available from the queries",
                            target.purpose, target.label, count - need, count)
                return
            self.download(jobs, run_id, summary, f"{target.purpose}/{target.label}")

    def download(self, rows: list[dict], run_id: str, summary: CollectSummary, what: str) -> None:
        jobs = [DownloadJob(r["id"], r["photo_id"], self.source.current_url(r["url"])) for r in rows]
        bar = tqdm(total=len(jobs), desc=f"download {what}", unit="img", disable=not self.progress, leave=False)
        done = 0

        def record(res) -> None:
            nonlocal done
            if res.ok:
                self.catalog.set_status(res.cid, "downloaded", None, run_id, "download", attempts=res.attempts,
                                        file_path=str(res.path), bytes=res.bytes, sha256=res.sha256,
                                        content_type=res.content_type)
                summary.downloaded += 1
            else:
                self.catalog.set_status(res.cid, "failed", res.reason, run_id, "download", attempts=res.attempts)
                key = res.reason.split(":")[0] if res.reason.startswith("transient") else res.reason.split("=")[0]
                summary.failed[key] = summary.failed.get(key, 0) + 1
            done += 1
            bar.update(1)
            if self.on_progress:
                self.on_progress(done, len(jobs))

        try:
            # Ctrl-C or a write error: the downloader still records what finished, then re-raises.
            self.downloader.run_into(jobs, record)
        finally:
            bar.close()

    def requeue(self, run_id: str) -> int:
        """Make resumable what a previous run left: transient failures and files gone from disk."""
        n = 0
        for r in self.catalog.candidates("source=? AND status='failed' AND reason LIKE 'transient:%'",
                                         (self.source.name,)):
            self.catalog.set_status(r["id"], "pending", None, run_id, "resume")
            n += 1
        for r in self.catalog.candidates("source=? AND status='downloaded'", (self.source.name,)):
            if not r["file_path"] or not Path(r["file_path"]).exists():
                self.catalog.set_status(r["id"], "pending", "file-missing", run_id, "resume")
                n += 1
        return n


def collect(cfg: Config, progress: bool = True, on_progress: Callable[[int, int], None] | None = None
            ) -> CollectSummary:
    install_log_redaction()
    clean_stale_temp(cfg.data_dir / "raw")
    clean_stale_temp(cfg.data_dir / "tmp" / "downloads")      # where versions before 2026-12 wrote them
    with Catalog(cfg.catalog_path) as catalog, open_source(cfg) as (source, hosts):
        run_id = catalog.start_run("collect")
        summary = CollectSummary(run_id)
        try:
            catalog.save_licenses(source.licenses())
            collector = Collector(cfg, catalog, source, hosts, progress, on_progress)
            requeued = collector.requeue(run_id)
            if requeued:
                log.info("resuming: %d candidates to retry from earlier runs", requeued)
            for target, queries, count in targets(cfg):
                collector.collect_target(target, queries, count, run_id, summary)
            summary.api_calls = source.api_calls
            summary.max_connections_per_host = dict(collector.downloader.max_in_flight)
        except BaseException as exc:
            catalog.finish_run(run_id, run_end_status(exc), {"error": type(exc).__name__, **summary.__dict__})
            raise
        catalog.finish_run(run_id, "completed", summary.__dict__)
        return summary
