"""`model.type: hunyuan_video_15` — a diffusers HunyuanVideo15Pipeline folder (text to video).

HunyuanVideo 1.5 conditions on two masked text streams, both made by the pipeline's own
`encode_prompt`: a Qwen2.5-VL text model (its chat template with the video-description system
message, the hidden state two layers from the top, the 108 template tokens cropped) and a ByT5
glyph encoder for text in quotes (zeros and an empty mask when there is none). The transformer
takes the latents with zero condition latents and a zero mask concatenated on channels and zero
image embeddings (text-to-video), and its timestep in its own dtype, exactly as the pipeline
builds them. Classifier-free guidance is the folder's `guider` (ClassifierFreeGuidance), whose
plain formula v_u + w·(v_c − v_u) is `guided_velocity`'s; a guider configured beyond it (rescale,
a step window, the original formulation) is refused rather than silently changed.

Options (`model.options` or the folder's videogrpo.json): `max_sequence_length` (Qwen tokens
after the template, 1,000 in the pipeline; padding is masked, so a shorter one only saves
memory unless prompts are longer) and `glyph_max_length` (ByT5 bytes, 256).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from diffusers import HunyuanVideo15Pipeline
from diffusers.loaders import HunyuanVideoLoraLoaderMixin
from diffusers.pipelines.hunyuan_video1_5.pipeline_hunyuan_video1_5 import format_text_input
from torch import Tensor

from videogrpo.errors import UserError
from videogrpo.models.base import ModelSpec
from videogrpo.models.lora import HUNYUAN_VIDEO_LORA_TARGET_MODULES
from videogrpo.models.pipeline import PipelineGenerator
from videogrpo.models.pipeline_folder import check_video_size
from videogrpo.models.text_cache import PaddedField

# The guider settings `guided_velocity` reproduces: plain CFG at every step.
PLAIN_GUIDER = {
    "guidance_rescale": 0.0,
    "use_original_formulation": False,
    "start": 0.0,
    "stop": 1.0,
}


class HunyuanVideo15Generator(PipelineGenerator):
    """Qwen2.5-VL + ByT5 text, HunyuanVideo15Transformer3DModel, AutoencoderKLHunyuanVideo15."""

    family = "hunyuan_video_15"
    display_name = "HunyuanVideo 1.5"
    pipeline_class = HunyuanVideo15Pipeline
    # diffusers 0.42's HunyuanVideo15Pipeline has no LoRA loader; this mixin writes the same
    # `transformer.`-prefixed peft file, which `pipe.transformer.load_lora_adapter(folder,
    # prefix="transformer")` reads.
    lora_pipeline_class = HunyuanVideoLoraLoaderMixin
    default_lora_targets = HUNYUAN_VIDEO_LORA_TARGET_MODULES
    required_components = (
        "tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2", "transformer", "vae",
        "scheduler", "guider",
    )  # fmt: skip
    text_encoder_names = ("text_encoder", "text_encoder_2")
    # HunyuanVideo15Pipeline.__call__: 121 frames; height and width from the transformer's
    # target size at 16:9 (resolve_settings).
    video_defaults = {"num_frames": 121, "height": None, "width": None}
    option_defaults = {"max_sequence_length": 1000, "glyph_max_length": 256}
    padded_fields = (PaddedField("text", "text_mask"), PaddedField("glyph", "glyph_mask"))
    text_setting_keys = ("max_sequence_length", "glyph_max_length")

    def __init__(
        self, pipeline: HunyuanVideo15Pipeline, settings: Mapping[str, Any], spec: ModelSpec
    ) -> None:
        super().__init__(pipeline, settings, spec)
        pipeline.tokenizer_max_length = int(settings["max_sequence_length"])
        pipeline.tokenizer_2_max_length = int(settings["glyph_max_length"])
        self.tokenizer_2 = pipeline.tokenizer_2
        self._check_guider(pipeline.guider)
        # AutoencoderKLHunyuanVideo15's causal attention mask does not broadcast over a batch
        # of more than one video (diffusers 0.42): decode one video at a time.
        self.vae.enable_slicing()

    @classmethod
    def resolve_settings(cls, pipeline: Any, settings: dict[str, Any]) -> dict[str, Any]:
        if settings["height"] is None or settings["width"] is None:
            width_ratio, height_ratio = pipeline.default_aspect_ratio
            height, width = pipeline.video_processor.calculate_default_height_width(
                height_ratio, width_ratio, pipeline.target_size
            )
            settings["height"] = settings["height"] or height
            settings["width"] = settings["width"] or width
        return settings

    @staticmethod
    def _check_guider(guider: Any) -> None:
        config = {key: guider.config.get(key, value) for key, value in PLAIN_GUIDER.items()}
        changed = {key: value for key, value in config.items() if value != PLAIN_GUIDER[key]}
        if changed:
            raise UserError(
                f"model.path: the folder's guider sets {changed}; videogrpo applies plain "
                "classifier-free guidance (sampling.guidance_scale) at every step; reset these "
                f"in guider/guider_config.json to {PLAIN_GUIDER}"
            )

    # ----------------------------------------------------------------- shapes

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        return (
            int(self.vae.config.latent_channels),
            (self.num_frames - 1) // self.vae.temporal_compression_ratio + 1,
            self.height // self.vae.spatial_compression_ratio,
            self.width // self.vae.spatial_compression_ratio,
        )

    def check_video_size(self) -> None:
        check_video_size(
            self.display_name, self.num_frames, self.height, self.width,
            frame_step=self.vae.temporal_compression_ratio,
            side_multiple=self.vae.spatial_compression_ratio * self.transformer.config.patch_size,
        )  # fmt: skip

    # ----------------------------------------------------------------- text

    def encode_fields(self, prompts: list[str]) -> dict[str, Tensor]:
        """Both masked streams as HunyuanVideo15Pipeline.encode_prompt makes them."""
        text, text_mask, glyph, glyph_mask = self.pipeline.encode_prompt(
            prompts,
            device=self.text_encoder.device,
            dtype=self.text_encoder.dtype,
            batch_size=len(prompts),
        )
        return {"text": text, "text_mask": text_mask, "glyph": glyph, "glyph_mask": glyph_mask}

    def token_counts(self, prompts: list[str]) -> list[int]:
        """Qwen tokens after the cropped template, as the pipeline counts them."""
        conversations = format_text_input(prompts, self.pipeline.system_message)
        ids = self.tokenizer.apply_chat_template(
            conversations, add_generation_prompt=True, tokenize=True, return_dict=True
        ).input_ids
        crop = self.pipeline.prompt_template_encode_start_idx
        return [len(row) - crop for row in ids]

    # ----------------------------------------------------------------- velocity and video

    def forward(self, latents: Tensor, timesteps: Tensor, fields: Mapping[str, Tensor]) -> Tensor:
        """The pipeline's T2V input: [latents, zero condition latents, zero mask] on channels,
        zero image embeddings, the timestep cast to the transformer's dtype."""
        dtype = self.transformer.dtype
        batch, channels, frames, height, width = latents.shape
        zeros = latents.new_zeros(batch, channels + 1, frames, height, width, dtype=dtype)
        image_embeds = latents.new_zeros(
            batch,
            self.pipeline.vision_num_semantic_tokens,
            self.transformer.config.image_embed_dim,
            dtype=dtype,
        )
        return self.transformer(
            hidden_states=torch.cat([latents.to(dtype), zeros], dim=1),
            image_embeds=image_embeds,
            timestep=timesteps.to(dtype),
            encoder_hidden_states=fields["text"].to(dtype),
            encoder_attention_mask=fields["text_mask"],
            encoder_hidden_states_2=fields["glyph"].to(dtype),
            encoder_attention_mask_2=fields["glyph_mask"],
            return_dict=False,
        )[0]

    def decode_pixels(self, latents: Tensor) -> Tensor:
        return self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]
