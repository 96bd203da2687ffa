"""The exported loss's activation: the scores every scorer (calibration, prediction, mining) sees."""

from __future__ import annotations

import pickle

import torch

from mlc_pipeline.model.losses import ClassAndNotOtherBCE


def test_a_class_needs_its_own_evidence_and_no_claim_of_other():
    loss = ClassAndNotOtherBCE(other_index=2, thresh=0.5)
    logits = torch.tensor([[3.0, -1.0, 3.0],      # class 0, but as much "other": vetoed
                           [4.0, -9.0, -30.0],    # class 0, clearly not "other": class 1 stays low
                           [-4.0, -4.0, -30.0]])  # nothing claims it: low everywhere
    scores = loss.activation(logits)
    p = torch.sigmoid(logits)
    assert torch.allclose(scores[:, 2], p[:, 2])                      # "other" keeps its sigmoid
    assert torch.allclose(scores[:, :2], p[:, :2] * (1 - p[:, 2:]))
    assert scores[0, 0] < 0.05 and scores[1, 0] > 0.95
    # the two failures of a class-against-other odds, sigmoid(class - other), which would give
    # class 1 of row 1 and both classes of row 2 a score near 1
    assert scores[1, 1] < 0.01 and (scores[2, :2] < 0.02).all()
    # the loss itself is plain BCE on the logits
    target = torch.tensor([[1.0, 0, 0], [1, 0, 0], [0, 0, 1]])
    assert torch.isclose(loss(logits, target), torch.nn.functional.binary_cross_entropy_with_logits(logits, target))


def test_the_loss_pickles_with_the_learner():
    loss = pickle.loads(pickle.dumps(ClassAndNotOtherBCE(other_index=0, thresh=0.5)))
    assert loss.other_index == 0
    x = torch.tensor([[0.0, 0.0]])
    assert torch.allclose(loss.activation(x), torch.tensor([[0.5, 0.25]]))
