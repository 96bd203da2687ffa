"""Reading weights files: tensors only (no code unpickled), matched to the network they would start as
training loads them (torch's strict rules), and loaded into a learner's body. `weights.py` decides
which file, if any, a training starts from; this module reads it."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import torch
import torchvision

from mlc_pipeline.model import nets
from mlc_pipeline.model.choices import is_local_arch


def load_state(path: str | Path) -> dict:
    """A weights file's tensors (no code is unpickled); ValueError, one line, when torch cannot read it."""
    path = Path(path).expanduser()
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- a file that is not one: the unpickler raises KeyError too
        # torch's text is pages long, coloured, and advises loading unsafely: only what was refused
        why = re.search(r"WeightsUnpickler error:\s*(.*?)\s*(?:was not an allowed|Check the documentation|$)",
                        str(exc), re.S)
        if why and "fastai.learner.Learner" in why.group(1):
            raise ValueError(f"{path}: a whole fastai model (a bundle's export.pkl), not a weights file; to "
                             "go on from a bundle's network use `mlc train --continue BUNDLE`") from None
        text = " ".join((why.group(1) if why else re.sub(r"\x1b\[[0-9;]*m", "", str(exc))).split())
        empty = path.is_file() and path.stat().st_size == 0
        text = "an empty file" if empty else text if re.search(r"[a-z]{3}", text) else \
            f"{type(exc).__name__}: not a file torch saved"        # `()`, `(101)` said nothing (verify23)
        raise ValueError(f"{path}: not a weights file torch can load ({textwrap.shorten(text, 300, placeholder=' ...')})") from None


# published densenet files keep pre-2019 layer names: renamed as torchvision's densenet._load_state_dict does
_OLD_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def loaded_into(arch: str, state) -> object:
    """The network `arch` with a state dict loaded as training loads it (strictly: torch's own rules,
    which fill BatchNorm counters an older file lacks); for mlcnet, the body of an earlier mlcnet
    model's state dict (`0.*` keys). Raises ValueError naming what does not fit."""
    if not isinstance(state, dict):
        raise ValueError(f"holds a {type(state).__name__}, not a state dict")
    if is_local_arch(arch):
        model, state = nets.mlcnet(2, arch)[0], {k[2:]: v for k, v in state.items() if k.startswith("0.")}
        kind = "an earlier mlcnet model's weights"
    else:
        model, kind = getattr(torchvision.models, arch)(weights=None), f"torchvision {arch} weights"
        state = {(m.group(1) + m.group(2) if (m := _OLD_DENSENET_KEY.match(k)) else k): v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError):
        want = model.state_dict()
        missing = [k for k in want if k not in state and not k.endswith("num_batches_tracked")]
        extra = [k for k in state if k not in want]
        shaped = [k for k in want if k in state and getattr(state[k], "shape", None) != want[k].shape]
        said = [f"{len(ks)} {what} (first: {ks[0]})" for ks, what in
                ((missing, "layers missing"), (extra, "layers it does not have"), (shaped, "of another shape")) if ks]
        raise ValueError(f"is not {kind} (other layers or shapes: {'; '.join(said)})") from None
    return model


def misfit(arch: str, path: Path) -> str | None:
    """Why a weights file cannot start network `arch` (None: it can), read as `loaded_into` reads it."""
    try:
        state = load_state(path)
    except ValueError as exc:
        return "is " + str(exc).removeprefix(f"{Path(path).expanduser()}: ")     # as loaded_into's: "is not ..."
    return state_misfit(arch, state)


def state_misfit(arch: str, state) -> str | None:
    """`misfit` for a state dict already read (one read of a file, whichever networks it is tried on)."""
    try:
        loaded_into(arch, state)
    except ValueError as exc:
        return str(exc)
    return None


def load_backbone_weights(learn, arch_name: str, weights_path: str | Path) -> None:
    """Load a torchvision state dict file into the learner's body (same cut as fastai uses); for an
    mlcnet, a state dict of the whole model (its body keys, '0.*', are used; the head is new)."""
    from fastai.vision.all import create_body, model_meta

    try:
        donor = loaded_into(arch_name, load_state(weights_path))
    except ValueError as exc:
        raise ValueError(f"{weights_path}: {str(exc).removeprefix(f'{weights_path}: ')}") from None
    if is_local_arch(arch_name):
        learn.model[0].load_state_dict(donor.state_dict())
        return
    arch = getattr(torchvision.models, arch_name)
    body = create_body(donor, pretrained=True, cut=model_meta.get(arch, {}).get("cut"))
    learn.model[0].load_state_dict(body.state_dict())
