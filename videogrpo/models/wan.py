"""`model.type: wan` — any diffusers WanPipeline folder: Wan 2.1 T2V and Wan 2.2 (A14B, TI2V-5B).

The folder is loaded with stock `WanPipeline.from_pretrained`, so the same code serves
Wan2.1-T2V-1.3B-Diffusers, Wan2.2-T2V-A14B-Diffusers, Wan2.2-TI2V-5B-Diffusers and any tiny
pipeline saved with `save_pretrained`. What the folder's model_index.json says decides the rest,
as it does for `WanPipeline.__call__`:

- Wan 2.2 T2V-A14B has two experts: `transformer` denoises while timestep ≥ boundary_ratio·1000
  (high noise), `transformer_2` below it with its own guidance scale (`guidance_scale_2`). The
  switch is decided in `velocity` from σ, so rollout, replay and update cannot disagree; both
  experts get a LoRA and both are exported.
- Wan 2.2 TI2V-5B (`expand_timesteps`) takes one timestep per latent token, and brings its own
  VAE (48 latent channels, 16× spatial compression), read from the folder like any other.

An optional `videogrpo.json` in the folder gives defaults for that model (`num_frames`, `height`,
`width`, `max_sequence_length`, `boundary_ratio`, `guidance_scale_2`, `reject_unknown_words`);
diffusers ignores the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from diffusers import WanPipeline
from torch import Tensor

from videogrpo.errors import UserError
from videogrpo.models.base import DEFAULT_TIMESTEP_SCALE, ModelSpec, TransformerForward
from videogrpo.models.pipeline import PipelineGenerator
from videogrpo.models.pipeline_folder import check_video_size
from videogrpo.models.text_cache import PaddedField

# A high-noise and a low-noise expert (Wan 2.2 T2V-A14B); Wan 2.1 has only the first.
EXPERTS = ("transformer", "transformer_2")


class WanGenerator(PipelineGenerator):
    """UMT5 text, one or two WanTransformer3DModel experts, AutoencoderKLWan."""

    family = "wan"
    display_name = "Wan"
    pipeline_class = WanPipeline
    lora_pipeline_class = WanPipeline
    required_components = ("tokenizer", "text_encoder", "transformer", "vae", "scheduler")
    denoiser_names = EXPERTS
    # WanPipeline.__call__'s defaults: 81 frames of 480 × 832, prompts padded to 512 tokens.
    video_defaults = {"num_frames": 81, "height": 480, "width": 832}
    option_defaults = {
        "max_sequence_length": 512,
        "boundary_ratio": None,  # None: the folder's (Wan 2.2 A14B: 0.875)
        "guidance_scale_2": None,  # None: sampling.guidance_scale, as WanPipeline
    }
    padded_fields = (PaddedField("text"),)  # WanPipeline zero-pads the embeddings itself

    def __init__(self, pipeline: WanPipeline, settings: Mapping[str, Any], spec: ModelSpec) -> None:
        super().__init__(pipeline, settings, spec)
        self.transformer_2 = pipeline.transformer_2
        self.reject_unknown_words = bool(settings.get("reject_unknown_words", False))
        self.expand_timesteps = bool(pipeline.config.expand_timesteps)
        ratio = settings["boundary_ratio"]
        self.boundary_ratio = pipeline.config.boundary_ratio if ratio is None else float(ratio)
        if self.boundary_ratio is not None and self.transformer_2 is None:
            raise UserError(
                "model.options.boundary_ratio: this Wan folder has one transformer; the "
                "boundary only applies to Wan 2.2 A14B folders with a transformer_2"
            )
        scale_2 = settings["guidance_scale_2"]
        self.guidance_scale_2 = None if scale_2 is None else float(scale_2)

    @classmethod
    def extra_folder_keys(cls) -> tuple[str, ...]:
        return ("reject_unknown_words",)

    # ----------------------------------------------------------------- shapes

    @property
    def temporal_scale(self) -> int:
        return int(self.vae.config.scale_factor_temporal)

    @property
    def spatial_scale(self) -> int:
        return int(self.vae.config.scale_factor_spatial)

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        return (
            int(self.vae.config.z_dim),
            (self.num_frames - 1) // self.temporal_scale + 1,
            self.height // self.spatial_scale,
            self.width // self.spatial_scale,
        )

    def check_video_size(self) -> None:
        """The VAE takes 1 + k·(temporal scale) frames and sides that patchify after it."""
        patch_h, patch_w = self.transformer.config.patch_size[1:]
        check_video_size(
            self.display_name, self.num_frames, self.height, self.width,
            frame_step=self.temporal_scale,
            side_multiple=self.spatial_scale * max(patch_h, patch_w),
        )  # fmt: skip

    # ----------------------------------------------------------------- text

    def check_prompts(self, prompts: list[str]) -> None:
        """With a word-level vocabulary (the embedded default), unknown words are an error."""
        if not self.reject_unknown_words:
            return
        unknown_id = self.tokenizer.unk_token_id
        for prompt in prompts:
            ids = self.tokenizer(prompt).input_ids
            if unknown_id is not None and unknown_id in ids:
                vocabulary = [w for w in self.tokenizer.get_vocab() if not w.startswith("<")]
                raise UserError(
                    f"prompt {prompt!r} has words the model does not know; its vocabulary: "
                    f"{', '.join(sorted(vocabulary))}"
                )

    def encode_fields(self, prompts: list[str]) -> dict[str, Tensor]:
        """UMT5 embeddings as WanPipeline makes them: cleaned, truncated, zero-padded."""
        embeddings, _ = self.pipeline.encode_prompt(
            prompts,
            do_classifier_free_guidance=False,
            max_sequence_length=int(self.settings["max_sequence_length"]),
            device=self.text_encoder.device,
        )
        return {"text": embeddings}

    # ----------------------------------------------------------------- velocity and video

    def expert_at(self, sigma: Tensor) -> str:
        """Which expert denoises at these σ (one value per row, all on one side)."""
        if self.boundary_ratio is None:
            return EXPERTS[0]
        # WanPipeline compares the scheduler's float32 timestep with boundary_ratio·1000.
        timesteps = sigma.float() * DEFAULT_TIMESTEP_SCALE
        high = timesteps >= self.boundary_ratio * DEFAULT_TIMESTEP_SCALE
        if high.any() and not high.all():
            raise ValueError("one velocity call must not straddle the expert boundary")
        return EXPERTS[0] if bool(high[0]) else EXPERTS[1]

    def forward_for(self, sigma: Tensor, guidance_scale: float) -> tuple[TransformerForward, float]:
        expert = self.expert_at(sigma)
        if expert == EXPERTS[1] and self.guidance_scale_2 is not None:
            guidance_scale = self.guidance_scale_2
        transformer = getattr(self, expert)

        def forward(latents: Tensor, timesteps: Tensor, fields: Mapping[str, Tensor]) -> Tensor:
            dtype = transformer.dtype
            return transformer(
                hidden_states=latents.to(dtype),
                timestep=self._timestep_input(latents, timesteps),
                encoder_hidden_states=fields["text"].to(dtype),
                return_dict=False,
            )[0]

        return forward, guidance_scale

    def _timestep_input(self, latents: Tensor, timesteps: Tensor) -> Tensor:
        """Wan 2.1: one timestep per sample. TI2V-5B: one per latent token (all equal in T2V),
        as WanPipeline expands them."""
        if not self.expand_timesteps:
            return timesteps
        patch_t, patch_h, patch_w = self.transformer.config.patch_size
        frames, height, width = latents.shape[2:]
        tokens = (frames // patch_t) * (height // patch_h) * (width // patch_w)
        return timesteps[:, None].expand(-1, tokens)

    def _latent_statistics(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """Wan's per-channel latents_mean and 1 / latents_std, as WanPipeline computes them."""
        view = (1, self.vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(self.vae.config.latents_mean).view(view)
        inverse_std = 1.0 / torch.tensor(self.vae.config.latents_std).view(view)
        return mean.to(like.device, like.dtype), inverse_std.to(like.device, like.dtype)

    def decode_pixels(self, latents: Tensor) -> Tensor:
        """latents / (1 / latents_std) + latents_mean, then the VAE: WanPipeline's arithmetic."""
        mean, inverse_std = self._latent_statistics(latents)
        return self.vae.decode(latents / inverse_std + mean, return_dict=False)[0]

    def encode_videos(self, videos: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(B, F, H, W, 3) in [0, 1] → normalised latents (a posterior sample): data x₀."""
        self.bring("vae")
        pixels = (2 * videos.float() - 1).permute(0, 4, 1, 2, 3)
        pixels = pixels.to(self.vae.device, self.vae.dtype)
        latents = self.vae.encode(pixels).latent_dist.sample(generator)
        mean, inverse_std = self._latent_statistics(latents)
        return ((latents - mean) * inverse_std).float()
