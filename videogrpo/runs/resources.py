"""Sizes a run will allocate, checked against what the machine has before anything is written.

Only the big, cheap-to-estimate buffers are counted (a lower bound of what a run needs): the
rollout's stored states, eval's final latents, a LoRA's matrices. A size no machine could hold
(`data.group_size = 10⁸`, `model.lora_rank = 10⁹`) is then a one-line error naming the settings,
not an out-of-memory traceback (or the kernel's OOM killer) after the run directory exists.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from videogrpo.config import TrainConfig
from videogrpo.errors import UserError
from videogrpo.models.base import VideoGenerator

FLOAT32_BYTES = 4  # rollout states, means and eval latents are float32 (training/rollout.py)
MEMINFO = Path("/proc/meminfo")


def check_run_fits(
    config: TrainConfig,
    model: VideoGenerator,
    keeps_means: bool,
    eval_prompts: int,
    ranks: int = 1,
) -> None:
    """The rollout's states (and means, when the KL needs them) and eval's final latents fit;
    under torchrun each of the `ranks` holds its share."""
    latent = math.prod(model.latent_shape) * FLOAT32_BYTES
    sampling, data = config.sampling, config.data
    samples = data.prompts_per_iteration * data.group_size // ranks
    stored = (sampling.num_steps + 1) + (sampling.num_steps if keeps_means else 0)
    trajectory_device = (
        torch.device("cpu") if config.memory.trajectory_device == "cpu" else model.device
    )
    _check_fits(
        samples * stored * latent,
        trajectory_device,
        f"a rollout of {samples} samples (data.prompts_per_iteration × data.group_size) × "
        f"{stored} stored states (sampling.num_steps)",
    )
    eval_samples = -(-eval_prompts * config.eval.samples_per_prompt // ranks)  # the largest share
    check_eval_fits(model, eval_samples, "eval.samples_per_prompt")


def check_eval_fits(model: VideoGenerator, samples: int, setting: str) -> None:
    """Eval keeps one final latent per sample until it scores them."""
    latent = math.prod(model.latent_shape) * FLOAT32_BYTES
    _check_fits(samples * latent, model.device, f"an eval of {samples} samples ({setting})")


def check_lora_rank(model: object, rank: int) -> None:
    """A rank above every linear layer's min(in, out) adds parameters, never expressiveness
    (the product B·A has rank ≤ min(in, out)); refusing it also stops a rank of 10⁹ from
    allocating terabytes."""
    if not isinstance(model, nn.Module):
        return  # a plugin backbone that is not a torch module: peft reports what it can
    widths = [min(m.in_features, m.out_features) for m in model.modules() if _is_linear(m)]
    if widths and rank > max(widths):
        raise UserError(
            f"model.lora_rank: {rank} exceeds {max(widths)}, the most any LoRA of this model can "
            "use (min(in, out) of its widest linear layer); choose a smaller rank"
        )


def available_bytes(device: torch.device) -> int | None:
    """Free memory of `device` (MemAvailable for the CPU), or None where it cannot be read."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    if device.type != "cpu":
        return None
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _check_fits(needed: int, device: torch.device, what: str) -> None:
    free = available_bytes(device)
    if free is not None and needed > free:
        raise UserError(
            f"{what} need {_gigabytes(needed)} on {device}, which has {_gigabytes(free)} free; "
            "reduce these settings"
        )


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) and module.in_features > 0 and module.out_features > 0


def _gigabytes(size: int) -> str:
    return f"{size / 2**30:.3g} GiB"
