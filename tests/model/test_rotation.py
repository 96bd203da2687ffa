"""train.rotation_aux: mlcnet also learns how far a picture was turned (model/rotation.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mlc_pipeline.model.nets import WithRotationHead, body_head_splitter, mlcnet
from mlc_pipeline.model.rotation import RotationAux
from mlc_pipeline.model.train import TrainConfig, train_model
from shapes import make_shapes_dataset


def test_a_batch_gains_turned_copies_of_its_first_half_and_the_classes_see_the_originals_only():
    torch.manual_seed(0)
    model = mlcnet(3, rotation_head=True)
    x = torch.rand(4, 3, 16, 16)
    learn = SimpleNamespace(model=model, xb=(x,), training=True)
    cb = RotationAux(weight=0.5)
    cb.learn = learn
    cb.before_fit()
    cb.before_batch()
    (xb,) = learn.xb
    turns = cb._turns
    assert xb.shape[0] == 6 and torch.equal(xb[:4], x)
    assert turns[:4].tolist() == [0, 0, 0, 0] and all(1 <= k <= 3 for k in turns[4:].tolist())
    for i, k in enumerate(turns[4:].tolist()):
        assert torch.equal(xb[4 + i], torch.rot90(x[i], k, dims=(1, 2)))
    learn.pred = model(xb)              # the hook keeps the pooled features of all six
    assert cb._feats.shape[0] == 6
    cb.after_pred()
    assert learn.pred.shape == (4, 3)
    class_loss = torch.tensor(1.25)
    learn.loss_grad = class_loss
    cb.after_loss()
    rot = torch.nn.functional.cross_entropy(model.rot(cb._feats), turns)
    assert torch.isclose(learn.loss_grad, class_loss + 0.5 * rot)
    cb.after_batch()
    learn.training, learn.xb = False, (x,)     # validation: the batch is left alone
    cb.before_batch()
    assert learn.xb[0] is x and cb._turns is None
    cb.after_fit()
    assert cb._hook is None


def test_the_rotation_layer_is_trained_kept_out_of_features_and_continued(tmp_path):
    """Its parameters are in the optimiser (the splitter's second group), so training moves them;
    mining's feature hook still reads the classes' last layer; a continuation keeps the layer;
    a torchvision network and batch mixing refuse the option."""
    from mlc_pipeline.model.bundle import load_bundle
    from mlc_pipeline.model.predict import _last_linear
    model = mlcnet(3, rotation_head=True)
    assert any(p is model.rot.weight for p in body_head_splitter(model)[1])
    manifest = make_shapes_dataset(tmp_path / "ds", n_per_kind=10)
    base = dict(image_size=32, epochs=2, batch_size=8, threads=1, pretrained="none", arch="mlcnet")
    train_model(manifest, tmp_path / "b", TrainConfig(**base, rotation_aux=0.5))
    trained = load_bundle(tmp_path / "b")
    net = trained.learn.model
    assert isinstance(net, WithRotationHead)
    assert _last_linear(net) is net[1][-1]
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, len(trained.meta["vocab"]))
    assert trained.meta["config"]["rotation_aux"] == 0.5
    train_model(manifest, tmp_path / "c", TrainConfig(**{**base, "epochs": 1}, init_from=str(tmp_path / "b")))
    continued = load_bundle(tmp_path / "c")
    assert isinstance(continued.learn.model, WithRotationHead)
    assert continued.meta["config"]["rotation_aux"] == 0.5
    assert not torch.allclose(continued.learn.model.rot.weight, net.rot.weight)    # trained on
    with pytest.raises(ValueError, match="rotation_aux"):       # the bundle's option beside a cutmix set since
        train_model(manifest, tmp_path / "e", TrainConfig(**{**base, "epochs": 1}, cutmix=1.0,
                                                          init_from=str(tmp_path / "b")))
    assert not (tmp_path / "e").exists()
    with pytest.raises(ValueError, match="rotation_aux"):
        TrainConfig(arch="resnet18", rotation_aux=0.5)
    with pytest.raises(ValueError, match="rotation_aux"):
        TrainConfig(rotation_aux=0.5, mixup=0.2)
