"""The model part of the HTML report: rounds of mining and the alternatives side by side (the tables
of report/rounds.py, which the Prefect run summary prints too), per-class metrics, operating and
loss curves, the error analysis."""

from __future__ import annotations

import base64
import html
import json
import tempfile
from pathlib import Path

from mlc_pipeline.report.analysis import analysis_section, mining_section
from mlc_pipeline.report.curves import curve_markdown

from mlc_pipeline.model.bundle import MetaError, read_meta
from mlc_pipeline.model.plots import plot_curves
from mlc_pipeline.report.rounds import round_label, rounds_markdown, shipped_round, variants_markdown
from mlc_pipeline.report.tables import pct


def md_cell_html(cell: str) -> str:
    """A markdown table cell as HTML: escaped, and a whole-cell `**bold**` (the chosen curve point) bold."""
    if len(cell) > 4 and cell.startswith("**") and cell.endswith("**"):
        return f"<b>{html.escape(cell[2:-2])}</b>"
    return html.escape(cell)


def md_to_html_table(md: str) -> str:
    lines = [l for l in md.strip().splitlines() if not set(l) <= set("|-")]
    cells = [[c.strip() for c in l.strip("|").split("|")] for l in lines]
    head = "".join(f"<th>{md_cell_html(c)}</th>" for c in cells[0])
    body = "".join("<tr>" + "".join(f"<td>{md_cell_html(c)}</td>" for c in row) + "</tr>" for row in cells[1:])
    return f"<table><tr>{head}</tr>{body}</table>"


def upgrade_lines(result) -> list[str]:
    """What a run did once because the data root was made by older code (a catalog migrated, JPEGs inspected
    again): `mlc run` prints it after the rounds; the log line alone scrolled past above the progress."""
    return [f"once after an upgrade: {line}" for line in getattr(result, "upgrade", None) or []]


def data_warnings(result, models_dir: Path) -> list[str]:
    """The run's short sets, then the warnings the last model recorded about its training data."""
    lines = [f"short set after collection: {line}" for line in getattr(result, "shortfall", None) or []]
    if result.rounds:
        metrics = models_dir / shipped_round(result).bundle / "metrics.json"
        lines += [f"training: {w}" for w in json.loads(metrics.read_text()).get("warnings", [])]
    return lines


# Said under the table when a run trained no comparison head (train.compare_baselines is off by default).
ALTERNATIVES_OFF_TEXT = ("No comparison heads were trained in this run. To see the product against an explicit "
                         "'other' class and a softmax head (the seeds' kind of head) on the same data, run with "
                         "`--set train.compare_baselines=true` (each costs as much as the product model).")
ALTERNATIVES_OFF = ("<p id='alternatives-off'>" + html.escape(ALTERNATIVES_OFF_TEXT).replace(
    "`--set train.compare_baselines=true`", "<code>--set train.compare_baselines=true</code>") + "</p>")


def run_notes(result) -> list[str]:
    """What the run decided about its models, when it did not simply train and ship the last round."""
    notes = []
    if getattr(result, "reused", ""):
        notes.append(f"<p id='reused'><b>Round 0:</b> {html.escape(result.reused)}.</p>")
    if getattr(result, "not_shipped", ""):
        notes.append(f"<p id='not-shipped'><b>Not shipped:</b> {html.escape(result.not_shipped)}.</p>")
    if getattr(result, "stop_reason", ""):      # the loop knew why; the page only showed fewer rounds
        notes.append(f"<p id='mining-stopped'><b>Mining stopped:</b> {html.escape(result.stop_reason)}.</p>")
    for line in getattr(result, "upgrade", None) or []:     # absent from runs saved before 0.3.0
        notes.append(f"<p class='upgrade'><b>Once after an upgrade:</b> {html.escape(line)}</p>")
    return notes


