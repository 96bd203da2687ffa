"""Collect: search -> catalog -> download, until every class, "other", probe and pool set has its count.

`count` is a count of *usable* images (accepted by curation). A set's images that curation rejected
or removed as duplicates do not count, so a collect after a curate tops the set up from further
search results; `collect_in_rounds` (pipeline.collect_and_curate, what `mlc run` and the flow use) alternates the two until no
set is short or no short set can get more, and says by how much each set fell short.

Resumable: search results and download outcomes are committed to the catalog as they happen, and a
rerun only downloads what is still missing (candidates left pending, transient failures, files gone
from disk). Killing a run at any point and rerunning gives the same catalog as one uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from mlc_pipeline.catalog import Catalog, Found, merge_labels, run_end_status
from mlc_pipeline import progress as bars   # `progress` is the show-bars flag here
from mlc_pipeline.config import Config
from mlc_pipeline.collect.checks import check_licence_ids, check_sizes, unreadable_line, unreadable_named, warn_before_collecting
from mlc_pipeline.collect.cluster import download_on_cluster
from mlc_pipeline.collect.download import Downloader, DownloadJob
from mlc_pipeline.collect.hosts import host_allowed, refused_url
from mlc_pipeline.collect.licences import judged_licence, note_disallowed, recheck_pending
from mlc_pipeline.collect.precheck import expected_usable, passed_rate, usable_on_arrival
from mlc_pipeline.executor import cluster_ready
from mlc_pipeline.collect.rawfiles import clean_stale_temp, keep_out_removed_owners, reconcile_raw
from mlc_pipeline.collect.flickr import FlickrSource, Target
from mlc_pipeline.collect.sets import MIN_USABLE_RATE, set_key, shortfalls, targets, usable_needed, usable_rate
from mlc_pipeline.collect.sources import open_source
from mlc_pipeline.secrets import install_log_redaction, redact

log = logging.getLogger(__name__)


@dataclass
class CollectSummary:
    run_id: str
    api_calls: int = 0
    found_new: int = 0
    downloaded: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    shortfall: dict[str, int] = field(default_factory=dict)   # "purpose/label" -> usable images missing (a
    #                                                           lone collect: downloads not curated yet count at the usable rate)
    max_connections_per_host: dict[str, int] = field(default_factory=dict)
    exhausted: list[str] = field(default_factory=list)        # sets whose queries ran dry
    ceiling: list[str] = field(default_factory=list)          # sets a round stopped at its download ceiling
    rounds: int = 1                                           # collect -> curate rounds (collect_in_rounds)
    short: list[str] = field(default_factory=list)            # one line per set in `shortfall`, for people
    seconds: dict[str, float] = field(default_factory=dict)   # collect / curate time (collect_in_rounds)
    search_skipped: dict[str, int] = field(default_factory=dict)  # malformed search results left out, by reason
    unreadable: dict[str, Any] = field(default_factory=dict)  # folder mode: files there that are no image (checks.py)

    def count_failure(self, reason: str, n: int = 1) -> None:
        """`failed` by kind: every transient reason as `transient`, a final one up to its '=' (`http=404`:
        `http`); a count back to none drops its kind (a verdict taken back when its host went down)."""
        key = reason.split(":")[0] if reason.startswith("transient") else reason.split("=")[0]
        self.failed[key] = self.failed.get(key, 0) + n
        if not self.failed[key]:
            del self.failed[key]


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
        self.downloader = Downloader(cfg.source, allowed_hosts, cfg.layout.raw(source.name),
                                     cfg.layout.legacy_downloads)
        self.progress = progress
        self.on_progress = on_progress
        self.streams: dict[str, Iterator[Found]] = {}   # set key -> its search, where it stopped
        self.exhausted: set[str] = set()                 # set keys whose queries ran dry
        self.verdicts: dict[int, bool] = {}              # this round's downloads: usable on arrival? (precheck.py)

    def pending(self, target: Target, limit: int) -> list[dict]:
        rows = self.catalog.candidates(source=self.source.name, purpose=target.purpose, status="pending")
        return [r for r in rows if target.label in r["label"].split()][:limit]

    def needed(self, target: Target, count: int) -> float:
        """Usable images the set still lacks. Downloads not curated yet count as precheck.py judged
        them on arrival (one that passed at `passed_rate`); those it did not see (an earlier run's) at the rate."""
        tally = self.catalog.set_tally(target.purpose, target.label, self.cfg.source.licenses)
        rate, need = usable_rate(tally), usable_needed(tally, count)
        waiting = [r for r in self.catalog.candidates(source=self.source.name, purpose=target.purpose,
                                                      status="downloaded") if target.label in r["label"].split()]
        # An earlier (killed) collect's downloads are judged here as on arrival, so a resumed collect plans
        # as one never stopped would (bench/chaos.py: the same catalog; counted at `rate`, they differed).
        for r in waiting:
            if r["id"] not in self.verdicts and r.get("file_path"):
                if (usable := usable_on_arrival(r["file_path"], self.cfg.curate)) is not None:
                    self.verdicts[r["id"]] = usable
        if waiting:
            need += rate * len(waiting) - expected_usable(waiting, self.verdicts, rate, passed_rate(tally))
        return need

    def search_more(self, results: Iterator[Found], wanted: int, run_id: str) -> tuple[int, bool]:
        """Pull search results until `wanted` more candidates hold the target's label.
        Returns (gained, exhausted)."""
        gained, batch, held = 0, [], set()
        for found in results:
            if (found.source, found.photo_id) in held:     # found again within the batch (by another query of
                self.catalog.upsert_found(batch, run_id)   # the set): recorded first, so it is not new twice
                batch, held = [], set()
            known = self.catalog.get_by_photo(found.source, found.photo_id)
            if not self.source.license_allowed(judged_licence(found, known)):   # not a candidate
                if found.license_id is None:               # unknown, and not known under an allowed one
                    self.source.without_licence(found.query, found.photo_id)
                else:                                      # a known row learns it
                    note_disallowed(self.catalog, found, run_id)
                continue
            batch.append(found)           # known photos are recorded too: their query and labels merge
            held.add((found.source, found.photo_id))
            gained += gains_label(known, found)
            if len(batch) >= 100:
                self.catalog.upsert_found(batch, run_id)
                batch, held = [], set()
            if gained >= wanted:
                break
        else:
            self.catalog.upsert_found(batch, run_id)
            return gained, True
        self.catalog.upsert_found(batch, run_id)
        return gained, False

    def collect_target(self, target: Target, queries: list[str], count: int, run_id: str,
                       summary: CollectSummary) -> None:
        key = set_key(target)
        # One stream, queries taking turns item by item: the order never depends on where an
        # earlier run stopped, so a resumed run records exactly what an uninterrupted one would.
        # The stream is kept for the next top-up round, which goes on from where this one stopped.
        if key not in self.streams:
            self.streams[key] = interleave([self.source.search(q, target) for q in queries])
        results = self.streams[key]
        summary.shortfall.pop(key, None)
        # A round's ceiling, the bound planning at the usable rate had: a file precheck fails counts for
        # nothing, so without it a set whose every file fails (cut bodies, curate.min_side above what the
        # source serves) downloads all its queries find in one round (review31 #1: 482 for count 5).
        ceiling, planned = math.ceil(self.needed(target, count) / MIN_USABLE_RATE), 0
        while True:
            need = self.needed(target, count)     # again after a search too: it can find photos curated
            if need <= 0:                          # under another class (a renamed one)
                return
            # Downloads for the shortfall only: each is judged as it lands (precheck.py) and the next
            # batch tops up what the judged ones left missing, so the set is not planned past `count`
            # (audit collect27 D8: planned at once at the first sample's usable rate, 49 and 54 of 40).
            # A download not judged here counts at `rate`: the batches then add up to need / rate.
            want = min(math.ceil(need), ceiling - planned)
            if want <= 0:
                summary.shortfall[key] = math.ceil(need)
                if key not in summary.ceiling:
                    summary.ceiling.append(key)
                log.warning("%s: stopped at this round's download ceiling (%d downloads, %d usable images "
                            "expected of %d): the next collect goes on", key, planned, count - math.ceil(need), count)
                return
            jobs = self.pending(target, want)
            if len(jobs) < want and key not in self.exhausted:
                added, exhausted = self.search_more(results, want - len(jobs), run_id)
                summary.found_new += added
                if exhausted:
                    self.exhausted.add(key)
                continue
            if not jobs:
                summary.shortfall[key] = math.ceil(need)
                log.warning("%s: queries exhausted with %d usable images expected of %d", key,
                            count - math.ceil(need), count)
                return
            planned += len(jobs)
            self.download(jobs, run_id, summary, key)

    def download(self, rows: list[dict], run_id: str, summary: CollectSummary, what: str) -> None:
        kept_out = keep_out_removed_owners(self.catalog, run_id)      # found since an owner's takedown
        jobs = [DownloadJob(r["id"], r["photo_id"], self.source.current_url(r["url"])) for r in rows
                if r["id"] not in kept_out]
        if not jobs:
            return
        done = 0

        def record(res) -> None:
            nonlocal done
            if res.ok:
                if self.catalog.set_status(res.cid, "downloaded", None, run_id, "download", attempts=res.attempts,
                                           file_path=str(res.path), bytes=res.bytes, sha256=res.sha256,
                                           content_type=res.content_type):
                    summary.downloaded += 1
                    if (usable := usable_on_arrival(str(res.path), self.cfg.curate)) is not None:
                        self.verdicts[res.cid] = usable
                else:       # taken down while it downloaded (a takedown does not wait for collect)
                    Path(res.path).unlink(missing_ok=True)
            else:
                self.catalog.set_status(res.cid, "failed", res.reason, run_id, "download", attempts=res.attempts)
                summary.count_failure(res.reason)
            done += 1
            bar.advance()
            if self.on_progress:
                self.on_progress(done, len(jobs))

        # Ctrl-C or a write error: the downloader still records what finished, then re-raises.
        with bars.bar(f"download {what}", total=len(jobs), show=self.progress) as bar:
            address = cluster_ready(self.cfg)
            if address:     # chunks on Dask workers; results are recorded here as they come
                download_on_cluster(self.cfg, self.downloader, jobs, record, address)
            else:
                self.downloader.run_into(jobs, record)
        for cid, final, reason in self.downloader.hosts.take_back():     # its host failed for everyone
            self.catalog.set_status(cid, "failed", reason, run_id, "download")
            summary.count_failure(final, -1)
            summary.count_failure(reason)
        if (stop := self.downloader.hosts.stop_error()) is not None:     # a host down, or not allowed
            raise stop

    def collect_all(self, summary: CollectSummary) -> None:
        self.verdicts.clear()        # curated since (collect_in_rounds): curation's verdicts count now
        for target, queries, count in targets(self.cfg):
            self.collect_target(target, queries, count, summary.run_id, summary)
        summary.exhausted = sorted(self.exhausted)

    def requeue(self, run_id: str, retry_failed: bool = False) -> int:
        """Make resumable what a previous run left: transient failures and files gone from disk (with
        `retry_failed`, `mlc collect --retry-failed`: every failed download); rows left pending are
        checked against source.licenses as it is now (licences.py); files in raw/ no row names are
        adopted or deleted (rawfiles.reconcile_raw)."""
        keep_out_removed_owners(self.catalog, run_id)     # what an earlier collect took of a removed owner
        n = 0
        for r in self.catalog.candidates(source=self.source.name, status="failed",
                                         **({} if retry_failed else {"reason_prefix": "transient:"})):
            if r["reason"].startswith("host-not-allowed:") or r["reason"] == "unsafe-photo-id":
                continue                # asked again once its host is allowed (below); never a safe name
            self.catalog.set_status(r["id"], "pending", None, run_id, "resume")
            n += 1
        # host-not-allowed is the config's verdict, not the photo's: asked again once its host is allowed
        for r in self.catalog.candidates(source=self.source.name, status="failed",
                                         reason_prefix="host-not-allowed:"):
            if host_allowed(refused_url(r["reason"]) or self.source.current_url(r["url"]), self.downloader.allowed):
                self.catalog.set_status(r["id"], "pending", None, run_id, "resume")
                n += 1
        for r in self.catalog.candidates(source=self.source.name, status="downloaded"):
            if not r["file_path"] or not Path(r["file_path"]).exists():
                self.catalog.set_status(r["id"], "pending", "file-missing", run_id, "resume")
                n += 1
        _, reopened = recheck_pending(self.catalog, self.source, run_id)   # source.licenses as it is now
        # finished downloads a killed run did not record: adopted by their pending rows, else deleted
        reconcile_raw(self.catalog, self.downloader.raw_dir, self.source.name, self.cfg.source.max_image_bytes, run_id)
        return n + reopened


TOPUP_ROUNDS = 5          # collect -> curate rounds of `collect_in_rounds` at most


def error_line(exc: BaseException) -> str:
    """What stopped a run, for its record: the class and the message's first line, secrets masked."""
    lines = str(exc).strip().splitlines()
    return redact(f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__)


@contextmanager
def collect_session(cfg: Config, progress: bool, on_progress: Callable[[int, int], None] | None,
                    retry_failed: bool = False) -> Iterator[tuple[Catalog, Collector, CollectSummary]]:
    """The catalog, a collector on the configured source and the run's summary, recorded as one
    collect run (completed with the summary as it stands when the block ends)."""
    install_log_redaction()
    warn_before_collecting(cfg)
    cluster_ready(cfg)           # a cluster that cannot do the downloads says so before any search
    clean_stale_temp(cfg.layout.raw())
    clean_stale_temp(cfg.layout.legacy_downloads)      # where versions before 2026-12 wrote them
    with Catalog(cfg.catalog_path) as catalog, open_source(cfg) as (source, hosts):
        run_id = catalog.start_run("collect")
        summary, collector = CollectSummary(run_id), None
        try:
            licences = source.licenses()
            catalog.save_licenses(licences)
            check_licence_ids(cfg, licences, source.name)
            collector = Collector(cfg, catalog, source, hosts, progress, on_progress)
            requeued = collector.requeue(run_id, retry_failed)
            if requeued:
                log.info("resuming: %d candidates to retry from earlier runs", requeued)
            yield catalog, collector, summary
            summary.api_calls = source.api_calls
            summary.search_skipped = dict(source.skipped)
            summary.unreadable = unreadable_named(source.unreadable)
            summary.max_connections_per_host = dict(collector.downloader.max_in_flight)
        except BaseException as exc:     # the record says why, as the run's last line did, and what it cost
            summary.api_calls = source.api_calls
            catalog.finish_run(run_id, run_end_status(exc), {**summary.__dict__, "error": error_line(exc)})
            raise
        finally:        # the downloads' pools closed now, not by a finalizer in the next stage (download.py)
            if collector is not None:
                collector.downloader.close()
        catalog.finish_run(run_id, "completed", summary.__dict__)
    bars.summary(f"collect {summary.run_id}", show=progress, rows=[
        ("API calls", summary.api_calls), ("new candidates", summary.found_new), ("downloaded", summary.downloaded),
        ("failed", summary.failed), ("search results skipped (malformed)", summary.search_skipped or None),
        ("unreadable in the folder (not collected)", unreadable_line(summary.unreadable)),
        ("collect/curate rounds", summary.rounds if summary.rounds > 1 else None),
        ("queries exhausted", ", ".join(summary.exhausted)),
        ("stopped at a round's download ceiling", ", ".join(summary.ceiling)), ("short sets", "\n".join(summary.short))])


def collect(cfg: Config, progress: bool = True, on_progress: Callable[[int, int], None] | None = None,
            retry_failed: bool = False) -> CollectSummary:
    """One pass over every set. Images curation rejected or removed do not count; downloads not
    curated yet count at the rate curation accepted the set's earlier ones, so rerunning
    collect + curate converges on `count` usable images per set."""
    with collect_session(cfg, progress, on_progress, retry_failed) as (catalog, collector, summary):
        started = time.time()
        collector.collect_all(summary)
        check_sizes(cfg, catalog, started)
        # The sets this pass leaves short (`shortfall`: usable images missing, downloads not curated
        # yet counted at the set's usable rate), in the lines `mlc run` prints: before the run record
        # and the summary table are written, so both carry them.
        summary.short = [s.line() for s in shortfalls(cfg, catalog, collector.exhausted)
                         if s.key in summary.shortfall]
    return summary


def collect_in_rounds(cfg: Config, curate: Callable[[Config], Any], progress: bool = True,
                      on_progress: Callable[[int, int], None] | None = None, max_rounds: int = TOPUP_ROUNDS):
    """Collect and `curate` in rounds until every set has `count` usable images, or no short set can
    get more (its queries ran dry), or `max_rounds` ran. Each round's searches go on from where the
    previous round's stopped; photos already in the catalog are never downloaded again. (`curate` is
    passed in, curate.curate in practice: collect itself knows nothing of curation.)

    Returns (CollectSummary, the last round's CurateSummary); `summary.short` holds one line per set
    that fell short."""
    curated = None
    seconds = {"collect": 0.0, "curate": 0.0}
    with collect_session(cfg, progress, on_progress) as (catalog, collector, summary):
        inspected, upgrade = 0, []     # over every round (a JPEG inspected again after an upgrade: round 1)
        for round_no in range(1, max_rounds + 1):
            summary.rounds = round_no
            before, started, searched_from = summary.downloaded, time.monotonic(), time.time()
            collector.collect_all(summary)
            check_sizes(cfg, catalog, searched_from)
            seconds["collect"] += time.monotonic() - started
            if curated is not None and summary.downloaded == before:
                break                   # nothing new to curate: another round would change nothing
            started = time.monotonic()
            curated = curate(cfg)
            seconds["curate"] += time.monotonic() - started
            inspected += curated.inspected
            upgrade += curated.upgrade
            short = shortfalls(cfg, catalog, collector.exhausted, unfinished="topping up")
            if not short:
                break
            if all(s.why == "queries exhausted" for s in short):
                break
            log.info("round %d: %d sets short of usable images; topping up: %s", round_no, len(short),
                     "; ".join(s.line() for s in short))
        curated.inspected, curated.upgrade = inspected, upgrade
        final = shortfalls(cfg, catalog, collector.exhausted,
                           unfinished=f"still short after {summary.rounds} collect/curate rounds: rerun to top up")
        summary.shortfall = {s.key: s.count - s.usable for s in final}
        summary.short = [s.line() for s in final]
        summary.seconds = {k: round(v, 1) for k, v in seconds.items()}
        for line in summary.short:
            log.warning("short set: %s", line)
    return summary, curated
