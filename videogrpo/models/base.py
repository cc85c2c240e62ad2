"""The one interface every video generator exposes to rollout and trainer.

The rollout loop and the step math are ours (core/, training/), so a backbone only has to answer a
few questions: what do these prompts condition on, what is the velocity at (x, σ), what video does
a clean latent show, and which weights may change. Keeping the surface this small is what lets the
embedded default and the diffusers backbones (Wan, HunyuanVideo 1.5, CogVideoX, LTX) share one
trainer; a backbone with two text encoders or image conditioning changes only its own file,
because conditioning travels as an opaque per-sample bundle.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

# Flow-matching backbones in diffusers were trained with timestep = 1000·σ
# (FlowMatchEulerDiscreteScheduler's num_train_timesteps).
DEFAULT_TIMESTEP_SCALE = 1000.0
# Fields of a Conditioning whose name starts with this are the negative prompt's (CFG's
# unconditional branch); the rest condition the sample itself.
NEGATIVE_PREFIX = "negative_"


@dataclass(frozen=True)
class Conditioning:
    """Everything a backbone conditions one batch of samples on: named tensors, row i = sample i.

    The trainer never looks inside: it selects the rows of a minibatch, moves them, or joins
    batches. What the fields are is the backbone's business (Wan: text embeddings; HunyuanVideo
    1.5: two masked text streams and image embeddings). Fields named `negative_…` hold the negative
    prompt's rows, so classifier-free guidance never needs a second encode.
    """

    fields: Mapping[str, Tensor]

    def __post_init__(self) -> None:
        sizes = {name: value.shape[0] for name, value in self.fields.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"conditioning fields must share their batch size, got {sizes}")

    def __len__(self) -> int:
        return next(iter(self.fields.values())).shape[0] if self.fields else 0

    def __getitem__(self, name: str) -> Tensor:
        return self.fields[name]

    def select(self, index: Tensor | slice | Sequence[int]) -> Conditioning:
        """The rows of a minibatch, in the order of the latents picked with the same `index`."""
        return Conditioning({name: value[index] for name, value in self.fields.items()})

    def to(self, device: torch.device | str) -> Conditioning:
        return Conditioning({name: value.to(device) for name, value in self.fields.items()})

    @staticmethod
    def concatenate(parts: Sequence[Conditioning]) -> Conditioning:
        """Batches joined row-wise; every part must have the same fields."""
        names = [set(part.fields) for part in parts]
        if any(n != names[0] for n in names):
            raise ValueError(f"cannot concatenate conditionings with different fields: {names}")
        return Conditioning({name: torch.cat([p[name] for p in parts]) for name in parts[0].fields})

    def positive(self) -> dict[str, Tensor]:
        """The fields that condition the samples themselves."""
        return {k: v for k, v in self.fields.items() if not k.startswith(NEGATIVE_PREFIX)}

    def negative(self) -> dict[str, Tensor] | None:
        """The negative prompt's fields under the positive names, or None without any."""
        negative = {
            k.removeprefix(NEGATIVE_PREFIX): v
            for k, v in self.fields.items()
            if k.startswith(NEGATIVE_PREFIX)
        }
        return negative or None


# A backbone's raw forward: (latents, timesteps, positive-style fields) -> velocity.
TransformerForward = Callable[[Tensor, Tensor, Mapping[str, Tensor]], Tensor]


def guided_velocity(
    forward: TransformerForward,
    latents: Tensor,
    timesteps: Tensor,
    conditioning: Conditioning,
    guidance_scale: float,
) -> Tensor:
    """Classifier-free guidance v = v_u + w·(v_c − v_u) with cond and uncond in ONE forward.

    One batched forward instead of two halves the kernel launches and keeps batch composition fixed,
    which the ratio-equals-1 replay relies on. With w = 1 guidance is the identity, so only the
    conditional half runs. The result is float32 whatever dtype the backbone computes in, because
    all step and log-prob math is float32 (ALGORITHMS §2).
    """
    positive, negative = conditioning.positive(), conditioning.negative()
    if guidance_scale == 1.0:
        return forward(latents, timesteps, positive).float()
    if negative is None:
        raise ValueError(
            "guidance_scale != 1 needs the negative prompt's fields in the conditioning"
        )
    both = forward(
        torch.cat([latents, latents]),
        torch.cat([timesteps, timesteps]),
        {name: torch.cat([positive[name], negative[name]]) for name in positive},
    ).float()
    conditional, unconditional = both.chunk(2)
    return unconditional + guidance_scale * (conditional - unconditional)


