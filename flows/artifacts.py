"""The Prefect artifacts of a run: a markdown summary and tables, built from the stages' results.

Keys are fixed, so the UI's Artifacts page shows each one's history across runs (keys may only hold
lowercase letters, digits and dashes).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from mlc_pipeline.secrets import shown_settings
from mlc_pipeline.shipping import shared_valid_f1
from mlc_pipeline.report.curves import curve_markdown
from mlc_pipeline.report.tables import pct
from mlc_pipeline.report.model import ALTERNATIVES_OFF_TEXT, bundle_network_line, shipped_of

SUMMARY_KEY = "mlc-run-summary"
DATASET_SUMMARY_KEY = "mlc-dataset-summary"
PER_CLASS_KEY = "mlc-per-class-metrics"
REJECTED_KEY = "mlc-rejected-by-reason"
MINED_KEY = "mlc-mined-negatives"


def md_escape(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


# --------------------------------------------------------------------------------------- tables

def per_class_rows(models: list[dict]) -> list[dict]:
    """One row per (round, class) of the product models' test metrics: before and after mining."""
    rows = []
    for m in models:
        test = m["metrics"].get("test", {})
        for cls, v in test.get("per_class", {}).items():
            rows.append({"round": m["round"], "dataset": m["dataset_version"], "model": m["bundle"],
                         "class": cls, "precision": round(v["precision"], 3), "recall": round(v["recall"], 3),
                         "f1": round(v["f1"], 3), "support": v["support"]})
    return rows


def rejected_rows(curated: dict) -> list[dict]:
    """What curation removed, by reason (rejections are catalog-wide; duplicates are recomputed every run)."""
    rows = [{"status": "rejected", "reason": r, "count": n} for r, n in sorted(curated.get("rejected", {}).items())]
    rows += [{"status": "duplicate", "reason": r, "count": n} for r, n in sorted(curated.get("duplicates", {}).items())]
    rows += [{"status": "accepted (label conflict)", "reason": r, "count": n}
             for r, n in sorted(curated.get("conflicts", {}).items())]
    return rows or [{"status": "-", "reason": "nothing removed", "count": 0}]


def mined_rows(mined: list[dict]) -> list[dict]:
    # likeness: how much it looked like the class to the model (mined.csv; '' under the score hold)
    rows = [{"round": m["round"], "photo_id": n["photo_id"], "score": n["score"], "accepted_as": n["accepted_as"],
             "likeness": n.get("likeness", "")} for m in mined for n in m.get("negatives", [])]
    if not rows:
        why = "no mining round ran" if not mined else "the model accepted no pool image"
        rows = [{"round": "-", "photo_id": f"({why})", "score": "", "accepted_as": "", "likeness": ""}]
    return rows


def mined_numbers(mined: list[dict]) -> str:
    """' Round 1 scored 41 pool images: 0 accepted as a class (...).': the last mining round's counts
    (mine_round's result), or '' when the run has none."""
    m = mined[-1] if mined else {}
    if "scored" not in m:
        return ""
    held, over, late = len(m.get("held") or []), m.get("over_cap", 0), m.get("decided_in_review", 0)
    accepted = m.get("accepted", m["added"] + held + over + late)
    decided = f", {late} decided in review meanwhile" if late else ""
    return (f" Round {m['round']} scored {m['scored']} pool images: {accepted} accepted as a class "
            f"({m['added']} added as hard negatives, {held} held for review, {over} over the round's cap{decided}).")


# ------------------------------------------------------------------------------------- markdown

