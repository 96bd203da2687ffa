"""The bundle's plots (model/plots.py)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from PIL import Image

from mlc_pipeline.model.plots import STAR_SIZE, curve_figure, plot_curves, plot_losses


def test_a_loss_history_with_nan_and_inf_still_plots(tmp_path):
    """A batch CUDA's grad scaler skipped logs an inf/NaN loss; the loss plot is written after the
    model is scored, and must not throw the finished training away (it did: 'Axis limits cannot be NaN')."""
    history = SimpleNamespace(batch_losses=[0.7, float("inf"), 0.6, float("nan"), 0.5],
                              epochs=[{"epoch": 1, "train_loss": float("nan"), "valid_loss": float("nan"),
                                       "n_batches": 5}])
    plot_losses(history, tmp_path / "loss.png")
    with Image.open(tmp_path / "loss.png") as image:
        assert image.width > 100


def test_a_chosen_point_at_zero_shows_whole_and_the_legend_covers_no_point(tmp_path):
    """A star at x=0 (no unknown accepted: the point to be at) was half cut off by the axis, and the
    legend sat inside the plot, over points a curve runs through."""
    curve = [{"macro_f1": f1, "unknown_accepted": x, "probe_accepted": probe, "chosen": x == 0.0}
             for f1, x, probe in ((0.44, 0.06, 0.53), (0.43, 0.03, 0.40), (0.37, 0.0, 0.0))]
    name = "default-v1-sigmoid-other-class-20261206T000956415172-efc3bd"     # curve.png: the bundle's name
    fig = curve_figure({name: curve, "round 1": [{**p, "macro_f1": p["macro_f1"] - 0.3} for p in curve]})
    fig.canvas.draw()
    ax = fig.axes[0]
    half = STAR_SIZE * fig.dpi / 72 / 2
    stars = [line for line in ax.get_lines() if line.get_marker() == "*"]
    assert len(stars) == 4
    for star in stars:
        (x, y), = ax.transData.transform(np.column_stack(star.get_data()))
        assert ax.bbox.x0 <= x - half and x + half <= ax.bbox.x1 and ax.bbox.y0 <= y - half and y + half <= ax.bbox.y1
    legend = ax.get_legend().get_window_extent()
    assert not legend.overlaps(ax.bbox) and len(ax.get_legend().get_texts()) == 4
    # the PNG takes the legend in: from the bottom of the legend to the top of the axes, at 90 dpi
    with Image.open(plot_curves({name: curve}, tmp_path / "curve.png")) as image:
        fig = curve_figure({name: curve})
        fig.canvas.draw()
        ax = fig.axes[0]
        assert image.height >= (ax.bbox.y1 - ax.get_legend().get_window_extent().y0) * 90 / fig.dpi
    import matplotlib.pyplot as plt
    plt.close("all")


def test_a_curve_with_nothing_to_plot_warns_nobody(tmp_path, recwarn):
    """No point measured an "other" or probe rate (a folder world without either): matplotlib's
    'No artists with labels found to put in legend' reached the user's terminal (the day24 audit)."""
    curve = [{"macro_f1": 0.5, "unknown_accepted": None, "probe_accepted": None, "chosen": True}]
    plot_curves({"round 0": curve}, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").is_file()
    assert not [w for w in recwarn if "legend" in str(w.message)], [str(w.message) for w in recwarn]
