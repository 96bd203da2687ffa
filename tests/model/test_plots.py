"""The bundle's plots (model/plots.py)."""

from __future__ import annotations

from types import SimpleNamespace

from PIL import Image

from mlc_pipeline.model.plots import plot_losses


def test_a_loss_history_with_nan_and_inf_still_plots(tmp_path):
    """A batch CUDA's grad scaler skipped logs an inf/NaN loss; the loss plot is written after the
    model is scored, and must not throw the finished training away (it did: 'Axis limits cannot be NaN')."""
    history = SimpleNamespace(batch_losses=[0.7, float("inf"), 0.6, float("nan"), 0.5],
                              epochs=[{"epoch": 1, "train_loss": float("nan"), "valid_loss": float("nan"),
                                       "n_batches": 5}])
    plot_losses(history, tmp_path / "loss.png")
    with Image.open(tmp_path / "loss.png") as image:
        assert image.width > 100
