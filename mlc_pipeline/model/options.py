"""One training run's options (`TrainConfig`): what model/learner.py and model/train.py read.

Imports no torch: the stage loop and the Prefect flows import it (and check a config with it) in
processes that may never train; torchvision is imported only to check an `arch` that is not ours."""

from __future__ import annotations

import warnings

from pydantic import Field, model_validator

from mlc_pipeline.config import ConfigError, TrainSettings
from mlc_pipeline.model.choices import WIDTHS, is_local_arch, pretrained_choice


class TrainConfig(TrainSettings):
    """One training run's options: the config file's `train:` settings (declared once, in
    config.TrainSettings, with their defaults and bounds) plus runtime knobs no config file sets."""

    workers: int = 0                  # DataLoader processes; 0 on a 2-core box (workers steal the cores)
    threads: int | None = None        # torch threads; None = every core this process may use
    max_train_seconds: float | None = None  # stop training early (after an epoch if possible) past this
    augment: bool = True              # flips, small rotations/zoom/lighting on the batch
    trivial_augment: bool = False     # + torchvision's TrivialAugmentWide per training picture (learner.TrivialAugment)
    cutmix: float = Field(0.0, ge=0)   # > 0: CutMix's Beta(alpha, alpha) on the training batches (a patch of
                                       # another picture, targets mixed by area; measured, not adopted)
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)  # > 0: sigmoid heads train on targets eps/2 and 1 - eps/2
                                                        # (learner.SmoothTargets; measured, not adopted)
    cosine_head: float = Field(0.0, ge=0)  # > 0: mlcnet's last layer scores scale x cosine
                                           # (nets.CosineLinear; measured, not adopted)
    rotation_aux: float = Field(0.0, ge=0)  # > 0: mlcnet also learns to tell how far a picture was turned,
                                            # this weight on that loss (model/rotation.py; measured, not adopted)
    wd: float | None = None           # weight decay; None = fastai's (0.01, decoupled)
    eval_size: int | None = Field(None, ge=16)    # validation, calibration and prediction pictures at this
                                                  # size (FixRes; None: image_size; measured, not adopted)
    start_size: int | None = Field(None, ge=16)   # progressive resizing: the first start_share of a scratch
    start_share: float = Field(0.5, gt=0, lt=1)   # fit's epochs at this size, the rest at image_size
                                                  # (learner.ProgressiveResize; measured, not adopted)
    init_from: str | None = None      # a bundle folder: continue training its network (mining's retrain,
                                      # weights.resolve_continued); `epochs` then counts the continuation

    @model_validator(mode="after")
    def _known_arch(self):
        if self.arch != "auto" and not is_local_arch(self.arch):
            import torchvision      # here, not at the top: a flow or `mlc run` imports this without training
            if not callable(getattr(torchvision.models, self.arch, None)):
                raise ValueError(f"arch {self.arch!r} is neither one of {sorted(WIDTHS)} "
                                 f"nor a torchvision.models function (e.g. resnet18)")
        if self.cosine_head > 0 and self.arch != "auto" and not is_local_arch(self.arch):
            raise ValueError(f"cosine_head is an option of {sorted(WIDTHS)}, not of arch {self.arch!r}")
        if self.rotation_aux > 0 and self.arch != "auto" and not is_local_arch(self.arch):
            raise ValueError(f"rotation_aux is an option of {sorted(WIDTHS)}, not of arch {self.arch!r}")
        return self

    @model_validator(mode="after")
    def _target_options(self):
        if self.cutmix > 0 and (self.mixup or 0) > 0:
            raise ValueError("mixup and cutmix each replace the training batch: set one of them")
        if self.rotation_aux > 0 and (self.cutmix > 0 or (self.mixup or 0) > 0):
            raise ValueError("rotation_aux adds turned pictures to the batch that mixup or cutmix would mix: set one of them")
        if self.label_smoothing > 0 and self.head == "softmax":
            raise ValueError("label_smoothing smooths the sigmoid heads' 0/1 targets; the softmax head has class indices")
        return self

    @classmethod
    def from_settings(cls, settings) -> "TrainConfig":
        """From a TrainSettings or a dict, ignoring keys that are not training options."""
        data = settings.model_dump() if hasattr(settings, "model_dump") else dict(settings)
        return cls(**{k: v for k, v in data.items() if k in cls.model_fields})

    @property
    def start_epochs(self) -> int:
        """Epochs trained at start_size (0 without progressive resizing): what trains and what the
        recipe's log line says, from one formula (the report reads it back from bundle.json's config)."""
        return round(self.epochs * self.start_share) if self.start_size and self.epochs else 0

    @property
    def distinct_eval_size(self) -> int | None:
        """eval_size when it differs from image_size (what builds the evaluation transform and what the
        recipe's log line says), else None."""
        return self.eval_size if self.eval_size and self.eval_size != self.image_size else None

    @property
    def effective_other_mode(self) -> str:
        # A softmax must put "other" images somewhere: they are always a class there.
        return "class" if self.head == "softmax" else self.other_mode


