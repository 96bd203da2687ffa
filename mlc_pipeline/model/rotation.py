"""Rotation prediction as an auxiliary task while training from scratch (`train.rotation_aux`).

Hendrycks, Mazeika, Kadavath and Song ("Using self-supervised learning can improve model robustness
and uncertainty", NeurIPS 2019) add a second loss: from the same features, say by how much a picture
was turned. Features that must know which way is up in a bear or a bee learn shapes the class labels
alone do not ask for, and they found images of unseen kinds easier to reject. Measured on our real
photos in docs/training.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from fastai.callback.core import Callback


class RotationAux(Callback):
    """Each training batch gains a turned copy of its first half (90, 180 or 270 degrees, drawn per
    picture); the network's `rot` layer (nets.WithRotationHead) reads the pooled features of the whole
    batch and learns the turn (0 for the originals), its cross-entropy added to the class loss times
    `weight`. The class outputs and their loss see the originals only. A fit's callback: validation,
    calibration and prediction are untouched. Pictures must be square (the training crops are)."""

    order = 5           # before CPUBFloat16 (10): the batch is doubled before the autocast starts

    def __init__(self, weight: float):
        self.weight = weight
        self._feats = self._hook = self._turns = None
        self._n = 0

    def before_fit(self):
        pool = self.learn.model[1][0]
        self._hook = pool.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output):
        self._feats = output

    def before_batch(self):
        self._turns = None
        if not self.training:
            return
        x = self.xb[0]
        self._n = n = x.shape[0]
        half = x[: max(1, n // 2)]
        turns = torch.randint(1, 4, (half.shape[0],), device=x.device)
        turned = torch.empty_like(half)
        for k in (1, 2, 3):
            sel = turns == k
            if sel.any():
                turned[sel] = torch.rot90(half[sel], k, dims=(2, 3))
        self.learn.xb = (torch.cat([x, turned]),)
        self._turns = torch.cat([torch.zeros(n, dtype=torch.long, device=x.device), turns])

    def after_pred(self):
        if self._turns is None:
            return
        logits = self.learn.model.rot(self._feats)
        self._rot_loss = F.cross_entropy(logits.float(), self._turns)
        self.learn.pred = self.pred[: self._n]

    def after_loss(self):
        if self._turns is None:
            return
        self.learn.loss_grad = self.loss_grad + self.weight * self._rot_loss

    def after_batch(self):
        self._feats = self._turns = None

    def after_fit(self):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