@dataclass(frozen=True)
class MemorySpec:
    """How a real-size backbone fits one GPU (the config's `memory` section); a backbone applies
    what it can and ignores the rest (the embedded default is too small to need any of it)."""

    offload: bool = True  # text encoders and VAE live off the training device between phases
    gradient_checkpointing: bool = False  # recompute transformer blocks in backward
    vae_slicing: bool = False  # decode one video of a batch at a time
    vae_tiling: bool = False  # decode in overlapping spatial tiles (changes pixels slightly)
    text_cache_dir: str | None = None  # prompt embeddings also kept on disk, reused across runs


@dataclass(frozen=True)
class ModelSpec:
    """What the config says about the backbone; a model factory is called with one of these.

    `options` is the open `model.options` mapping, for the backbone alone to interpret. The video
    size fields are None where the config leaves them to the backbone's default. `dtype` is the
    transformer's; text encoders and VAE have their own, because their precision needs differ
    (Wan's VAE is run in float32 by its authors, its UMT5 in bfloat16).
    """

    path: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    dtype: torch.dtype = torch.float32
    text_encoder_dtype: torch.dtype = torch.float32
    vae_dtype: torch.dtype = torch.float32
    device: torch.device = torch.device("cpu")
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    attention_backend: str | None = None  # diffusers' attention dispatcher name; None: its default
    compile: bool = False  # torch.compile the transformer's repeated blocks
    memory: MemorySpec = field(default_factory=MemorySpec)


@runtime_checkable
class VideoGenerator(Protocol):
    """A text-to-video flow-matching generator as the trainer sees it.

    Latents are float32 with the batch first, (B, *latent_shape); videos are (B, F, H, W, 3) in
    [0, 1] as the rewards expect. Which weights train is chosen once with `enable_lora` (policy =
    base + adapter, reference = adapter off, for free) or `enable_full_finetuning` (reference = a
    copy).
    """

    @property
    def device(self) -> torch.device: ...

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one sample's latent, e.g. (C, F, H, W)."""
        ...

    def encode(self, prompts: list[str], negative_prompt: str = "") -> Conditioning:
        """Conditioning of each prompt (and of the negative prompt, for CFG), cached per string."""
        ...

    def velocity(
        self, latents: Tensor, sigma: Tensor, conditioning: Conditioning, guidance_scale: float
    ) -> Tensor:
        """v_θ(x_σ, σ, c) ≈ ε − x₀ in float32, guidance applied, CFG batched into one forward."""
        ...

    def decode(self, latents: Tensor) -> Tensor:
        """Clean latents (σ = 0) → videos (B, F, H, W, 3) in [0, 1]."""
        ...

    def enable_lora(
        self,
        rank: int,
        alpha: float,
        target_modules: list[str] | None = None,
        dropout: float = 0.0,
    ) -> None:
        """Freeze the base, train a peft LoRA (B = 0 at init: the policy starts at the base)."""
        ...

    def enable_full_finetuning(self) -> None:
        """Train every transformer weight; the reference becomes a copy of the current weights."""
        ...

    def trainable_parameters(self) -> list[nn.Parameter]: ...

    def reference_policy(self) -> AbstractContextManager[None]:
        """Within this context `velocity` is the fixed KL reference (LoRA off / initial weights)."""
        ...

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Detached clones of the trainable weights: safe as checkpoints and moving anchors."""
        ...

    def load_trainable_state_dict(self, state: dict[str, Tensor]) -> None: ...

    def save_lora(self, directory: str | Path) -> None:
        """Write the LoRA in the diffusers format that `pipe.load_lora_weights` reads."""
        ...

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the whole (fully fine-tuned) model as a folder its loader reads back."""
        ...

    def train(self, mode: bool = True) -> nn.Module: ...

    def eval(self) -> nn.Module: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...
