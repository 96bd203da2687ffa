"""Where a model's starting weights come from, and which training recipe follows from that.

`train.pretrained`:
- `auto` (default): torchvision's ImageNet weights when torchvision can get them, from its cache
  (`$TORCH_HOME/hub/checkpoints/<file>`) or else downloaded through torchvision's own mechanism
  (`WeightsEnum.get_state_dict` -> `torch.hub.load_state_dict_from_url`, hash-checked). Offline, or
  on any download error, training goes on from scratch after one warning.
- `imagenet`: the same, but without the weights it is an error.
- `none` (YAML `no`; `yes` is `imagenet`): from scratch; never looks at the cache or the network.
- a path: a state dict file (a torchvision network's, or an earlier mlcnet's), tensors only.

`train.arch: auto` (default) picks a recipe from that: `RECIPES['pretrained']` (a torchvision
ImageNet network, fine-tuned) when weights are available, else `RECIPES['scratch']`. An explicit
`image_size`, `epochs`, `lr` or `batch_size` always wins over the recipe's.

Downloads are bounded by a socket timeout (`DOWNLOAD_TIMEOUT_S`, per connect/read, so a slow but
moving download still finishes) and are off altogether when the environment sets `MLC_OFFLINE=1`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import io
import logging
import os
import pickle
import socket
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse

import torch
import torchvision

from mlc_pipeline.model.choices import is_local_arch, pretrained_choice
from mlc_pipeline.model.weights_files import load_state, misfit, state_misfit
from mlc_pipeline.model.precision import training_precision
from mlc_pipeline.fsutil import sha256_file

log = logging.getLogger(__name__)

# The two recipes `arch: auto` chooses between; None = the training code's default (train.default_lr).
RECIPES = {
    # A torchvision ImageNet network, fine-tuned (fine_tune: one frozen epoch, then `epochs`).
    # resnet18: fastai's and the seeds' network, the one torchvision weights most users have. 160 px,
    # not 224: ImageNet features transfer at 160 px, and on 2 cores resnet18 trains at ~17 img/s at
    # 224 px (shared/notes/environment.md), about twice that at 160 px by pixel count (not measured
    # here: no ImageNet weights offline). To be checked on real photos when weights are at hand.
    "pretrained": {"arch": "resnet18", "image_size": 160, "epochs": 3, "lr": None, "crop": "random", "mixup": 0.0,
                   "batch_size": 32},
    # From scratch on a CPU, chosen on real photos (bench/recipes.py, docs/training.md "Recipe"):
    # random resized crops beat squishing at the same cost; batches of 16 (more optimiser steps for the
    # same images seen) reject an unseen kind more often than 32 or 64 ("Batches of 16"); 96 px halves
    # the unseen photos accepted at a higher F1, for ~1.9x the training time ("96 px in batches of 16").
    "scratch": {"arch": "mlcnet", "image_size": 96, "epochs": 30, "lr": None, "crop": "random", "mixup": 0.0,
                "batch_size": 16},
}
# The scratch recipe's image size where training batches are not float32 (precision.py): bf16 trains
# 128 px in the time float32 trains 96 px, for a higher F1 and fewer "other" accepted at about the
# same unseen rate (docs/training.md, "bfloat16 on the CPU, and 128 px in the time of 96").
SCRATCH_IMAGE_SIZE_MIXED = 128
# From scratch, a small dataset needs more passes over it: the scratch recipe's epochs are at least
# its "epochs" and at least SCRATCH_VIEWS training images seen, at most SCRATCH_MAX_EPOCHS
# (docs/training.md, "Epochs: a budget of images seen"): 500 real photos train for 90 epochs,
# the generated world's ~1,070 images for 43, 1,500 and more for the recipe's 30.
SCRATCH_VIEWS = 45_000
SCRATCH_MAX_EPOCHS = 120
RECIPE_FIELDS = ("image_size", "epochs", "lr", "crop", "mixup", "batch_size")

DOWNLOAD_TIMEOUT_S = 10.0      # per socket operation: a black-holed network fails in seconds, not minutes
RETRY_FAILED_DOWNLOAD_S = 600  # within one process, a failed download is not retried before this
OFFLINE_ENV = "MLC_OFFLINE"

# The errors a download or a downloaded file can raise; anything else is a bug and propagates.
DOWNLOAD_ERRORS = (OSError, http.client.HTTPException, RuntimeError, ValueError, EOFError, pickle.UnpicklingError)

_failed_downloads: dict[str, tuple[float, str]] = {}   # url -> (monotonic time, reason)


class WeightsUnavailable(RuntimeError):
    """ImageNet weights that are neither in the cache nor downloadable; the message is one line."""


@dataclass(frozen=True)
class WeightsChoice:
    """What training starts from, as recorded in bundle.json under "weights"."""
    pretrained: str                   # 'none' | 'imagenet' | the weights file path given
    arch: str                         # the network actually trained
    recipe: str                       # 'pretrained' | 'scratch': where unset image_size/epochs/lr/batch_size came from
    requested: dict = field(default_factory=dict)   # arch and pretrained as configured
    name: str | None = None           # imagenet: torchvision's weights name, e.g. ResNet18_Weights.IMAGENET1K_V1
    file: str | None = None           # the file loaded into the network's body (None: from scratch)
    sha256: str | None = None         # of that file
    fallback: str | None = None       # why `auto` trains from scratch, when weights were wanted
    continued_from: str | None = None  # the bundle whose network this training continued (then `file`
                                       # is its export.pkl, and `pretrained` what that network started from)

    def record(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- torchvision's weights and cache

def imagenet_weights(arch: str):
    """torchvision's default ImageNet weights enum member for a torchvision.models function name."""
    builder = getattr(torchvision.models, arch, None)
    if is_local_arch(arch) or not callable(builder):
        raise ValueError(f"{arch!r} is not a torchvision.models network with published weights (e.g. resnet18)")
    try:
        return torchvision.models.get_model_weights(builder).DEFAULT
    except (KeyError, ValueError) as exc:
        raise ValueError(f"torchvision publishes no ImageNet weights for {arch!r} ({exc})") from None


