"""A Prefect progress artifact driven by collect's `on_progress(done, total)` callback, throttled."""

from __future__ import annotations

import math
import re
import time

from prefect.artifacts import create_progress_artifact, update_progress_artifact

from mlc_pipeline.catalog import Catalog
from mlc_pipeline.collect.stage import targets, usable_needed
from mlc_pipeline.config import Config

PROGRESS_KEY = "mlc-download-progress"


def downloads_wanted(cfg: Config) -> int:
    """Images still missing before this collect starts (what a resumed run has left to do)."""
    with Catalog(cfg.catalog_path) as catalog:
        return sum(max(0, math.ceil(usable_needed(catalog.set_tally(t.purpose, t.label, cfg.source.licenses), count)))
                   for t, _, count in targets(cfg))


class DownloadProgress:
    """Turns collect's per-batch `on_progress(i, n)` calls into one run-wide percentage.

    collect downloads in batches (one per set, and again after a search finds more), calling
    `on_progress(i, n)` after every finished download of a batch. The percentage is finished
    downloads over the images still missing when the run started; failed downloads are retried
    from further candidates, so it is held at 99% until collect returns. The artifact is updated at
    most every `min_interval_s` seconds (each update is an API call).
    """

    # The artifact of each task run: a retried collect's next attempt goes on in it. An artifact per
    # attempt left the earlier ones at "downloading N missing images" for good, and end_progress closes
    # the newest alone (the prefect28 audit). Dropped when the task run ends (forget_progress).
    of_task_run: dict = {}

    def __init__(self, wanted: int, min_interval_s: float = 2.0, logger=None,
                 clock=time.monotonic, key: str | None = PROGRESS_KEY, task_run_id=None):
        self.wanted = wanted
        self.done = 0
        self.min_interval_s = min_interval_s
        self.clock = clock
        self.logger = logger
        self.shown = 0.0
        self.last = clock()
        self.updates = 0
        description = f"collect: downloading {wanted} missing images"
        self.artifact_id = self.of_task_run.get(task_run_id) if task_run_id else None
        if self.artifact_id is None:
            self.artifact_id = create_progress_artifact(0.0, key=key, description=description)
            if task_run_id:
                self.of_task_run[task_run_id] = self.artifact_id
        else:                   # a retry: its own start, where the attempt before left off
            self._show(0.0, description, force=True)

    def percent(self) -> float:
        if self.wanted <= 0:
            return 99.0
        return min(99.0, round(100.0 * self.done / self.wanted, 1))

    def __call__(self, i: int, n: int) -> None:
        """The `on_progress` callback: one download of a batch of `n` finished (the i-th)."""
        self.done += 1
        now = self.clock()
        if now - self.last < self.min_interval_s:
            return
        self._show(self.percent(), f"collect: {self.done} downloads of ~{self.wanted} missing images")
        self.last = now

    def finish(self, downloaded: int) -> None:
        self._show(100.0, f"collect: done, {downloaded} images downloaded in this run")

    def _show(self, pct: float, description: str, force: bool = False) -> None:
        if pct == self.shown and pct != 100.0 and not force:
            return
        try:
            update_progress_artifact(self.artifact_id, pct, description=description)
            self.updates += 1
            self.shown = pct
        except Exception as exc:   # a progress bar must never fail a download
            if self.logger:
                self.logger.warning("progress artifact not updated: %s", exc)


def forget_progress(task, task_run, state) -> None:
    """The collect task's on_completion / on_failure hook: its task run ended (an attempt Prefect retries
    enters AwaitingRetry, neither), so no attempt goes on in its artifact any more. Kept, the entries of
    every collect stayed for the life of the process: a long-lived worker only grew (the review of
    2026-12-07)."""
    DownloadProgress.of_task_run.pop(task_run.id, None)


def end_progress(client, flow_run_id, how: str) -> str | None:
    """A run that ended (`how`: "cancelled", "crashed", "failed") with its download progress part-way:
    its last progress artifact says so, "collect cancelled at 102 of ~390 downloads", instead of
    reading as work in flight (the nightly25 audit). The new description, or None when there was
    nothing to close (no collect, or it finished)."""
    from prefect.client.schemas.actions import ArtifactUpdate
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    found = client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                                       key=ArtifactFilterKey(any_=[PROGRESS_KEY])),
        sort=ArtifactSort.CREATED_DESC, limit=1)
    if not found or float(found[0].data or 0) >= 100.0:
        return None
    art = found[0]
    said = art.description or ""
    if m := re.search(r"(\d+) downloads of ~(\d+)", said):
        done, wanted = m.groups()
    elif m := re.search(r"downloading (\d+) missing", said):
        done, wanted = "0", m.group(1)
    else:
        done = wanted = None
    where = f"at {done} of ~{wanted} downloads" if done is not None else f"at {float(art.data or 0):g}%"
    description = f"collect {how} {where} (run {how.capitalize()})"
    client.update_artifact(art.id, ArtifactUpdate(data=float(art.data or 0), description=description))
    return description
