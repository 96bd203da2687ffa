"""The operating curve of a model: macro F1 against the share of unknown images it accepts.

Each point is one setting of `train.max_unknown_accepted` (a cap on the held-out "other" images the
thresholds may accept, see `evaluate.capping_path`), scored on the test split and the probe images.
The chosen point is marked. Drawn as a PNG (bundle, HTML report) and as a short markdown table
(Prefect artifact, terminal).
"""

from __future__ import annotations

from pathlib import Path

from mlc_pipeline.model.metrics import pct


def chosen_point(curve: list[dict]) -> dict | None:
    return next((p for p in curve if p.get("chosen")), None)


def thinned(curve: list[dict], rows: int = 9) -> list[dict]:
    """At most `rows` points, evenly spread along the curve, always keeping both ends and the chosen one."""
    if len(curve) <= rows:
        return list(curve)
    step = (len(curve) - 1) / (rows - 1)
    keep = {round(i * step) for i in range(rows)} | {i for i, p in enumerate(curve) if p.get("chosen")}
    return [curve[i] for i in sorted(keep)]


def curve_markdown(curve: list[dict], rows: int = 9) -> str:
    lines = ["| cap on valid other | macro F1 (test) | test other accepted | probe accepted | |",
             "|---|---|---|---|---|"]
    for p in thinned(curve, rows):
        mark = "**chosen**" if p.get("chosen") else ""
        lines.append(f"| {pct(p['valid_other_accepted'])} | {p['macro_f1']:.3f} | {pct(p['unknown_accepted'])} "
                     f"| {pct(p['probe_accepted'])} | {mark} |")
    return "\n".join(lines) + "\n"


def plot_curves(curves: dict[str, list[dict]], path: str | Path, title: str = "") -> Path:
    """One PNG with a line per model (name -> curve): solid = test "other", dashed = probes."""
    import matplotlib
    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, curve) in enumerate(curves.items()):
        colour = colours[i % len(colours)]
        f1 = [p["macro_f1"] for p in curve]
        for key, style, what in (("unknown_accepted", "-", "other"), ("probe_accepted", "--", "probe")):
            xs = [p[key] for p in curve]
            if any(x is None for x in xs):
                continue
            ax.plot([100 * x for x in xs], f1, style, color=colour, marker=".", ms=3, label=f"{name}: {what}")
            chosen = chosen_point(curve)
            if chosen is not None and chosen[key] is not None:
                ax.plot(100 * chosen[key], chosen["macro_f1"], "*", color=colour, ms=14, mec="black")
    ax.set_xlabel("unknown images accepted as a class (%)  —  lower is better")
    ax.set_ylabel("macro F1 on class images (test)")
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.set_title(title or "operating curve (★ = chosen thresholds)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