def model_section(result, models_dir: Path, catalog_path=None, limits=None) -> str:
    """HTML for a PipelineResult whose bundles live in `models_dir`; the catalog at `catalog_path`
    says which mined negatives were undone since (report/analysis.mining_section)."""
    if not result.rounds:
        return ""
    metrics = {r.bundle: json.loads((models_dir / r.bundle / "metrics.json").read_text())["test"]
               for r in result.rounds}
    last = shipped_round(result)
    bundle = models_dir / last.bundle
    parts = ["<h2 id='model'>Model</h2>", f"<p>Network: {html.escape(bundle_network_line(bundle))}</p>"]
    parts += run_notes(result)
    warnings = data_warnings(result, models_dir)
    if warnings:
        parts += ["<h3 id='data-warnings'>Data warnings</h3><ul>"]
        parts += [f"<li>{html.escape(w)}</li>" for w in warnings] + ["</ul>"]
    parts += ["<h3>Mining rounds</h3>", md_to_html_table(rounds_markdown(result)),
             "<h3>Alternatives on the same data</h3>", md_to_html_table(variants_markdown(result, metrics, models_dir)),
             "" if result.alternatives else ALTERNATIVES_OFF,
             f"<h3>Per-class metrics ({html.escape(last.bundle)}, test split)</h3>",
             md_to_html_table(per_class_markdown(metrics[last.bundle]))]
    curves = operating_curves(result, metrics)
    if curves:
        with tempfile.TemporaryDirectory() as tmp:   # embedded in the page; published bundles stay as written
            png = plot_curves(curves, Path(tmp) / "curves.png",
                              title="macro F1 against unknowns accepted, every round (★ = chosen)").read_bytes()
        parts += ["<h3>Operating curve: accuracy against unknowns accepted</h3>",
                  "<p>Each point is one value of <code>train.max_unknown_accepted</code> (the share of held-out "
                  "'other' images the thresholds may accept); solid lines: test 'other' images, dashed: probe "
                  "images (kinds under no query). The star is the operating point in use.</p>",
                  f"<img alt='operating curve' src='data:image/png;base64,{base64.b64encode(png).decode()}'>",
                  md_to_html_table(curve_markdown(metrics[last.bundle].get("curve", [])))
                  if metrics[last.bundle].get("curve") else ""]
    probes = probe_markdown(result, metrics)
    if probes:
        parts += ["<h3>Unknown kinds (probe queries): accepted, and as what</h3>", md_to_html_table(probes)]
    loss = bundle / "loss.png"
    if loss.exists():
        parts.append(f"<h3>Loss curves</h3><img alt='loss curves' src='data:image/png;base64,"
                     f"{base64.b64encode(loss.read_bytes()).decode()}'>")
    parts.append(analysis_section(bundle))
    # round r was mined by the model of round r-1 (mined-r<r>.csv); other rounds a bundle mined show too
    parts.append(mining_section([(r.round, models_dir / prev.bundle) for prev, r in zip(result.rounds, result.rounds[1:])]
                                + [(result.rounds[-1].round + 1, models_dir / result.rounds[-1].bundle)],
                                catalog_path, limits))
    return "\n".join(parts)


def operating_curves(result, metrics_by_bundle: dict[str, dict]) -> dict[str, list[dict]]:
    """The plot's lines: each model's label -> its operating curve (test metrics)."""
    return {round_label(r): metrics_by_bundle[r.bundle]["curve"] for r in result.rounds
            if metrics_by_bundle[r.bundle].get("curve")}


def per_class_markdown(metrics: dict) -> str:
    lines = ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for c, m in metrics["per_class"].items():
        f1 = "n/a (no test image)" if m["f1"] is None else f"{m['f1']:.3f}"
        lines.append(f"| {c} | {m['precision']:.3f} | {m['recall']:.3f} | {f1} | {m['support']} |")
    return "\n".join(lines) + "\n"


