"""Where a learned reward runs: its `device` and `dtype` options, checked before the run."""

from __future__ import annotations

import torch

from videogrpo.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """`auto` is the first GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as error:
        raise UserError(f"reward.options.device: {name!r} is not a torch device") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"reward.options.device: {name!r} asked for, but no GPU is available")
    return device


def resolve_dtype(name: str, device: torch.device, gpu_default: str) -> torch.dtype:
    """`auto` is `gpu_default` on a GPU and float32 on the CPU (where half precision is slow)."""
    if name == "auto":
        name = gpu_default if device.type == "cuda" else "float32"
    if name not in DTYPES:
        raise UserError(f"reward.options.dtype: {name!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[name]
