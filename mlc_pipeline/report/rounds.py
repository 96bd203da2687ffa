"""A run's models as every report shows them: the one rounds table (a row per `RoundRecord`,
mlc_pipeline/rounds.py) and the one alternatives table. The HTML report and `mlc run`
(report/model.py) and the Prefect run summary (report/summary.py) all print these, so that they
cannot drift apart."""

from __future__ import annotations

from pathlib import Path

from mlc_pipeline.model.registry import read_info, variant_name
from mlc_pipeline.report.tables import compare_table, pct


def shipped_of(rounds: list, shipped: str | None, bundle_of=lambda r: r.bundle):
    """The round whose model a run ships (models/LATEST): the one named `shipped`, else the last.
    The last round is shipped unless it accepted more unknowns than the round before
    (pipeline.run_stages names the earlier one then). `bundle_of` reads a round's bundle name: the
    flow's records are dicts, a PipelineResult's rounds are objects."""
    return next((r for r in rounds if bundle_of(r) == shipped), rounds[-1])


def shipped_round(result):
    """`shipped_of` a PipelineResult, or of the namespace report/latest.py reads back from
    reports/latest.json."""
    return shipped_of(result.rounds, getattr(result, "shipped", ""))


def round_label(r) -> str:
    """What a model is called in the tables and plots: `round N` of a run, or the label latest.py
    gives the latest model when it is not from the last run (`mlc train`: no round 0 to speak of)."""
    return getattr(r, "label", "") or f"round {r.round}"


ROUNDS_HEADER = ("| round | dataset | model | macro F1 (test) | macro F1 (valid, without mined) "
                 "| unknown accepted (test other) | unknown accepted (probe) | negatives added |\n"
                 "|---|---|---|---|---|---|---|---|")


def rounds_markdown(result) -> str:
    """The rounds table of a PipelineResult (or of what report/latest.py or report/summary.py make of
    a run): one row per round, the shipped model marked when there is more than one, and a round 0
    trained in this run but not shipped (`round0_not_shipped`: the shipped model it did not beat is
    round 0, and mining went on from that) in a row of its own, below round 0."""
    # shipping compares the mean of the two macro F1 columns (shipping.held_out_f1); valid leaves
    # out the round's own mined negatives, so that every round is measured on the same images
    rows = [(r, str(getattr(r, "label", "") or r.round)) for r in result.rounds]
    refused = getattr(result, "round0_not_shipped", None)
    if refused is not None:
        rows.insert(1, (refused, "0, trained, not shipped"))
    shipped = shipped_round(result).bundle if result.rounds else ""
    lines = [ROUNDS_HEADER]
    for r, label in rows:
        mark = " (shipped)" if r is not refused and r.bundle == shipped and len(rows) > 1 else ""
        valid = getattr(r, "valid_macro_f1", None)      # absent from runs saved before 2026-12-02
        added = r.negatives_added if r.round else "-"   # round 0 trains before any mining
        lines.append(f"| {label}{mark} | {r.dataset_version} | {r.bundle} | {r.macro_f1:.3f} "
                     f"| {'n/a' if valid is None else f'{valid:.3f}'} | {pct(r.unknown_accepted)} "
                     f"| {pct(r.probe_accepted)} | {added} |")
    return "\n".join(lines) + "\n"


def mining_text(result) -> str:
    """What each mining round of a run did with the pool, a line each (a run's `mined`,
    rounds.mining_counts): the rounds table counts the negatives a round added, these lines the
    images it held for review as well (`mlc review` decides them), which `mlc run` did not say."""
    lines = []
    for m in getattr(result, "mined", None) or []:
        scored = f"{m['scored']} pool images scored, " if "scored" in m else ""
        accepted = f"{m['accepted']} accepted as a class: " if "accepted" in m else ""
        over = f", {m['over_cap']} over the round's cap" if "over_cap" in m else ""
        late = f", {m['decided_in_review']} decided in review meanwhile" if m.get("decided_in_review") else ""
        lines.append(f"mining round {m['round']}: {scored}{accepted}{m['added']} hard negatives added, "
                     f"{m['held']} held for review (`mlc review`){over}{late}")
    return "".join(line + "\n" for line in lines)


def variants_markdown(result, metrics_by_bundle: dict[str, dict], models_dir: Path | None) -> str:
    """The product model of round 0 beside the comparison heads trained on the same data, and the
    product after mining. `models_dir`: where round 0's bundle.json says which head it has (None:
    not said)."""
    first = result.rounds[0]
    # the config may pick any head: name the one round 0 was trained with, from its bundle.json
    meta = read_info(models_dir / first.bundle).meta if models_dir is not None else {}
    head = f" ({variant_name(meta['head'], meta['other_mode'])})" if {"head", "other_mode"} <= meta.keys() else ""
    rows = [(f"product, {round_label(first)}{head}", metrics_by_bundle[first.bundle])]
    rows += [(name, m["test"]) for name, m in result.alternatives.items()]
    if len(result.rounds) > 1:
        last = result.rounds[-1]
        shipped = "" if shipped_round(result) is last else ", not shipped"
        rows.append((f"product after mining (round {last.round}{shipped})", metrics_by_bundle[last.bundle]))
    return compare_table(rows)