def check_train_settings(cfg, weights: bool = True) -> None:
    """The training options as train_model will see them (arch, head...) and, with `weights`, the
    weights `pretrained` names (a file torch can read, or 'imagenet': from the cache, or downloaded
    now), checked before a run spends an hour collecting: a ConfigError, one line naming the problem.
    `pretrained: auto` is not tried here: it falls back with a warning at training. Imports torch only
    for weights to read (a file, or 'imagenet'), and torchvision and fastai only for a torchvision `arch`
    (`check_network`): `auto`/`none` with one of our networks checks without them. A continued training
    (`mlc train --continue`) takes the bundle's network: weights=False."""
    from pydantic import ValidationError

    from mlc_pipeline.config import error_line
    try:
        options = TrainConfig.from_settings(cfg.train)
    except ValidationError as exc:
        raise ConfigError(f"config: {error_line(exc, 'train')}") from None
    if weights:
        check_network(options)
    if not weights or pretrained_choice(options.pretrained) in ("auto", "none"):
        return
    from mlc_pipeline.model import weights as named     # torch: only for weights to read or fetch
    try:
        named.resolve_training(options)     # reads a weights file, the cached one too (weights.misfit)
    except (ValueError, FileNotFoundError) as exc:
        raise ConfigError(f"config: train.pretrained: {exc}") from None


def check_network(options: TrainConfig) -> None:
    """A torchvision `arch` named explicitly is built the way training builds it (fastai's body and
    head) and run once at each image size training may use: mobilenet_v2, vit_b_16 and others passed
    the name check and then failed at training, after a run had collected (the weights23 audit)."""
    if options.arch == "auto" or is_local_arch(options.arch):
        return
    import torch
    import torchvision
    from fastai.vision.learner import create_vision_model

    from mlc_pipeline.model.weights import RECIPES, SCRATCH_IMAGE_SIZE_MIXED
    sizes = {options.image_size} if options.image_size else \
        {RECIPES["pretrained"]["image_size"], RECIPES["scratch"]["image_size"], SCRATCH_IMAGE_SIZE_MIXED}
    try:
        with warnings.catch_warnings():     # torchvision's "'pretrained' is deprecated": not the user's to act on
            warnings.simplefilter("ignore")
            model = create_vision_model(getattr(torchvision.models, options.arch), n_out=2, pretrained=False).eval()
        with torch.no_grad():
            for size in sorted(sizes):
                model(torch.zeros(1, 3, size, size))
    except Exception as exc:  # noqa: BLE001 -- whatever fails, the run must not start: said in one line
        raise ConfigError(f"config: train.arch: {options.arch} cannot be trained here (fastai's body and head, at "
                          f"{'/'.join(map(str, sorted(sizes)))} px): {type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:200] or 'no pooling layer to cut the body at'}; "
                          f"choose another network, e.g. resnet18 or mobilenet_v3_small") from None
