"""The Prefect flows: `collect-and-train` (the whole job, nightly) and `rebuild-report`.

The stage loop is `mlc_pipeline.pipeline.run_stages`, the one `mlc run` uses; `TaskStages` runs each
of its stages as a task here, a thin call of the same library function. What Prefect adds is
orchestration only: retries of a transiently failing collect, a concurrency limit on Flickr across
runs, run logs, artifacts, a schedule. See docs/orchestration.md.

Resume and safety come from the library, not from Prefect state: collect commits every search result
and download to the catalog as it happens, curate caches verification per file content, a dataset
version or a model bundle is published by an atomic rename (and LATEST moves only afterwards). So a
failed run leaves every published version as it was, and the next run carries on from the catalog.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Any, Iterator

from prefect import flow, get_client, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext, get_run_context
from prefect.exceptions import MissingContextError
from prefect.task_runners import ThreadPoolTaskRunner

from flows.artifacts import DATASET_SUMMARY_KEY, publish, write_stopped_summary
from flows.progress import DownloadProgress, downloads_wanted, end_progress, forget_progress
from flows.runtime import (CANCEL_TO_STOP, DEFAULT_CONFIG, fixed_by_hand, flickr_slot, let_go,
                           library_logs_in_run, retry_condition, task_runner)
from mlc_pipeline.config import Config, ConfigError, load_config
from mlc_pipeline.locking import data_root_lock
from mlc_pipeline.model.options import check_train_settings
from mlc_pipeline.model.learned import ASK
from mlc_pipeline.model.stage import alternative_variants
from mlc_pipeline.pipeline import PipelineResult, Stages, plain, rebuild_stages, run_stages
from mlc_pipeline.report.published import published_state
from mlc_pipeline.secrets import shown_settings

# Every stage reads and writes the data root: its output is not a function of its inputs, so Prefect
# result caching (INPUTS-keyed) would be wrong here. The pure, expensive part of curate (decode,
# verify, hash) is cached in the catalog per file sha256; build is content-fingerprinted (an
# identical dataset is not published twice). See docs/orchestration.md, "Caching".
STAGE = dict(cache_policy=NO_CACHE, persist_result=False)


class StageFailed(RuntimeError):
    """A stage failed; the message names the stage, the cause and what was left in place."""


# ------------------------------------------------------------------------------------------ tasks

@task(name="collect", retries=2, retry_delay_seconds=[60, 300], retry_jitter_factor=0.3,
      retry_condition_fn=retry_condition, tags=["flickr"], on_completion=[forget_progress],
      on_failure=[forget_progress], **STAGE)
def collect_stage(cfg: Config) -> dict:
    """Search, download and curate in rounds until every set has its count of usable images (or its
    queries run dry); resumes from the catalog."""
    from mlc_pipeline.pipeline import collect_and_curate

    logger = get_run_logger()
    wanted = downloads_wanted(cfg)
    logger.info("collect: %d images missing from the catalog; data root %s", wanted, cfg.data_dir)
    progress = DownloadProgress(wanted, logger=logger, task_run_id=get_run_context().task_run.id)
    # One collect at a time across all runs on this server (global concurrency limit, if created);
    # within the run, the library's token bucket keeps calls under source.max_calls_per_hour.
    with flickr_slot(logger):
        summary, curated = collect_and_curate(cfg, progress=False, on_progress=progress)
    progress.finish(summary.downloaded)
    logger.info("collect: %d downloaded in %d collect/curate rounds, %d new candidates, %d API calls, failed %s",
                summary.downloaded, summary.rounds, summary.found_new, summary.api_calls, summary.failed or "none")
    for line in summary.short:
        logger.warning("short set: %s", line)
    return {**plain(summary), "curate": plain(curated)}


@task(name="curate", **STAGE)
def curate_stage(cfg: Config) -> dict:
    """Verify, hash, quarantine, deduplicate (verification cached per file content in the catalog)."""
    from mlc_pipeline.curate.stage import curate

    s = curate(cfg)
    get_run_logger().info("curate: %d accepted, %d inspected, %d reused from cache, rejected %s, duplicates %s",
                          s.accepted, s.inspected, s.reused, s.rejected or "none", s.duplicates or "none")
    return plain(s)


@task(name="build", **STAGE)
def build_stage(cfg: Config) -> dict:
    """Publish a new dataset version (atomic; skipped when identical to the latest)."""
    from mlc_pipeline.dataset.build import build_dataset

    r = build_dataset(cfg)
    get_run_logger().info("build: dataset %s %s %s (%d images) at %s", r.name, r.version,
                          "published" if r.published else "unchanged", r.counts.get("images", 0), r.path)
    return plain(r)


@task(name="assess", **STAGE)
def assess_stage(cfg: Config, bundle_dir: str, ds: dict) -> dict:
    """The shipped model scored on a new dataset version: what a new round 0 must match to replace it."""
    m = Stages(progress=False).assess(cfg, bundle_dir, ds)
    test = m["metrics"]["test"]
    get_run_logger().info("assess: %s on %s: test macro F1 %.3f, unknown accepted %s, probe accepted %s",
                          m["bundle"], m["dataset_version"], test.get("macro_f1", 0.0), test.get("unknown_accepted"),
                          test.get("probe_accepted"))
    return m


@task(name="train", **STAGE)
def train_stage(cfg: Config, dataset_dir: str, round_no: int, previous: str | None = None,
                publish: bool = True, previous_taken_down: str | None = ASK) -> dict:
    """Train the product model on a dataset version; models/LATEST moves only once the bundle is whole
    (`publish`; a mining round's retrain leaves it to the loop). `previous`: the bundle a mining round's
    retrain may continue (mine.retrain); `previous_taken_down`: the run's answer for it (learned.ASK: none)."""
    from mlc_pipeline.model.stage import train_version

    m = train_version(cfg, dataset_dir, tag=f"r{round_no}", previous=previous, publish=publish,
                      previous_taken_down=previous_taken_down)
    test = m.metrics.get("test", {})
    get_run_logger().info("train (round %d): %s on %s in %.0f s; test macro F1 %.3f, unknown accepted %s, "
                          "probe accepted %s", round_no, m.bundle_dir.name, m.dataset_version, m.train_seconds,
                          test.get("macro_f1", 0.0), test.get("unknown_accepted"), test.get("probe_accepted"))
    return {"round": round_no, "bundle": m.bundle_dir.name, **plain(m)}


@task(name="train-alternative", **STAGE)
def train_alternative_stage(cfg: Config, dataset_dir: str, variant: str) -> dict:
    """An alternative head on the same data, for the report's comparison (never published as LATEST)."""
    from mlc_pipeline.model.stage import train_version

    m = train_version(cfg, dataset_dir, tag="r0", variant=variant, publish=False)
    get_run_logger().info("alternative %s: test macro F1 %.3f", variant, m.metrics["test"]["macro_f1"])
    return m.metrics


@task(name="mine", **STAGE)
def mine_stage(cfg: Config, bundle_dir: str, round_no: int) -> dict:
    """Score the pool with the model; pool images it wrongly accepts become training negatives."""
    from mlc_pipeline.model.mine import mine_round

    r = mine_round(cfg, bundle_dir, round_no)
    # The counts mine_round's own summary gives (it put the number added where "accepted" belonged).
    get_run_logger().info("mine (round %d): %d pool images scored: %d accepted as a class (%d added as hard "
                          "negatives, %d held for review, %d over the round's cap, %d decided in review "
                          "meanwhile); %d class images listed for review", round_no, r.scored, r.accepted, r.added,
                          len(r.held), r.over_cap, r.decided_in_review, len(r.review))
    out = plain(r)
    out["review"] = len(r.review)
    return out


@task(name="report", **STAGE)
def report_stage(cfg: Config, result: dict) -> str:
    """The self-contained HTML report (data and, when models were trained, the model section)."""
    from mlc_pipeline.pipeline import write_run_report

    path = write_run_report(cfg, PipelineResult.from_plain(result))
    get_run_logger().info("report: %s", path)
    return path


# ---------------------------------------------------------------------------------------- helpers

def summarize_stopped_run(flow, flow_run, state) -> None:
    """on_cancellation / on_crashed: a `mlc-run-summary` saying so (else the UI shows the previous run's)."""
    with get_client(sync_client=True) as client:
        write_stopped_summary(client, flow.name, flow_run, state)


STOPPED_HOOKS = dict(on_cancellation=[summarize_stopped_run], on_crashed=[summarize_stopped_run])


def flow_run_name() -> str:
    try:
        return get_run_context().flow_run.name
    except MissingContextError:      # called outside a flow run (plain .fn() use)
        return "?"


class Run:
    """What a flow run did so far: the stages' results, for the artifacts and the return value."""

    def __init__(self, title: str, config_path: str, overrides: dict | None):
        self.data: dict[str, Any] = {"title": title, "status": "running", "config_path": config_path,
                                     "overrides": overrides or {}, "builds": [], "models": [], "mined": [],
                                     "seconds": {}, "config_loaded": False}
        self.cfg: Config | None = None
        self.stage = "config"
        self.held = ExitStack()
        self.futures: list = []         # (task, future) of each task submitted to the runner (see release)

    def hold_data_root(self, cfg: Config) -> None:
        """The data root's write lock, for the whole run: a manual `mlc` command or another flow run
        on the same data root waits (the tasks run in this process's threads and need no lock)."""
        command = f"prefect flow {self.data['title']} ({flow_run_name()})"
        # One warning while it waits (a worker's run has no Ctrl-C: cancelling the run stops it) and one
        # INFO line once it has the lock, both the library's (library_logs_in_run puts them in the run's logs)
        self.held.enter_context(data_root_lock(cfg.data_dir, command, how_to_stop=CANCEL_TO_STOP))

    def release(self) -> None:
        """The data root's lock let go once nothing this run started can write there (runtime.let_go)."""
        why = f"stage '{self.stage}' failed" if self.data["status"] == "Failed" else "the flow run was stopped"
        let_go(self.held, self.futures, get_run_logger(), why)

    def fail(self, exc: BaseException) -> StageFailed:
        from mlc_pipeline.secrets import redact

        cause = f"stage '{self.stage}' failed: {type(exc).__name__}: {redact(str(exc))}."
        if self.cfg is None:      # nothing ran and nothing was looked at: a rerun would fail the same way
            msg = (f"{cause} The config did not load, so no stage ran and the data root was not touched: "
                   "fix the config file, its path or the overrides, then start a new run.")
            self.data.update(status="Failed", error=msg, failed_stage=self.stage)
            return StageFailed(msg)
        state = published_state(self.cfg)
        self.data.update(state)
        msg = (f"{cause} Published versions are never modified by a failed stage: latest dataset "
               f"{state.get('latest_dataset') or 'none'}, latest model {state.get('latest_model') or 'none'}. "
               + ("Fix that, then rerun (every run, scheduled ones too, fails the same way until then): "
                  if fixed_by_hand(exc) else "Rerun to resume: ") + "what was collected and curated is kept in the catalog.")
        self.data.update(status="Failed", error=msg, failed_stage=self.stage)
        return StageFailed(msg)

    def finish(self) -> dict:
        self.data.update(published_state(self.cfg))
        self.data["status"] = "Completed"
        return self.data


class TaskStages(Stages):
    """The loop's stages as Prefect tasks, each result kept in the run's record for the artifacts."""

    def __init__(self, run: Run):
        super().__init__(progress=False)
        self.run = run
        self.seconds = run.data["seconds"]

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.run.stage = name           # a failure names the stage it happened in
        with super().stage(name):
            yield

    def call(self, stage_task, *args):
        """A stage task's result. With the thread runner it runs in the flow's own thread: a cancel's
        SIGTERM (Prefect raises it in this thread) then stops the stage where it is, as Ctrl-C or SIGTERM
        stops `mlc` (downloads in flight cut, the catalog run recorded interrupted), before the lock is
        let go. A runner thread would go on writing until SIGKILL (the prefect28 audit). On a Dask
        cluster it is submitted and waited for."""
        if isinstance(FlowRunContext.get().task_runner, ThreadPoolTaskRunner):
            return stage_task(*args)
        return self.submit(stage_task, *args).result()

    def submit(self, stage_task, *args):
        future = stage_task.submit(*args)
        self.run.futures.append((stage_task, future))   # waited for before the lock is let go (Run.release)
        return future

    def collect(self, cfg: Config) -> dict:
        out = self.call(collect_stage, cfg)
        self.run.data.update(collect=out, curate=out["curate"])
        return out

    def curate(self, cfg: Config) -> dict:
        out = self.call(curate_stage, cfg)
        self.run.data["curate"] = out
        return out

    def build(self, cfg: Config) -> dict:
        out = self.call(build_stage, cfg)
        self.run.data["builds"].append(out)
        return out

    def train(self, cfg: Config, dataset_dir: str, round_no: int, previous: str | None = None,
              publish: bool = True, previous_taken_down: str | None = ASK) -> dict:
        out = self.call(train_stage, cfg, dataset_dir, round_no, previous, publish, previous_taken_down)
        self.run.data["models"].append(out)
        return out

    def reuse(self, cfg: Config, model: dict) -> dict:
        models = self.run.data["models"]
        if models and models[-1]["round"] == 0:     # trained, then not shipped: the summary says so apart
            self.run.data["round0_not_shipped"] = models.pop()
        models.append(model)        # round 0 in the summary: the shipped model mining goes on from
        return model

    def assess(self, cfg: Config, bundle_dir: str, ds: dict) -> dict:
        return self.call(assess_stage, cfg, bundle_dir, ds)

    def alternatives(self, cfg: Config, dataset_dir: str) -> dict[str, dict]:
        names = alternative_variants(cfg)           # trained side by side, as the task runner allows
        futures = [self.submit(train_alternative_stage, cfg, dataset_dir, n) for n in names]
        self.run.data["alternatives"] = {n: f.result() for n, f in zip(names, futures)}
        return self.run.data["alternatives"]

    def mine(self, cfg: Config, bundle_dir: str, round_no: int) -> dict:
        out = self.call(mine_stage, cfg, bundle_dir, round_no)
        self.run.data["mined"].append(out)
        return out

    def report(self, cfg: Config, result: PipelineResult) -> str:
        # known now: the artifacts of a run that fails in the report stage still name the shipped model
        self.run.data.update(shipped=result.shipped, not_shipped=result.not_shipped, reused=result.reused)
        self.run.data["report"] = self.call(report_stage, cfg, plain(result))
        return self.run.data["report"]


def publish_artifacts(run: Run, key: str | None = None) -> None:
    try:
        if key:
            publish(run.data, summary_key=key)
        else:
            publish(run.data)
    except Exception as exc:   # artifacts are a report; never mask the run's real outcome
        get_run_logger().warning("artifacts not created: %s", exc)


def failed(run: Run, exc: BaseException, key: str | None = None) -> StageFailed:
    """A failed run: its message logged, its artifacts (the download progress says the run ended)."""
    failure = run.fail(exc)
    get_run_logger().error(str(failure))
    publish_artifacts(run, key)
    try:
        with get_client(sync_client=True) as client:
            end_progress(client, get_run_context().flow_run.id, "failed")
    except Exception as err:   # artifacts are a report; never mask the run's real outcome
        get_run_logger().warning("download progress artifact not closed: %s", err)
    return failure


def start(run: Run, config_path: str, overrides: dict | None, train: bool = False) -> Config:
    """Load the config (and, for a flow that trains, check its training settings: a wrong arch fails
    before collecting, not at the train stage), then take the data root's lock. A ConfigError from
    either is stage 'config' (nothing ran, nothing published is looked up); a failure taking the lock
    is stage 'data root'."""
    logger = get_run_logger()
    cfg = load_config(config_path, overrides)
    if train:
        try:
            check_train_settings(cfg)   # a bad train.arch or train.pretrained: the config's (nightly25 #1)
        except ConfigError:
            raise
        except Exception:               # not the config's (e.g. weights not downloadable): what is published is said
            run.cfg = cfg
            raise
    run.cfg = cfg
    run.data.update(data_dir=str(cfg.data_dir), config_loaded=True)
    logger.info("flow run %s: config %s%s, data root %s", flow_run_name(), config_path,
                f" with overrides {shown_settings(overrides)}" if overrides else "", cfg.data_dir)
    run.stage = "data root"         # its lock: a data root that cannot be written fails here, not "config"
    run.hold_data_root(cfg)
    return cfg


# ------------------------------------------------------------------------------------------ flows

@flow(name="collect-and-train", task_runner=task_runner(), validate_parameters=True, **STOPPED_HOOKS,
      description="Collect, curate, build, train, mine hard negatives and retrain, report.")
def collect_and_train(config_path: str = DEFAULT_CONFIG, overrides: dict | None = None) -> dict:
    """The whole pipeline, one task per stage. Parameters: the pipeline YAML config (relative to the
    working directory, which the deployment's pull step sets to the project root) and overrides
    merged into it (e.g. {"train": {"epochs": 2}})."""
    logger = get_run_logger()
    run = Run("collect-and-train", config_path, overrides)
    with library_logs_in_run():
        try:
            cfg = start(run, config_path, overrides, train=True)
            result = run_stages(cfg, TaskStages(run))
            run.data.update(stopped_early=result.stopped_early, stop_reason=result.stop_reason,
                            shipped=result.shipped, not_shipped=result.not_shipped)
        except Exception as exc:
            raise failed(run, exc) from exc
        finally:
            run.release()
        result = run.finish()
        publish_artifacts(run)
    logger.info("done: dataset %s, model %s, report %s", result.get("latest_dataset"), result.get("latest_model"),
                result.get("report"))
    return result


@flow(name="rebuild-report", task_runner=task_runner(), validate_parameters=True, **STOPPED_HOOKS,
      description="Curate what is in the catalog, build a dataset version if it changed, write the report. "
                  "No downloads, no training.")
def rebuild_report(config_path: str = DEFAULT_CONFIG, overrides: dict | None = None) -> dict:
    run = Run("rebuild-report", config_path, overrides)
    with library_logs_in_run():
        try:
            cfg = start(run, config_path, overrides)
            rebuild_stages(cfg, TaskStages(run))
        except Exception as exc:
            raise failed(run, exc, DATASET_SUMMARY_KEY) from exc
        finally:
            run.release()
        result = run.finish()
        publish_artifacts(run, DATASET_SUMMARY_KEY)
    return result