def weights_name(weights) -> str:
    return f"{type(weights).__name__}.{weights.name}"


def hub_checkpoints_dir() -> Path:
    """Where torch.hub (and so torchvision) caches weights: $TORCH_HOME/hub/checkpoints."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def cache_path(weights, model_dir: str | Path | None = None) -> Path:
    """The file name torchvision uses for these weights (the URL's last part), in `model_dir`."""
    return Path(model_dir or hub_checkpoints_dir()) / Path(urlparse(weights.url).path).name


@contextmanager
def _socket_timeout(seconds: float):
    """torch.hub opens its URL without a timeout; the process-wide default bounds it meanwhile.
    (It applies to every socket created meanwhile without an explicit timeout, and only then.)"""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip() not in ("", "0")


def download(weights, model_dir: str | Path | None = None, progress: bool = False,
             timeout: float | None = None) -> Path:
    """Fetch `weights` into `model_dir` (default: torch.hub's cache) through torchvision, hash-checked
    against the file name; return the file. Raises WeightsUnavailable with a one-line reason."""
    url = weights.url
    if _offline():
        raise WeightsUnavailable(f"downloads are off ({OFFLINE_ENV}={os.environ[OFFLINE_ENV]})")
    model_dir = Path(model_dir or hub_checkpoints_dir())
    try:        # a cache that cannot be written is not a download problem: say so before the network
        os.makedirs(model_dir, exist_ok=True)      # as torch.hub does: its error names the part
        tempfile.TemporaryFile(dir=model_dir).close()
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename and Path(exc.filename) != model_dir else ""
        raise WeightsUnavailable(f"cannot write the weights cache {model_dir}: {exc.strerror or exc}{where}; nothing "
                                 f"was downloaded (set TORCH_HOME, or --dest, to a folder you can write)") from None
    try:
        # torch.hub announces each download on stdout, failing ones too: offline, `mlc run` said it downloaded
        with _socket_timeout(DOWNLOAD_TIMEOUT_S if timeout is None else timeout), \
                contextlib.redirect_stdout(io.StringIO()):
            # Also torch.load()s the file once: a download that is not a state dict fails here.
            weights.get_state_dict(model_dir=str(model_dir), progress=progress, check_hash=True, weights_only=True)
    except DOWNLOAD_ERRORS as exc:
        why = exc.reason if isinstance(exc, URLError) and not isinstance(exc, HTTPError) else exc
        reason = " ".join(str(why).split()) or type(exc).__name__
        raise WeightsUnavailable(f"could not download {url}: {reason}") from None
    return cache_path(weights, model_dir)


def find_or_download(arch: str) -> tuple[object, Path]:
    """(weights, file) for `arch`'s ImageNet weights: the cached file, else a download into the cache.
    A failed download is remembered for RETRY_FAILED_DOWNLOAD_S, so the trainings of one run do not
    each wait for the network again."""
    weights = imagenet_weights(arch)
    cached = cache_path(weights)
    if cached.is_file():
        # read now: a truncated file, or another network's, crashed a run after it collected (weights23)
        if problem := misfit(arch, cached):
            raise WeightsUnavailable(f"{cached} is in the cache, but it {problem}: delete it, then fetch it again "
                                     f"(`mlc weights fetch {arch}`)")
        return weights, cached
    if _offline():
        raise WeightsUnavailable(f"not in {cached.parent}, and downloads are off ({OFFLINE_ENV}={os.environ[OFFLINE_ENV]})")
    failed = _failed_downloads.get(weights.url)
    if failed and time.monotonic() - failed[0] < RETRY_FAILED_DOWNLOAD_S:
        raise WeightsUnavailable(f"not in {cached.parent}, and {failed[1]} (earlier in this process)")
    log.info("ImageNet weights for %s are not in %s: downloading %s", arch, cached.parent, weights.url)
    try:
        return weights, download(weights)
    except WeightsUnavailable as exc:
        _failed_downloads[weights.url] = (time.monotonic(), str(exc))
        raise WeightsUnavailable(f"not in {cached.parent}, and {exc}") from None


# ---------------------------------------------------------------- resolving a training config

def scratch_epochs(n_train: int | None) -> int:
    """The scratch recipe's epochs for `n_train` training images (None: the recipe's own)."""
    least = RECIPES["scratch"]["epochs"]
    if not n_train:
        return least
    return min(SCRATCH_MAX_EPOCHS, max(least, -(-SCRATCH_VIEWS // n_train)))


def resolve_training(cfg, n_train: int | None = None):
    """(cfg with arch and the recipe's fields the user left unset filled in, WeightsChoice). Call
    before building anything: the image size and the network depend on it. May download (see the
    module doc).
    `n_train`: the training images, from which the scratch recipe sets its epochs."""
    requested = {"arch": cfg.arch, "pretrained": str(cfg.pretrained)}
    choice = pretrained_choice(cfg.pretrained)
    auto_arch = cfg.arch == "auto"
    arch = RECIPES["pretrained"]["arch"] if auto_arch else cfg.arch
    extra: dict = {}
    if choice == "none":
        pretrained = "none"
        if auto_arch:
            arch = RECIPES["scratch"]["arch"]
    elif choice not in ("auto", "imagenet"):
        path = Path(choice).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"pretrained weights file not found: {path}")
        state = load_state(path)                # unreadable: said as such, before any hint on networks
        problem = state_misfit(arch, state)     # checked before collecting, not first at training
        if auto_arch and problem and not state_misfit(RECIPES["scratch"]["arch"], state):
            arch, problem = RECIPES["scratch"]["arch"], None   # an earlier mlcnet's state dict, as before arch: auto
        if problem:
            raise ValueError(f"{path} {problem}" + (f"; with arch: auto it must be {arch}'s or an earlier "
                             f"{RECIPES['scratch']['arch']} model's: name its network with train.arch"
                             if auto_arch else ""))
        pretrained, extra = str(path), {"file": str(path), "sha256": sha256_file(path)}
    elif is_local_arch(arch):
        if choice == "imagenet":
            raise ValueError(f"pretrained='imagenet': there are no ImageNet weights for {arch} "
                             "(use 'auto', 'none' or a weights file of this architecture)")
        log.info("%s has no published weights: training from scratch (the plan for it, not a fallback)", arch)
        pretrained = "none"
    else:
        try:
            weights, path = find_or_download(arch)
            pretrained = "imagenet"
            extra = {"name": weights_name(weights), "file": str(path), "sha256": sha256_file(path)}
        except WeightsUnavailable as exc:
            if choice == "imagenet":
                raise FileNotFoundError(f"pretrained='imagenet': no ImageNet weights for {arch} ({exc}); with no "
                                        f"download possible, see `mlc weights fetch` in docs/training.md") from None
            pretrained, extra = "none", {"fallback": f"no ImageNet weights for {arch}: {exc}"}
            if auto_arch:
                arch = RECIPES["scratch"]["arch"]
    recipe = "pretrained" if pretrained != "none" and not is_local_arch(arch) else "scratch"
    filled = {k: RECIPES[recipe][k] for k in RECIPE_FIELDS if getattr(cfg, k) is None}
    if recipe == "scratch" and "epochs" in filled:
        filled["epochs"] = scratch_epochs(n_train)
    if recipe == "scratch" and "image_size" in filled and training_precision(cfg.precision, warn=False) != "float32":
        filled["image_size"] = SCRATCH_IMAGE_SIZE_MIXED
    resolved = cfg.model_copy(update={"arch": arch, **filled})
    # one description of what will train, so that the warning and the info line cannot drift apart
    epochs = f"{resolved.epochs} epoch{'s' * (resolved.epochs != 1)}"
    shape = f"{resolved.image_size} px, {epochs}, batches of {resolved.batch_size}"
    if getattr(resolved, "start_size", None) and pretrained == "none":
        shape += f" (the first {resolved.start_epochs} epochs at {resolved.start_size} px)"
    if getattr(resolved, "distinct_eval_size", None):
        shape += f", scored at {resolved.distinct_eval_size} px"
    if extra.get("fallback"):
        log.warning("pretrained=auto: %s; training from scratch instead (%s, %s). "
                    "For a machine without internet see `mlc weights fetch` in docs/training.md.", extra["fallback"],
                    resolved.arch, shape)
    if auto_arch:
        log.info("arch=auto: the %s recipe, %s (%s), %s", recipe, arch, pretrained, shape)
    return resolved, WeightsChoice(pretrained=pretrained, arch=arch, recipe=recipe, requested=requested, **extra)


# ---------------------------------------------------------------- continuing an earlier model

# What a continued training takes from the bundle it continues: the network and how it sees images.
CONTINUED_FIELDS = ("arch", "image_size", "crop", "min_scale", "mixup", "eval_size", "cosine_head",
                    "rotation_aux")
# Bundles older than these options lack them: what their networks were trained without.
# (cosine_head must travel: a cosine layer's state dict loads into a plain Linear as well; rotation_aux
# too: its network has the `rot` layer, nets.WithRotationHead.)
ABSENT_IN_OLDER_BUNDLES = {"mixup": 0.0, "eval_size": None, "cosine_head": 0.0, "rotation_aux": 0.0}


def resolve_continued(cfg, parent_meta: dict, parent_dir: str | Path):
    """resolve_training for `cfg.init_from`: (cfg, WeightsChoice) continuing the bundle's network.
    Its architecture, image size and augmentation are the bundle's; `epochs` (default: a third of the
    bundle's own, or as many as it had when it was itself a continuation) counts the continuation.
    Nothing is downloaded: the network is the bundle's."""
    # bundle.json's top-level keys, for bundles whose `config` lacks them (or that have none)
    parent_cfg = {**{k: parent_meta[k] for k in ("arch", "image_size", "head", "other_mode") if k in parent_meta},
                  **{k: v for k, v in (parent_meta.get("config") or {}).items() if v is not None}}
    for key in ("head", "other_mode"):
        if parent_cfg.get(key) is not None and parent_cfg[key] != getattr(cfg, key):
            raise ValueError(f"cannot continue {Path(parent_dir).name}: its {key} is {parent_cfg[key]!r}, "
                             f"this training's is {getattr(cfg, key)!r}")
    missing = [k for k in CONTINUED_FIELDS if parent_cfg.get(k) is None and k not in ABSENT_IN_OLDER_BUNDLES]
    if missing:
        raise ValueError(f"cannot continue {Path(parent_dir).name}: its bundle.json config lacks {missing}")
    # a field saved as null reads like an absent one, as the `or 0.0` lines this table replaced did
    update = {k: ABSENT_IN_OLDER_BUNDLES.get(k) if parent_cfg.get(k) is None else parent_cfg[k]
              for k in CONTINUED_FIELDS}
    parent_w = parent_meta.get("weights") or {"pretrained": parent_meta.get("pretrained", "none")}
    parent_recipe = parent_w.get("recipe", "scratch")
    # batches as the bundle trained (a config without them: its recipe's, like the epochs below)
    update["batch_size"] = cfg.batch_size or parent_cfg.get("batch_size") or RECIPES[parent_recipe]["batch_size"]
    # a continued parent's epochs were already a continuation's: round 2 continues as long as round 1
    update["epochs"] = cfg.epochs or (max(1, parent_cfg.get("epochs") or 1) if parent_w.get("continued_from")
                                      else continue_epochs(parent_cfg.get("epochs"), parent_recipe))
    choice = WeightsChoice(
        pretrained=parent_w.get("pretrained", "none"), arch=update["arch"], recipe=parent_recipe,
        requested={"arch": cfg.arch, "pretrained": str(cfg.pretrained)}, name=parent_w.get("name"),
        file=str(Path(parent_dir) / "export.pkl"), sha256=parent_meta.get("export_sha256"),
        continued_from=Path(parent_dir).name)
    return cfg.model_copy(update=update), choice


def continue_epochs(parent_epochs: int | None, recipe: str = "scratch") -> int:
    """Epochs of a continued training: a third of the epochs the network's first training trained
    (30 -> 10; fine_tune's unfrozen ones), at least one. A training `train.max_minutes` cut records
    what it trained, 0 when no unfrozen epoch fitted: that is 1 here, not the recipe's default, which
    only a bundle that recorded no epochs at all (None) continues a third of."""
    if parent_epochs is None:
        parent_epochs = RECIPES.get(recipe, RECIPES["scratch"])["epochs"]
    return max(1, round(parent_epochs / 3))


def resolve_pretrained(cfg) -> str:
    """'none', 'imagenet' or the weights path `cfg` trains from (see resolve_training)."""
    return resolve_training(cfg)[1].pretrained


