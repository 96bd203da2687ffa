"""The plots a bundle carries: the loss curves of its training and its operating curve (macro F1
against the share of unknown images accepted; see model.metrics.capping_path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_losses(history, path: Path, title: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    batches = np.asarray(history.batch_losses)
    if len(batches):
        ax.plot(np.arange(1, len(batches) + 1), batches, color="tab:blue", alpha=0.3, label="train (batch)")
    ends = [e["n_batches"] for e in history.epochs]
    ax.plot(ends, [e["train_loss"] for e in history.epochs], "o-", color="tab:blue", label="train (epoch)")
    validated = [e for e in history.epochs if e["valid_loss"] is not None]  # not every epoch validates
    ax.plot([e["n_batches"] for e in validated], [e["valid_loss"] for e in validated], "o-", color="tab:orange",
            label="valid")
    values = np.r_[batches, [e["valid_loss"] for e in validated]].astype(float)
    # A batch CUDA's GradScaler skipped logs an inf/NaN loss, and matplotlib cannot scale to one:
    # the plot must never cost the finished training that comes with it.
    values = values[np.isfinite(values)]
    if len(values):  # one early from-scratch spike (valid loss 5+) would flatten every other point
        ax.set_ylim(0, 1.1 * float(np.percentile(values, 98)))
    ax.set_xlabel("batch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def chosen_point(curve: list[dict]) -> dict | None:
    return next((p for p in curve if p.get("chosen")), None)


STAR_SIZE = 14          # points: the chosen operating point


def curve_figure(curves: dict[str, list[dict]], title: str = ""):
    """The figure of `plot_curves`: one line per model (name -> curve), solid = test "other", dashed
    = probes, a star on each chosen point."""
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
                ax.plot(100 * chosen[key], chosen["macro_f1"], "*", color=colour, ms=STAR_SIZE, mec="black")
    ax.set_xlabel("unknown images accepted as a class (%)  —  lower is better")
    ax.set_ylabel("macro F1 of the classes (test)")    # over every test image, "other" ones included
    # x never goes below 0, but a star at 0 (no unknown accepted: the point to be at) must show whole
    ax.set_xlim(left=-0.04 * max(ax.get_xlim()[1], 1.0))
    ax.grid(alpha=0.3)
    ax.set_title(title or "operating curve (★ = chosen thresholds)")
    # below the plot: inside, any corner can hold points (a curve runs from the lower left to the upper right)
    # (a bundle's curve.png names it by its long folder name: one column then)
    names = [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]
    if names:       # none when no point has an "other" or probe measure: matplotlib warned to the user's terminal
        legend = ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False,
                           ncol=1 if max(map(len, names)) > 30 else 2)
        legend.set_in_layout(False)     # the plot keeps its size; savefig's tight box takes the legend in
    fig.tight_layout()
    return fig


def plot_curves(curves: dict[str, list[dict]], path: str | Path, title: str = "") -> Path:
    """One PNG with a line per model (name -> curve): solid = test "other", dashed = probes."""
    import matplotlib.pyplot as plt

    fig = curve_figure(curves, title)
    path = Path(path)
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    fig.savefig(path, dpi=90, bbox_inches="tight", bbox_extra_artists=legends)   # the legend below the axes too
    plt.close(fig)
    return path
