"""The exported loss's activation: the scores every scorer (calibration, prediction, mining) sees."""

from __future__ import annotations

import pickle

import torch

from mlc_pipeline.model.losses import ClassAgainstOtherBCE


def test_a_class_is_scored_by_its_odds_against_other():
    loss = ClassAgainstOtherBCE(other_index=2, thresh=0.5)
    logits = torch.tensor([[3.0, -1.0, 3.0],      # as much "other" as class 0: 0.5 for it
                           [2.0, 2.0, -6.0],      # clearly not "other": high for both classes
                           [-4.0, -4.0, -4.0]])   # nothing claims it: 0.5 again, the same odds
    scores = loss.activation(logits)
    assert torch.allclose(scores[:, 2], torch.sigmoid(logits[:, 2]))          # "other" keeps its sigmoid
    assert torch.isclose(scores[0, 0], torch.tensor(0.5)) and scores[0, 1] < 0.5
    assert (scores[1, :2] > 0.85).all()
    assert torch.allclose(scores[2, :2], torch.tensor(0.5))
    # the loss itself is plain BCE on the logits
    target = torch.tensor([[1.0, 0, 0], [1, 1, 0], [0, 0, 1]])
    assert torch.isclose(loss(logits, target), torch.nn.functional.binary_cross_entropy_with_logits(logits, target))


def test_confident_odds_keep_their_order_in_float32():
    """A confident network's class-against-other log-odds reach 25-50 (the generated world); a plain
    float32 sigmoid is exactly 1.0 past ~16.6, and ties there left calibration nothing to rank
    (every threshold went to 0.99999994 and round-0 F1 fell to 0.84). The scores must stay ordered."""
    loss = ClassAgainstOtherBCE(other_index=1, thresh=0.5)
    diffs = torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0, 60.0])
    logits = torch.stack([diffs - 8, torch.full_like(diffs, -8.0)], dim=1)
    scores = loss.activation(logits)[:, 0]
    assert scores.dtype == torch.float32 and (scores[1:] > scores[:-1]).all() and (scores < 1).all()


def test_the_loss_pickles_with_the_learner():
    loss = pickle.loads(pickle.dumps(ClassAgainstOtherBCE(other_index=0, thresh=0.5)))
    assert loss.other_index == 0 and loss.odds_scale == 4.0
    x = torch.tensor([[1.0, 2.0]])
    assert torch.allclose(loss.activation(x), torch.tensor([[torch.sigmoid(torch.tensor(1.0)), torch.sigmoid(torch.tensor(0.25))]]))
