"""The number format of the training batches: float32, or bfloat16 mixed precision where the CPU
multiplies bf16 in hardware (the callback that applies it is learner.CPUBFloat16). Torch only, so
that resolving a recipe (weights.py) does not import fastai."""

from __future__ import annotations

import functools
import logging

import torch

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)     # the flags do not change while a process runs: read them once
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX-BF16). Elsewhere oneDNN
    emulates bf16 or falls back, and mixed precision is slower than float32, not faster."""
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError as err:      # not Linux, or no /proc: float32, which is correct everywhere
        log.debug("cannot read %s (%s): training in float32", cpuinfo, err)
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def training_precision(choice: str, warn: bool = True) -> str:
    """The training batches' number format. On CUDA: float16 mixed precision (fastai's), unless
    float32 is asked for. On a CPU: bfloat16 mixed precision when asked, or for `auto` when the CPU
    multiplies bf16 natively; else float32. `warn`: say when bf16 is forced on a CPU without it
    (training says it; resolving the recipe beforehand passes False, so it is said once)."""
    if torch.cuda.is_available():
        return "float32" if choice == "float32" else "float16"
    if choice == "auto":
        return "bfloat16" if cpu_has_native_bf16() else "float32"
    if warn and choice == "bfloat16" and not cpu_has_native_bf16():
        log.warning("train.precision bfloat16 on a CPU without native bf16: emulated, likely slower than float32")
    return choice
