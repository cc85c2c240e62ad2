"""The one interface every video generator exposes to rollout and trainer.

The rollout loop and the step math are ours (core/), so a backbone only has to answer a few
questions: what do these prompts embed to, what is the velocity at (x, σ), what video does a clean
latent show, and which weights may change. Keeping the surface this small is what lets the tiny
default and the diffusers backbones (Wan, HunyuanVideo 1.5, CogVideoX, LTX) share one trainer.
"""

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

# Flow-matching backbones in diffusers were trained with timestep = 1000·σ
# (FlowMatchEulerDiscreteScheduler's num_train_timesteps).
DEFAULT_TIMESTEP_SCALE = 1000.0


@dataclass(frozen=True)
class PromptEmbeddings:
    """Text conditioning for a batch: row i conditions sample i.

    The unconditional (negative-prompt) rows travel with the conditional ones, so classifier-free
    guidance never needs a second encode. Masks are only set by backbones whose transformer takes
    one (Wan does not: it zero-pads the embeddings instead).
    """

    conditional: Tensor  # (B, L, D)
    unconditional: Tensor  # (B, L, D)
    conditional_mask: Tensor | None = None  # (B, L), 1 for real tokens
    unconditional_mask: Tensor | None = None  # (B, L)

    def __len__(self) -> int:
        return self.conditional.shape[0]

    def select(self, index: Tensor | slice | list[int]) -> "PromptEmbeddings":
        """The rows of a minibatch, in the same order as the latents picked with `index`."""
        return PromptEmbeddings(
            conditional=self.conditional[index],
            unconditional=self.unconditional[index],
            conditional_mask=None
            if self.conditional_mask is None
            else self.conditional_mask[index],
            unconditional_mask=(
                None if self.unconditional_mask is None else self.unconditional_mask[index]
            ),
        )

    def to(self, device: torch.device | str) -> "PromptEmbeddings":
        return replace(
            self,
            conditional=self.conditional.to(device),
            unconditional=self.unconditional.to(device),
            conditional_mask=None
            if self.conditional_mask is None
            else self.conditional_mask.to(device),
            unconditional_mask=(
                None if self.unconditional_mask is None else self.unconditional_mask.to(device)
            ),
        )


# A backbone's raw forward: (latents, timesteps, text, text mask or None) -> velocity.
TransformerForward = Callable[[Tensor, Tensor, Tensor, Tensor | None], Tensor]


def guided_velocity(
    forward: TransformerForward,
    latents: Tensor,
    timesteps: Tensor,
    embeddings: PromptEmbeddings,
    guidance_scale: float,
) -> Tensor:
    """Classifier-free guidance v = v_u + w·(v_c − v_u) with cond and uncond in ONE forward.

    One batched forward instead of two halves the kernel launches and keeps batch composition fixed,
    which the ratio-equals-1 replay relies on. With w = 1 guidance is the identity, so only the
    conditional half runs. The result is float32 whatever dtype the backbone computes in, because
    all step and log-prob math is float32 (ALGORITHMS §2).
    """
    if guidance_scale == 1.0:
        return forward(
            latents, timesteps, embeddings.conditional, embeddings.conditional_mask
        ).float()
    mask = None
    if embeddings.conditional_mask is not None and embeddings.unconditional_mask is not None:
        mask = torch.cat([embeddings.conditional_mask, embeddings.unconditional_mask])
    both = forward(
        torch.cat([latents, latents]),
        torch.cat([timesteps, timesteps]),
        torch.cat([embeddings.conditional, embeddings.unconditional]),
        mask,
    ).float()
    conditional, unconditional = both.chunk(2)
    return unconditional + guidance_scale * (conditional - unconditional)


@runtime_checkable
class VideoGenerator(Protocol):
    """A text-to-video flow-matching generator as the trainer sees it.

    Latents are (B, C, F, H, W) float32 as in diffusers Wan; videos are (B, F, H, W, 3) in [0, 1]
    as the rewards expect. Which weights train is chosen once with `enable_lora` (policy = base +
    adapter, reference = adapter off, for free) or `enable_full_finetuning` (reference = a copy).
    """

    @property
    def device(self) -> torch.device: ...

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        """(C, F, H, W) of one sample's latent."""
        ...

    def encode_prompts(self, prompts: list[str]) -> PromptEmbeddings:
        """Embeddings of each prompt and of the negative prompt, cached per string."""
        ...

    def initial_noise(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """ε ~ N(0, I) of shape (num_samples, *latent_shape), float32, on `device`."""
        ...

    def timesteps(self, sigma: Tensor) -> Tensor:
        """The transformer's timestep input for noise levels σ (B,); 1000·σ for diffusers models."""
        ...

    def velocity(
        self, latents: Tensor, sigma: Tensor, embeddings: PromptEmbeddings, guidance_scale: float
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

    def train(self, mode: bool = True) -> nn.Module: ...

    def eval(self) -> nn.Module: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...
