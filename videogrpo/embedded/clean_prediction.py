"""A Wan transformer whose network predicts the clean clip and returns the flow velocity.

Why: in pixel space with large patches (2×8×8×3 = 384 values per token through a 192-wide
model), a velocity-predicting network must reproduce the full-dimensional noise ε in
v = ε − x₀, which it cannot do precisely, and the residual shows as per-frame speckle.
Predicting x̂₀ (a piecewise-flat clip, low-dimensional) and converting, v = (x_σ − x̂₀)/σ,
removes that burden ("Back to Basics: Let Denoising Generative Models Denoise", Li & He
2025, "JiT"). The conversion lives inside `forward`, so everything downstream — our sampler,
`WanPipeline`, LoRA loading — sees an ordinary velocity model.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import WanTransformer3DModel
from diffusers.models.modeling_outputs import Transformer2DModelOutput

from videogrpo.models.base import DEFAULT_TIMESTEP_SCALE

# Floor on σ in the x̂₀ → velocity conversion, as in JiT (its 1 − t clipped at 0.05): the velocity
# stays finite at σ → 0, where no sampler evaluates the model anyway (the last step ends there).
MIN_CONVERSION_SIGMA = 0.05


class CleanPredictionWanTransformer(WanTransformer3DModel):
    """`WanTransformer3DModel` with an x̂₀-predicting head; same weights, LoRA targets and config."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        *args: Any,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> torch.Tensor | Transformer2DModelOutput:
        if timestep.ndim == 2:  # Wan 2.2 passes one timestep per token; the tiny model never does
            raise ValueError("per-token timesteps are not supported by the clean-prediction head")
        clean = super().forward(
            hidden_states, timestep, encoder_hidden_states, *args, return_dict=False, **kwargs
        )[0]
        sigma = (
            (timestep.float() / DEFAULT_TIMESTEP_SCALE)
            .clamp(min=MIN_CONVERSION_SIGMA)
            .reshape(-1, *([1] * (clean.ndim - 1)))
        )
        velocity = (hidden_states.float() - clean.float()) / sigma
        velocity = velocity.to(clean.dtype)
        if not return_dict:
            return (velocity,)
        return Transformer2DModelOutput(sample=velocity)
