"""Plain-text figures and tables shared by the CLI, the HTML report and the Prefect artifacts."""

from __future__ import annotations


def pct(x: float | None) -> str:
    """A rate as a percentage for tables; "n/a" where there was nothing to measure."""
    return "n/a" if x is None else f"{100 * x:.1f}%"


def compare_table(rows: list[tuple[str, dict]] | dict[str, dict]) -> str:
    """Markdown table of variants side by side: rows are (variant name, metrics dict from evaluate)."""
    items = rows.items() if isinstance(rows, dict) else rows
    lines = ["| variant | macro F1 | in-domain accuracy | unknown accepted (test other) "
             "| unknown accepted (probe) | FPR@95%TPR (probe) |",
             "|---|---|---|---|---|---|"]
    for name, m in items:
        # n/a for a figure a model's record lacks (an assessed or older model's), never a crash
        lines.append(f"| {name} | {m['macro_f1']:.3f} | {pct(m.get('accuracy'))} | {pct(m.get('unknown_accepted'))} "
                     f"| {pct(m.get('probe_accepted'))} | {pct(m.get('fpr95_probe'))} |")
    return "\n".join(lines) + "\n"