def probe_markdown(result, metrics_by_bundle: dict[str, dict]) -> str:
    """One row per probe query, one column per round: share accepted and the classes it was taken for."""
    rounds = [r for r in result.rounds if metrics_by_bundle[r.bundle].get("probe_by_query")]
    if not rounds:
        return ""
    queries = sorted({q for r in rounds for q in metrics_by_bundle[r.bundle]["probe_by_query"]})
    lines = ["| probe query | " + " | ".join(round_label(r) for r in rounds) + " |",
             "|---|" + "---|" * len(rounds)]
    for q in queries:
        cells = []
        for r in rounds:
            m = metrics_by_bundle[r.bundle]["probe_by_query"].get(q)
            if m is None:
                cells.append("n/a")
                continue
            taken = ", ".join(f"{c} {n}" for c, n in sorted(m["accepted_as"].items(), key=lambda x: -x[1]))
            cells.append(f"{pct(m['accepted'])} of {m['n']}" + (f" (as {taken})" if taken else ""))
        lines.append(f"| {q} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def bundle_network_line(bundle_dir: str | Path) -> str:
    """network_line() of a bundle folder, or why it cannot be read (read_meta: a bundle.json that is
    not an object crashed the report and the run summary, the verify24 audit)."""
    try:
        return network_line(read_meta(bundle_dir))
    except MetaError as exc:
        return f"unknown ({exc})"


def _epochs(n) -> str:
    return f"{n} epoch{'' if n == 1 else 's'}"


def _fitted(meta: dict) -> str:
    """' of 38 planned (fitted to train.max_minutes 5)' when that budget shortened the fit (FitToBudget),
    ' of 38 planned (over train.max_minutes 5 by 2.6 min)' when an epoch ended past it; after fine_tune's
    frozen fit, ' of 6 planned after 1 frozen epoch (...)' (the config's epochs count the unfrozen ones)."""
    budget = meta.get("time_budget") or {}
    before = "".join(f" after {s['epochs_trained']} {s['stage']} epoch{'s' * (s['epochs_trained'] != 1)}"
                     for s in (budget.get("stages") or [])[:-1])
    if budget.get("over_seconds"):
        return (f" of {budget['epochs_planned']} planned{before} (over train.max_minutes {budget['max_minutes']:g} "
                f"by {budget['over_seconds'] / 60:.1f} min)")
    if budget.get("epochs_trained", 0) < budget.get("epochs_planned", 0):
        return f" of {budget['epochs_planned']} planned{before} (fitted to train.max_minutes {budget['max_minutes']:g})"
    return ""


def network_line(meta: dict) -> str:
    """One line from bundle.json: the network, its starting weights, and what `arch: auto` chose."""
    w = meta.get("weights") or {"pretrained": meta.get("pretrained", "?")}   # bundles before weights.py
    config = meta.get("config") or {}
    scored = (f", scored at {config['eval_size']} px"            # learner.item_transforms: FixRes
              if config.get("eval_size") and config["eval_size"] != meta.get("image_size") else "")
    if w.get("continued_from"):     # a mining round's retrain (mine.retrain: continue); `file` is its export.pkl
        first = {"imagenet": f"ImageNet weights {w.get('name')}", "none": "from scratch"}.get(
            w.get("pretrained", "none"), f"weights from {w.get('pretrained')}")
        line = (f"{meta.get('arch', '?')}, {meta.get('image_size', '?')} px{scored}, continued from {w['continued_from']} "
                f"for {_epochs(config.get('epochs', '?'))}{_fitted(meta)} (that network started {first})")
        return line + (f"; arch auto: the {w.get('recipe')} recipe"
                       if (w.get("requested") or {}).get("arch") == "auto" else "")
    if w.get("pretrained") == "imagenet":
        start = f"ImageNet weights {w.get('name')} ({Path(w.get('file') or '?').name}), fine-tuned"
    elif w.get("pretrained", "none") != "none":
        start = f"weights from {w['pretrained']}, fine-tuned"
    else:
        start = "trained from scratch"
    line = f"{meta.get('arch', '?')}, {start}, {meta.get('image_size', '?')} px, {_epochs(config.get('epochs', '?'))}"
    line += _fitted(meta)
    if config.get("start_size") and start == "trained from scratch" and isinstance(config.get("epochs"), int):
        line += f" (the first {round(config['epochs'] * config.get('start_share', 0.5))} at {config['start_size']} px)"
    if meta.get("precision"):       # bundles before train.precision trained in float32 on a CPU
        line += f" in {meta['precision']}"
    line += scored
    if w.get("sha256"):
        line += f" (weights sha256 {w['sha256'][:12]}…)"
    if (w.get("requested") or {}).get("arch") == "auto":
        line += f"; arch auto: the {w.get('recipe')} recipe"
    if w.get("fallback"):
        line += f", because {w['fallback']}"
    return line
