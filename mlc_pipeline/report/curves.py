"""The operating curve of a model: macro F1 against the share of unknown images it accepts.

Each point is one setting of `train.max_unknown_accepted` (a cap on the held-out "other" images the
thresholds may accept, see `model.metrics.capping_path`), scored on the test split and the probe
images. The chosen point is marked. This is the short markdown table (Prefect artifact, terminal);
the PNG is drawn by model/plots.py when training writes its bundle.
"""

from __future__ import annotations

from mlc_pipeline.report.tables import pct


def thinned(curve: list[dict], rows: int = 9) -> list[dict]:
    """At most `rows` points, evenly spread along the curve, always keeping both ends and the chosen one."""
    if len(curve) <= rows:
        return list(curve)
    step = (len(curve) - 1) / (rows - 1)
    keep = {round(i * step) for i in range(rows)} | {i for i, p in enumerate(curve) if p.get("chosen")}
    return [curve[i] for i in sorted(keep)]


def curve_markdown(curve: list[dict], rows: int = 9) -> str:
    lines = ["| cap on valid other | macro F1 (valid) | macro F1 (test) | test other accepted | probe accepted | |",
             "|---|---|---|---|---|---|"]
    for p in thinned(curve, rows):
        mark = "**chosen**" if p.get("chosen") else ""
        # the validation F1 is what the cap picks by; bundles trained before 2026-12-06 (evening) lack it
        valid_f1 = f"{p['valid_macro_f1']:.3f}" if p.get("valid_macro_f1") is not None else "-"
        lines.append(f"| {pct(p['valid_other_accepted'])} | {valid_f1} | {p['macro_f1']:.3f} "
                     f"| {pct(p['unknown_accepted'])} | {pct(p['probe_accepted'])} | {mark} |")
    return "\n".join(lines) + "\n"