def counts_markdown(counts: dict) -> list[str]:
    splits = ("train", "valid", "test", "probe")
    lines = ["| label | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
    for label, per in counts.get("per_label_split", {}).items():
        lines.append(f"| {md_escape(label)} | " + " | ".join(str(per.get(s, 0)) for s in splits) + " |")
    lines.append(f"\nImages: **{counts.get('images', 0)}**")
    return lines


def rounds_markdown(models: list[dict], mined: list[dict], not_shipped: dict | None = None) -> list[str]:
    """One row per round; `not_shipped`: a round 0 trained in this run but not shipped (the shipped
    model it did not beat is round 0, and mining went on from that), in a row of its own."""
    added = {m["round"]: m.get("added", 0) for m in mined}
    lines = ["| round | dataset | model | macro F1 (test) | macro F1 (valid, without mined) | unknown accepted (test other) "
             "| unknown accepted (probe) | negatives added |", "|---|---|---|---|---|---|---|---|"]
    rows = [(m, str(m["round"])) for m in models]
    if not_shipped:
        rows.insert(1, (not_shipped, "0, trained, not shipped"))
    for m, round_label in rows:
        t, v = m["metrics"].get("test", {}), shared_valid_f1(m["metrics"])
        lines.append(f"| {round_label} | {m['dataset_version']} | {m['bundle']} | {t.get('macro_f1', 0):.3f} "
                     f"| {'n/a' if v is None else f'{v:.3f}'} "
                     f"| {pct(t.get('unknown_accepted'))} | {pct(t.get('probe_accepted'))} "
                     f"| {added.get(m['round'], 0) if m['round'] else '-'} |")
    return lines


def short_sets_markdown(collected: dict) -> list[str]:
    """One line per set that ended with fewer usable images than its count, and by how much."""
    short = collected.get("short") or []
    if not short:
        return []
    return ["**Short sets** (fewer usable images than their count):", ""] + [f"- {md_escape(s)}" for s in short] + [""]


def shortfall_text(shortfall: dict | None) -> str:
    """{'train/kite': 3, 'pool/other': 20} -> 'train/kite 3 images short, pool/other 20 images short'."""
    if not shortfall:
        return "none"
    return ", ".join(f"{md_escape(name)} {n} image{'s' if n != 1 else ''} short" for name, n in shortfall.items())


def published_lines(run: dict) -> list[str]:
    if run.get("config_loaded") is False:        # nothing to look in: do not claim "none"
        return ["- published versions: not looked up (the config did not load)", ""]
    return [f"- latest dataset version: **{run.get('latest_dataset') or 'none'}**",
            f"- latest model: **{run.get('latest_model') or 'none'}**", ""]


def summary_markdown(run: dict) -> str:
    """The run summary: dataset version and counts, model metrics before/after mining, the report."""
    title = run.get("title", "collect-and-train")
    lines = [f"# {title}: {run['status']}", ""]
    if run.get("error"):
        lines += ["## Failed", "", f"**{md_escape(run['error'])}**", ""]
    lines += [f"- config: `{run['config_path']}`" + (f" with overrides `{shown_settings(run['overrides'])}`" if run.get("overrides") else ""),
              f"- data root: `{run.get('data_dir', '?')}`"]
    if run.get("report"):
        lines.append(f"- HTML report: `{run['report']}`")
    lines += published_lines(run)
    c = run.get("collect")
    if c:
        lines += ["## Collect", "",
                  f"{c['downloaded']} downloaded, {c['found_new']} new candidates, {c['api_calls']} API calls; "
                  f"failed: {c.get('failed') or 'none'}; shortfall: {shortfall_text(c.get('shortfall'))}", ""]
        lines += short_sets_markdown(c)
    k = run.get("curate")
    if k:
        lines += ["## Curate", "",
                  f"{k['accepted']} accepted; {k['inspected']} files inspected, {k['reused']} reused from the "
                  f"catalog's per-content cache; rejected {sum(k.get('rejected', {}).values())}, "
                  f"duplicates {sum(k.get('duplicates', {}).values())} (table `{REJECTED_KEY}`)"
                  + (f"; taken down as copies of removed photos {k['taken_down']}" if k.get("taken_down") else "")
                  + (f"; held for review, looking like removed photos {k['held']}" if k.get("held") else ""), ""]
    builds = run.get("builds") or []
    if builds:
        b = builds[-1]
        lines += [f"## Dataset {b['name']} {b['version']}", "",
                  ("published in this run" if b["published"] else "unchanged (identical to the latest version)")
                  + f": `{b['path']}`", ""]
        if len(builds) > 1:
            lines += ["Versions built in this run: " + ", ".join(x["version"] for x in builds), ""]
        lines += counts_markdown(b.get("counts", {})) + [""]
    models = run.get("models") or []
    if models:
        lines += ["## Model: before and after mining (test split)", ""]
        # the shipped model (models/LATEST): the last round's, unless that one accepted more unknowns
        shipped = shipped_of(models, run.get("shipped"), bundle_of=lambda m: m["bundle"])
        if shipped.get("bundle_dir"):
            lines += [f"Network: {md_escape(bundle_network_line(shipped['bundle_dir']))}", ""]
        lines += rounds_markdown(models, run.get("mined") or [], run.get("round0_not_shipped")) + [""]
        if run.get("reused"):
            lines += [f"**Round 0:** {md_escape(run['reused'])}.", ""]
        if run.get("not_shipped"):
            lines += [f"**Not shipped:** {md_escape(run['not_shipped'])}.", ""]
        if run.get("stop_reason"):
            lines += [f"Mining stopped: {md_escape(run['stop_reason'])}." + mined_numbers(run.get("mined") or []), ""]
        warnings = shipped["metrics"].get("warnings") or []
        if warnings:
            lines += ["**Training warnings** (latest model: its data, its cap, its time budget):", ""]
            lines += [f"- {md_escape(w)}" for w in warnings] + [""]
        lines += [f"Per-class metrics: table `{PER_CLASS_KEY}`; mined negatives: table `{MINED_KEY}`.", ""]
        curve = shipped["metrics"].get("test", {}).get("curve")
        if curve:
            lines += [f"## Operating curve of {shipped['bundle']} (test split)", "",
                      "Each row is one value of `train.max_unknown_accepted`; the chosen row is marked. "
                      "The plot is in the bundle (`curve.png`) and the HTML report.", "",
                      curve_markdown(curve)]
    if run.get("alternatives"):
        lines += ["## Alternatives on the same data (round 0)", "",
                  "| variant | macro F1 | unknown accepted (test other) | unknown accepted (probe) |",
                  "|---|---|---|---|"]
        for name, m in run["alternatives"].items():
            t = m.get("test", m)
            lines.append(f"| {name} | {t.get('macro_f1', 0):.3f} | {pct(t.get('unknown_accepted'))} "
                         f"| {pct(t.get('probe_accepted'))} |")
        lines.append("")
    elif models and run.get("status") == "Completed":    # as the HTML report says: an absent table must
                                                         # not look like a lost one (a failed stage is not "off")
        lines += ["## Alternatives on the same data (round 0)", "", ALTERNATIVES_OFF_TEXT, ""]
    if run.get("seconds"):
        lines += ["## Time per stage (s)", "", ", ".join(f"{k} {v}" for k, v in run["seconds"].items()), ""]
    return "\n".join(lines)


def publish(run: dict, summary_key: str = SUMMARY_KEY) -> None:
    """Create every artifact the run has data for (called on success and on failure)."""
    status = run["status"]
    create_markdown_artifact(summary_markdown(run), key=summary_key,
                             description=f"{run.get('title', 'run')} summary ({status})")
    if run.get("curate"):
        create_table_artifact(rejected_rows(run["curate"]), key=REJECTED_KEY,
                              description="curation: files rejected or removed, by reason")
    if run.get("models"):
        create_table_artifact(per_class_rows(run["models"]), key=PER_CLASS_KEY,
                              description="per-class test metrics of the product model, every round")
    if run.get("models") or run.get("mined"):
        create_table_artifact(mined_rows(run.get("mined") or []), key=MINED_KEY,
                              description="hard negatives mined from the pool (moved into training 'other')")


# ------------------------------------------------------------------- runs that never finished

def published_state(cfg, since: datetime | None = None) -> dict:
    """The latest dataset version and model as they are on disk now. With `since` (when a run
    started), also what was published from then on: `new_datasets`, the dataset versions built since
    (dataset.json's created_at), and `new_models`, the model bundles trained since (bundle.json's)."""
    if cfg is None:
        return {}
    from mlc_pipeline.manifest import latest_version
    from mlc_pipeline.model.variants import latest_model

    model = latest_model(cfg)
    state = {"latest_dataset": latest_version(cfg.layout.datasets),
             "latest_model": model.name if model else None}
    if since is not None:
        state.update(new_datasets=datasets_since(cfg.layout.datasets, since),
                     new_models=models_since(cfg.layout.models, since))
    return state


def datasets_since(root, since: datetime) -> list[str]:
    """The dataset versions under `root` built at or after `since`, oldest first. A version whose
    dataset.json cannot be read is listed too: it cannot be told apart, and a damaged version that
    may be this run's must not go unmentioned."""
    from mlc_pipeline.manifest import versions

    out = []
    for v in versions(root):
        try:
            built = json.loads((root / v / "dataset.json").read_text())["created_at"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            out.append(f"{v} (perhaps: its dataset.json is unreadable, {type(exc).__name__})")
            continue
        if datetime.fromtimestamp(float(built), timezone.utc) >= since.replace(microsecond=0):
            out.append(v)
    return out


def models_since(models_dir, since: datetime) -> list[str]:
    """The model bundles under `models_dir` trained at or after `since` (bundle.json's created_at,
    to the second), oldest first; one whose bundle.json has no readable time is left out: `mlc models`
    lists it as unusable."""
    from mlc_pipeline.model.registry import list_bundles

    out = []
    for info in list_bundles(models_dir):
        try:
            made = datetime.fromisoformat(info.created_at)
        except ValueError:          # "" (bundle.json unreadable) or not a time
            continue
        if made.tzinfo is None:
            made = made.replace(tzinfo=timezone.utc)
        if made >= since.replace(microsecond=0):
            out.append(info.name)
    return out


def stopped_published_text(published: dict | None, started: bool) -> str:
    """What a cancelled or crashed run left published: each stage publishes whole (a dataset version,
    a model, models/LATEST), so the stages that finished before it stopped stay published."""
    kept = "What was collected and curated is kept in the catalog (the next run resumes from it)."
    if not started:
        return f"The run never started running, so it published nothing. {kept}"
    if published is None or "new_datasets" not in published:
        return ("Each stage publishes whole, so a stage that finished before the run stopped may have published "
                f"a dataset version or moved models/LATEST: see the latest ones below. {kept}")
    datasets, models = published["new_datasets"], published["new_models"]
    if not datasets and not models:
        return f"It published no dataset version and trained no model before it stopped. {kept}"
    parts = []
    if datasets:
        parts.append("dataset version" + ("s " if len(datasets) > 1 else " ") + ", ".join(
            f"{v} (the latest now)" if v == published.get("latest_dataset") else v for v in datasets))
    if models:
        parts.append("model" + ("s " if len(models) > 1 else " ") + ", ".join(
            f"{m} (models/LATEST now)" if m == published.get("latest_model") else f"{m} (not LATEST)"
            for m in models))
    return ("Each stage publishes whole, and the stages that finished before the run stopped stay published: "
            f"since it started, {'; '.join(parts)}. {kept}")


def stopped_markdown(title: str, flow_run, state, published: dict | None, why_unknown: str = "") -> str:
    """The summary of a run that was cancelled or crashed: no stage result is known here, only that,
    and what the data root shows was published since the run started."""
    params = flow_run.parameters or {}
    status = "Cancelled" if state.is_cancelling() else state.name     # on_cancellation sees Cancelling
    lines = [f"# {title}: {status}", "", f"**{md_escape(state.message or state.name)}**", "",
             md_escape(stopped_published_text(published, flow_run.start_time is not None)), "",
             f"- flow run: `{flow_run.name}`",
             f"- config: `{params.get('config_path', '?')}`"
             + (f" with overrides `{shown_settings(params['overrides'])}`" if params.get("overrides") else "")]
    if published is None:
        lines += [f"- published versions: not looked up ({why_unknown})", ""]
    else:
        lines += [f"- latest dataset version: **{published.get('latest_dataset') or 'none'}**",
                  f"- latest model: **{published.get('latest_model') or 'none'}**", ""]
    return "\n".join(lines)


def write_stopped_summary(client, flow_name: str, flow_run, state) -> None:
    """The `mlc-run-summary` (or dataset summary) of a cancelled or crashed run, so the UI does not go
    on showing the previous run's; from a state hook or from flows/stale_runs.py."""
    from prefect.client.schemas.actions import ArtifactCreate

    from mlc_pipeline.config import load_config

    params = flow_run.parameters or {}
    published, why = None, ""
    try:
        published = published_state(load_config(params.get("config_path") or "configs/offline.yaml",
                                                params.get("overrides") or None), flow_run.start_time)
    except Exception as exc:   # a summary of what is known; the run's state is what matters
        from mlc_pipeline.secrets import redact

        why = f"the config did not load: {type(exc).__name__}: {redact(str(exc))}"
    key = DATASET_SUMMARY_KEY if flow_name == "rebuild-report" else SUMMARY_KEY
    client.create_artifact(ArtifactCreate(
        key=key, type="markdown", flow_run_id=flow_run.id, description=f"{flow_name} summary ({state.name})",
        data=stopped_markdown(flow_name, flow_run, state, published, why)))
