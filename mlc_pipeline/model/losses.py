"""Losses whose activation is part of the exported learner, so every scorer agrees with calibration.

fastai's `get_preds` (validation, prediction, mining) and `learn.predict` turn logits into scores
through `loss_func.activation`. Defining the score here, in an importable module, makes it travel
inside `export.pkl` by reference, like the network.
"""

from __future__ import annotations

import torch
from fastai.losses import BCEWithLogitsLossFlat

# bundle.json's `class_score`: how the scores that thresholds act on are made
PLAIN_SIGMOID = "sigmoid(class)"
CLASS_AND_NOT_OTHER = "sigmoid(class) x (1 - sigmoid(other))"


class ClassAndNotOtherBCE(BCEWithLogitsLossFlat):
    """`other_mode: class`: BCE on every output, "other" included; a class's score is
    sigmoid(logit_class) x (1 - sigmoid(logit_other)): the class, and not "other".

    The "other" output learns what the negatives look like, and this score lets it veto a class: an
    image that looks like a class and like "other" scores low for the class. A class still needs its
    own evidence: an image no output claims scores low everywhere, and an image of one class is not
    taken for another just because it is clearly not "other" (which is what a class-against-other
    odds, sigmoid(class - other), did on the generated world: docs/training.md). The "other" column
    keeps its own sigmoid. Training is plain BCE on the logits: only scoring changes.
    """

    def __init__(self, *args, other_index: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.other_index = other_index      # pickled with the learner

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(x)
        not_other = 1 - p[..., self.other_index:self.other_index + 1]
        is_other = torch.zeros(x.shape[-1], dtype=torch.bool, device=x.device)
        is_other[self.other_index] = True
        return torch.where(is_other, p, p * not_other)
