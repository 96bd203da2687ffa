"""The Prefect run summary, from the run's record (flows/collect_and_train.py's `Run.data`: the
stages' results as they came): the markdown of a run that completed or failed, and the rows of the
tables beside it. Its rounds and alternatives tables are report/rounds.py's, which the HTML report
and `mlc run` print too.

Prefect's artifacts are made in flows/artifacts.py; the keys are here because the summary names
the tables (keys may only hold lowercase letters, digits and dashes).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from mlc_pipeline.dataset.card import table_cell
from mlc_pipeline.report.curves import curve_markdown
from mlc_pipeline.report.model import ALTERNATIVES_OFF_TEXT, bundle_network_line
from mlc_pipeline.report.rounds import rounds_markdown, shipped_of, variants_markdown
from mlc_pipeline.rounds import record
from mlc_pipeline.secrets import shown_settings

SUMMARY_KEY = "mlc-run-summary"
DATASET_SUMMARY_KEY = "mlc-dataset-summary"
PER_CLASS_KEY = "mlc-per-class-metrics"
REJECTED_KEY = "mlc-rejected-by-reason"
MINED_KEY = "mlc-mined-negatives"

# Text from outside (a failed download's reason holds a result URL's host, an error line a reply's keys)
# must render as text: Prefect's UI renders HTML in markdown (the security26 audit saw an attacker's <img>
# drawn, which loads its address for whoever views the run) and links, images, emphasis and strikethrough
# in Markdown. One escaper for all such text, the dataset card's (report/published.py's uses this name).
md_escape = table_cell


def counts_text(counts: dict | None) -> str:
    """{'http-404': 2, 'too-large': 1} -> 'http-404 2, too-large 1' (escaped), most first; 'none'."""
    if not counts:
        return "none"
    return ", ".join(f"{md_escape(k)} {n}" for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0]))))


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


def run_rounds(run: dict) -> SimpleNamespace:
    """The run's models as report/rounds.py's tables read a PipelineResult: a record per round (the
    negatives each mining round added, from its mine result), the shipped bundle, a round 0 trained
    but not shipped, the alternatives."""
    added = {m["round"]: m.get("added", 0) for m in run.get("mined") or []}

    def rec(m: dict):
        return record(m["round"], m["dataset_version"], m["bundle"], m["metrics"], added.get(m["round"], 0))

    refused = run.get("round0_not_shipped")
    return SimpleNamespace(rounds=[rec(m) for m in run.get("models") or []], shipped=run.get("shipped") or "",
                           round0_not_shipped=rec(refused) if refused else None,
                           alternatives=run.get("alternatives") or {})


def alternatives_markdown(run: dict) -> str:
    """report/rounds.py's alternatives table of the run: round 0's product model, the comparison
    heads, the product after mining (the heads' names from round 0's bundle.json, where it is)."""
    models = run["models"]
    where = models[0].get("bundle_dir")
    return variants_markdown(run_rounds(run), {m["bundle"]: m["metrics"]["test"] for m in models},
                             Path(where).parent if where else None)


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
                  f"failed: {counts_text(c.get('failed'))}; shortfall: {shortfall_text(c.get('shortfall'))}", ""]
        lines += short_sets_markdown(c)
    k = run.get("curate")
    if k:
        lines += ["## Curate", "",
                  f"{k['accepted']} accepted; {k['inspected']} files inspected, {k['reused']} reused from the "
                  f"catalog's per-content cache; rejected {sum(k.get('rejected', {}).values())}, "
                  f"duplicates {sum(k.get('duplicates', {}).values())} (table `{REJECTED_KEY}`)"
                  + (f"; taken down as copies of removed photos {k['taken_down']}" if k.get("taken_down") else "")
                  + (f"; held for review, looking like removed photos {k['held']}" if k.get("held") else ""), ""]
        if k.get("upgrade"):        # a migration, files inspected again: the log line scrolled past
            lines += ["**Once after an upgrade:**", ""] + [f"- {md_escape(line)}" for line in k["upgrade"]] + [""]
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
        lines += [rounds_markdown(run_rounds(run))]
        if run.get("reused"):
            lines += [f"**Round 0:** {md_escape(run['reused'])}.", ""]
        if run.get("not_shipped"):
            lines += [f"**Not shipped:** {md_escape(run['not_shipped'])}.", ""]
        # every round's numbers, held for review included, whether or not mining stopped before its last
        # round (a run that mined every round said nothing of what it held: the mining26 leftovers)
        rounds_mined = "".join(mined_numbers([m]) for m in run.get("mined") or [])
        if run.get("stop_reason"):
            lines += [f"Mining stopped: {md_escape(run['stop_reason'])}." + rounds_mined, ""]
        elif rounds_mined:
            lines += ["Mining:" + rounds_mined, ""]
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
    if models and (run.get("alternatives") or run.get("status") == "Completed"):
        # the HTML report's table, with or without comparison heads, and as it says when there are none:
        # an absent table must not look like a lost one (a failed stage is not "off"; the verify24 audit)
        lines += ["## Alternatives on the same data (round 0)", "", alternatives_markdown(run)]
        lines += [] if run.get("alternatives") else [ALTERNATIVES_OFF_TEXT, ""]
    if run.get("seconds"):
        lines += ["## Time per stage (s)", "", ", ".join(f"{k} {v}" for k, v in run["seconds"].items()), ""]
    return "\n".join(lines)
