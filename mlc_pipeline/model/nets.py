"""Small convolutional networks for training from scratch on a CPU.

torchvision's ImageNet architectures cut a 64 px image down to 16 px in their first two layers
(stride-2 conv + max-pool); trained from scratch on a thousand images they underfit (docs/training.md).
`mlcnet` keeps full resolution in its first stage, halves it four times, and averages + max-pools
the last feature map so one small object anywhere in the picture still drives the output.

Models live in this importable module so an exported learner unpickles by reference.
"""

from __future__ import annotations

import torch
from torch import nn

from mlc_pipeline.model.choices import WIDTHS


def conv_bn(ni: int, nf: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(ni, nf, 3, padding=1, bias=False), nn.BatchNorm2d(nf), nn.ReLU(inplace=True))


class ConcatPool(nn.Module):
    """Average and max over the feature map, side by side (fastai's AdaptiveConcatPool2d, flattened)."""

    def __init__(self):
        super().__init__()
        self.avg, self.max = nn.AdaptiveAvgPool2d(1), nn.AdaptiveMaxPool2d(1)

    def forward(self, x):
        return torch.cat([self.max(x), self.avg(x)], 1).flatten(1)


class CosineLinear(nn.Linear):
    """A linear layer on unit vectors: logit = scale x cos(feature, class weight) + bias.

    Barz & Denzler (WACV 2020, "Deep learning on small datasets without pre-training using cosine
    loss") found that dropping the feature norm from the classifier is worth much from scratch on a
    few hundred images a class; on our real photos it was not, and the unseen kind ranked worse
    (docs/training.md, "A cosine last layer"). A subclass of nn.Linear, so whatever reads "the last
    linear layer's input" (mining's likeness features) still finds it.
    """

    def __init__(self, in_features: int, out_features: int, scale: float):
        super().__init__(in_features, out_features)
        self.scale = float(scale)

    def forward(self, x):
        cos = nn.functional.linear(nn.functional.normalize(x, dim=-1), nn.functional.normalize(self.weight, dim=-1))
        return self.scale * cos + self.bias


class WithRotationHead(nn.Sequential):
    """mlcnet plus a 4-way head that says how far a picture was turned (0, 90, 180, 270 degrees), read
    from the same pooled features as the classes. The classes' forward pass is unchanged (body, then
    head); `rotation.RotationAux` trains `rot` on the pooled features during training (Hendrycks et al.,
    NeurIPS 2019: self-supervised rotation prediction as an auxiliary task improves out-of-distribution
    detection). Measured on real photos, docs/training.md."""

    def forward(self, x):
        return self[1](self[0](x))


def mlcnet(n_out: int, name: str = "mlcnet", dropout: float = 0.25, cosine_scale: float = 0.0,
           rotation_head: bool = False) -> nn.Sequential:
    """cosine_scale > 0: the last layer is a CosineLinear with that scale (measured, not adopted);
    rotation_head: a WithRotationHead, its `rot` layer beside the head."""
    widths = WIDTHS[name]
    layers, ni = [], 3
    for nf in widths:
        layers += [conv_bn(ni, nf), conv_bn(nf, nf), nn.MaxPool2d(2)]
        ni = nf
    body = nn.Sequential(*layers)
    last = CosineLinear(2 * ni, n_out, cosine_scale) if cosine_scale > 0 else nn.Linear(2 * ni, n_out)
    head = nn.Sequential(ConcatPool(), nn.Dropout(dropout), last)
    model = WithRotationHead(body, head) if rotation_head else nn.Sequential(body, head)
    if rotation_head:
        model.add_module("rot", nn.Linear(2 * ni, 4))
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return model


def body_head_splitter(model: nn.Sequential) -> list:
    """Two parameter groups, so fastai can freeze the body when fine-tuning from given weights; the
    second holds the head and any layer beside it (WithRotationHead's `rot`)."""
    return [list(model[0].parameters()), [p for m in list(model.children())[1:] for p in m.parameters()]]
