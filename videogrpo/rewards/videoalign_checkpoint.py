"""A VideoReward checkpoint folder, read into one plain state dict of the reward model.

The layout VideoAlign's training writes (and KwaiVGI/VideoReward publishes):

    PATH/model_config.json         data_config, model_config, peft_lora_config, inference_config
    PATH/checkpoint-STEP/          the latest step is used unless `checkpoint` names one
        model.pth                  full form: every weight (LoRA factors unmerged when trained
                                   with LoRA: `…q_proj.base_layer.weight`, `…lora_A.default.weight`)
      or
        adapter_model.safetensors  LoRA form: the LoRA factors (peft's file) …
        non_lora_state_dict.pth    … plus the other trained weights (vision tower, rm_head, …),
                                   on top of the base model's own weights
        tokenizer/                 the tokenizer with the three reward tokens (optional)

Keys use transformers-4.45 names (`model.layers.…` for the language model, `visual.…` for the
vision tower), possibly under peft's `base_model.model.` prefix. They are brought to one form:
prefix and `.base_layer` dropped, LoRA merged into its base weight (W + α/r · B·A), `lm_head`
dropped (the reward reads hidden states, not logits), and the language model and vision tower
under `backbone.language_model.` and `backbone.visual.` as transformers 5 names them.

`.pth` files are read with torch.load(weights_only=True), which refuses anything but tensors
and plain containers (no code runs); `model.safetensors` / `non_lora_state_dict.safetensors`
are used instead when present.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from videogrpo.errors import UserError

CONFIG_FILE = "model_config.json"
PEFT_PREFIX = "base_model.model."
LORA_FACTOR = re.compile(r"^(?P<module>.+)\.lora_(?P<factor>[AB])(?:\.default)?\.weight$")
UNSUPPORTED_LORA = ("lora_embedding_", "lora_magnitude_vector")
# transformers-4.45 (and 5) top-level names → this reward's modules; the first match wins.
KEY_PREFIXES = (
    ("model.language_model.", "backbone.language_model."),
    ("model.visual.", "backbone.visual."),
    ("model.", "backbone.language_model."),
    ("visual.", "backbone.visual."),
    ("rm_head.", "rm_head."),
)
DROPPED_PREFIXES = ("lm_head.",)


@dataclass
class VideoRewardFolder:
    """What model_config.json and the checkpoint folder say."""

    root: Path
    checkpoint: Path
    config: dict[str, Any]

    def section(self, name: str) -> dict[str, Any]:
        return self.config.get(name) or {}


def open_folder(path: str, step: int | None) -> VideoRewardFolder:
    """The folder, its config and the checkpoint to load, or a one-line UserError."""
    root = Path(path).expanduser()
    key = "reward.options.path"
    if not root.is_dir():
        raise UserError(f"{key}: folder {str(root)!r} not found")
    config_file = root / CONFIG_FILE
    if not config_file.is_file():
        raise UserError(
            f"{key}: {root} has no {CONFIG_FILE}; point it at the VideoReward folder itself "
            "(the one holding model_config.json and checkpoint-*/)"
        )
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"{key}: {config_file} is not valid JSON ({error})") from error
    steps = {}
    for candidate in root.glob("checkpoint-*"):
        suffix = candidate.name.removeprefix("checkpoint-")
        if candidate.is_dir() and suffix.isdigit():
            steps[int(suffix)] = candidate
    if not steps:
        raise UserError(f"{key}: {root} has no checkpoint-STEP folder")
    if step is not None and step not in steps:
        raise UserError(
            f"reward.options.checkpoint: {root} has no checkpoint-{step}; it has steps "
            f"{sorted(steps)}"
        )
    return VideoRewardFolder(root, steps[max(steps) if step is None else step], config)


def read_weights(file: Path) -> dict[str, Tensor]:
    if file.suffix == ".safetensors":
        return load_file(file)
    return torch.load(file, map_location="cpu", weights_only=True, mmap=True)


def _first_existing(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / name for name in names if (folder / name).is_file()), None)


def _split(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, dict[str, Tensor]]]:
    """Plain weights and LoRA factors {module: {"A": …, "B": …}}, peft wrappers removed."""
    plain: dict[str, Tensor] = {}
    factors: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        key = key.removeprefix(PEFT_PREFIX)
        if any(marker in key for marker in UNSUPPORTED_LORA):
            raise UserError(f"VideoAlign checkpoint: {key!r} is a LoRA kind not supported here")
        match = LORA_FACTOR.match(key)
        if match:
            factors.setdefault(match["module"], {})[match["factor"]] = value
        else:
            plain[key.replace(".base_layer.", ".")] = value
    return plain, factors


def _merge(
    plain: dict[str, Tensor], factors: dict[str, dict[str, Tensor]], lora: dict[str, Any]
) -> None:
    rank, alpha = lora.get("lora_r"), lora.get("lora_alpha")
    if not factors:
        return
    if not rank or alpha is None:
        raise UserError("VideoAlign checkpoint has LoRA weights but model_config.json no lora_r")
    scale = alpha / (math.sqrt(rank) if lora.get("use_rslora") else rank)
    for module, pair in factors.items():
        weight = plain.get(f"{module}.weight")
        if weight is None or set(pair) != {"A", "B"} or pair["A"].shape[0] != rank:
            raise UserError(
                f"VideoAlign checkpoint: LoRA of {module!r} has no base weight, lacks a factor "
                f"or is not of rank {rank}"
            )
        delta = pair["B"].float() @ pair["A"].float()
        plain[f"{module}.weight"] = (weight.float() + scale * delta).to(weight.dtype)


def _renamed(plain: dict[str, Tensor]) -> dict[str, Tensor]:
    renamed = {}
    for key, value in plain.items():
        if key.startswith(DROPPED_PREFIXES):
            continue
        for old, new in KEY_PREFIXES:
            if key.startswith(old):
                renamed[new + key.removeprefix(old)] = value
                break
        else:
            raise UserError(f"VideoAlign checkpoint: unexpected weight {key!r}")
    return renamed


def base_weights(base: Path) -> dict[str, Tensor]:
    files = sorted(base.glob("*.safetensors"))
    if not files:
        raise UserError(
            f"reward.options.base_model: {base} has no *.safetensors weights, which a LoRA "
            "checkpoint is applied to"
        )
    weights: dict[str, Tensor] = {}
    for file in files:
        weights.update(load_file(file))
    return weights


def reward_state_dict(folder: VideoRewardFolder, base: Path) -> dict[str, Tensor]:
    """Every weight of the reward model, merged and renamed (see the module docstring)."""
    checkpoint = folder.checkpoint
    full = _first_existing(checkpoint, ("model.safetensors", "model.pth"))
    if full is not None:
        plain, factors = _split(read_weights(full))
    else:
        adapter = _first_existing(checkpoint, ("adapter_model.safetensors",))
        rest = _first_existing(
            checkpoint, ("non_lora_state_dict.safetensors", "non_lora_state_dict.pth")
        )
        if adapter is None or rest is None:
            raise UserError(
                f"reward.options.path: {checkpoint} holds neither model.pth nor "
                "adapter_model.safetensors with non_lora_state_dict.pth"
            )
        plain, _ = _split(base_weights(base))
        adapter_plain, factors = _split(read_weights(adapter))
        trained, _ = _split(read_weights(rest))
        plain.update(adapter_plain)
        plain.update(trained)
    _merge(plain, factors, folder.section("peft_lora_config"))
    return _renamed(plain)
