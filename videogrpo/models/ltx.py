"""`model.type: ltx` — a diffusers LTXPipeline folder (LTX-Video text to video).

LTX-Video's transformer works on packed latents: the (C, F, H, W) latent is flattened into a
sequence of F·H·W tokens of C·p_t·p² values, and the transformer needs the unpacked size and a
RoPE interpolation scale (VAE temporal compression / frame rate, spatial compression) to place
them. videogrpo keeps the latent unpacked, so noise, states and the step math have the same shape
as every other backbone (packing is a permutation: the elementwise step and its mean log-density
are unchanged), and packs only around the transformer call, with the pipeline's own
`_pack_latents` / `_unpack_latents`. The timestep is 1000·σ (the scheduler's), the text is the
pipeline's T5 `encode_prompt` with its mask.

LTXPipeline derives its σ grid from the token count (`use_dynamic_shifting`: shift = e^μ, μ
interpolated between base_shift and max_shift over the sequence length) and may stretch it to a
terminal value; in videogrpo the grid is the run's (`sampling.num_steps`, `sampling.shift`), the
same for every step rule. `dynamic_shift()` gives the value LTXPipeline would use for the chosen
size, to put in `sampling.shift` (docs/backbones.md).

Decoding: latents × latents_std / scaling_factor + latents_mean, then the VAE (with its
`decode_timestep` when the VAE is timestep-conditioned, LTX 0.9.1+). The pipeline's optional
decode noise is not added: a reward must see one deterministic video per latent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from diffusers import LTXPipeline
from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift
from torch import Tensor

from videogrpo.models.lora import LTX_LORA_TARGET_MODULES
from videogrpo.models.pipeline import PipelineGenerator
from videogrpo.models.pipeline_folder import check_video_size
from videogrpo.models.text_cache import PaddedField


class LTXGenerator(PipelineGenerator):
    """T5 text, LTXVideoTransformer3DModel on packed tokens, AutoencoderKLLTXVideo."""

    family = "ltx"
    display_name = "LTX-Video"
    pipeline_class = LTXPipeline
    lora_pipeline_class = LTXPipeline
    default_lora_targets = LTX_LORA_TARGET_MODULES
    required_components = ("tokenizer", "text_encoder", "transformer", "vae", "scheduler")
    # LTXPipeline.__call__'s defaults.
    video_defaults = {"num_frames": 161, "height": 512, "width": 704}
    option_defaults = {"max_sequence_length": 128, "frame_rate": 25, "decode_timestep": 0.0}
    padded_fields = (PaddedField("text", "text_mask"),)

    # ----------------------------------------------------------------- shapes

    @property
    def patch_sizes(self) -> tuple[int, int]:
        return int(self.transformer.config.patch_size), int(self.transformer.config.patch_size_t)

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        return (
            int(self.transformer.config.in_channels),
            (self.num_frames - 1) // self.vae.temporal_compression_ratio + 1,
            self.height // self.vae.spatial_compression_ratio,
            self.width // self.vae.spatial_compression_ratio,
        )

    def check_video_size(self) -> None:
        patch, patch_t = self.patch_sizes
        check_video_size(
            self.display_name, self.num_frames, self.height, self.width,
            frame_step=self.vae.temporal_compression_ratio * patch_t,
            side_multiple=self.vae.spatial_compression_ratio * patch,
        )  # fmt: skip

    def dynamic_shift(self) -> float:
        """The shift e^μ LTXPipeline's scheduler would apply at this video size (before any
        terminal stretch), for `sampling.shift`."""
        config = self.pipeline.scheduler.config
        _, frames, height, width = self.latent_shape
        mu = calculate_shift(
            frames * height * width,
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        return math.exp(mu)

    # ----------------------------------------------------------------- text

    def encode_fields(self, prompts: list[str]) -> dict[str, Tensor]:
        text, mask, _, _ = self.pipeline.encode_prompt(
            prompts,
            do_classifier_free_guidance=False,
            max_sequence_length=int(self.settings["max_sequence_length"]),
            device=self.text_encoder.device,
        )
        return {"text": text, "text_mask": mask}

    # ----------------------------------------------------------------- velocity and video

    def forward(self, latents: Tensor, timesteps: Tensor, fields: Mapping[str, Tensor]) -> Tensor:
        """Pack, run the transformer with the unpacked size and RoPE scale, unpack."""
        dtype = self.transformer.dtype
        patch, patch_t = self.patch_sizes
        _, _, frames, height, width = latents.shape
        temporal = self.vae.temporal_compression_ratio
        spatial = self.vae.spatial_compression_ratio
        packed = self.pipeline._pack_latents(latents, patch, patch_t)
        output = self.transformer(
            hidden_states=packed.to(dtype),
            encoder_hidden_states=fields["text"].to(dtype),
            timestep=timesteps,
            encoder_attention_mask=fields["text_mask"],
            num_frames=frames // patch_t,
            height=height // patch,
            width=width // patch,
            rope_interpolation_scale=(temporal / self.settings["frame_rate"], spatial, spatial),
            return_dict=False,
        )[0]
        return self.pipeline._unpack_latents(
            output, frames // patch_t, height // patch, width // patch, patch, patch_t
        )

    def decode_pixels(self, latents: Tensor) -> Tensor:
        vae = self.vae
        view = (1, -1, 1, 1, 1)
        mean = vae.latents_mean.view(view).to(latents.device, latents.dtype)
        std = vae.latents_std.view(view).to(latents.device, latents.dtype)
        latents = latents * std / vae.config.scaling_factor + mean
        timestep = None
        if vae.config.timestep_conditioning:
            timestep = latents.new_full((latents.shape[0],), self.settings["decode_timestep"])
        return vae.decode(latents, timestep, return_dict=False)[0]
