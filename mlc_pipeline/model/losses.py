"""Losses whose activation is part of the exported learner, so every scorer agrees with calibration.

fastai's `get_preds` (validation, prediction, mining) and `learn.predict` turn logits into scores
through `loss_func.activation`. Defining the score here, in an importable module, makes it travel
inside `export.pkl` by reference, like the network.
"""

from __future__ import annotations

import torch
from fastai.losses import BCEWithLogitsLossFlat

# The log-odds of a class against "other" reach 25-50 on a confident network (the generated world's
# class images: median 26, 99th percentile 52), and a float32 sigmoid is exactly 1.0 past 16.6: the
# ranking the thresholds need would be lost in ties. Dividing by 4 keeps it up to ~66; a constant
# scale changes no decision, only the numbers the thresholds are written in.
ODDS_SCALE = 4.0

# bundle.json's `class_score`: how the scores that thresholds act on are made
PLAIN_SIGMOID = "sigmoid(class)"
CLASS_AGAINST_OTHER = f"sigmoid((class - other) / {ODDS_SCALE:g})"


class ClassAgainstOtherBCE(BCEWithLogitsLossFlat):
    """`other_mode: class`: BCE on every output, "other" included; a class's score is
    sigmoid((logit_class - logit_other) / ODDS_SCALE), a monotone function of its odds against "other".

    The "other" output learns what the negatives look like, and this score lets it veto a class: an
    image that looks as much like "other" as like a class scores 0.5 at most, whatever its class
    output says. Measured on real photos and on the generated world, it accepted fewer unseen images
    at the product's cap than a plain sigmoid per class, from either training, and kept more macro F1
    than the negative-only training (docs/training.md, "'Other' as an output of its own"). The
    "other" column keeps its own sigmoid. Training is plain BCE on the logits: only scoring changes.
    """

    def __init__(self, *args, other_index: int, odds_scale: float = ODDS_SCALE, **kwargs):
        super().__init__(*args, **kwargs)
        self.other_index, self.odds_scale = other_index, odds_scale     # pickled with the learner

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        other = x[..., self.other_index:self.other_index + 1]
        is_other = torch.zeros(x.shape[-1], dtype=torch.bool, device=x.device)
        is_other[self.other_index] = True
        return torch.where(is_other, torch.sigmoid(x), torch.sigmoid((x - other) / self.odds_scale))
