"""How a learned reward is loaded: its `device` and `dtype` options, checked before the run, and
quietly (a run's stderr is for its own progress and one-line errors)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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


@contextmanager
def quiet_loading() -> Iterator[None]:
    """transformers' progress bars and notices off while loading (e.g. that its image processors
    fall back to PIL without torchvision, which is what the CPU install wants), restored after."""
    from transformers.utils import logging

    bars, verbosity = logging.is_progress_bar_enabled(), logging.get_verbosity()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()
