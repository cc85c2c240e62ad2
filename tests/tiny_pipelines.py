"""Tiny random pipeline folders of every supported family, from stock diffusers classes only.

Each builder saves a complete pipeline with `save_pretrained` (plus a videogrpo.json with its
small default size), seeded, with no hub access: the same folders stock diffusers loads with
`<Pipeline>.from_pretrained`, so a test can compare videogrpo's sampling with the pipeline's own.
Sizes are the smallest that exercise every code path (two latent frames, 2×2+ tokens a frame).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from videogrpo.embedded.text import build_tiny_umt5, build_word_tokenizer

WORDS = ["a", "red", "blue", "circle", "square", "moving", "left", "right", "slowly"]
PROMPTS = ["a red circle moving left", "a blue square moving right slowly"]

# Wan 2.2 T2V-A14B: two experts; the boundary σ 0.8 splits a 4-step shift-3 grid 2 + 2
# (σ = 1, 0.9 | 0.75, 0.5), and each expert has a trained (stochastic) step.
WAN22_BOUNDARY = 0.8
# 5 frames of 16×16 through a VAE 2× in time and 4× in space: latents 4 × 3 × 4 × 4.
WAN_VIDEO = {"num_frames": 5, "height": 16, "width": 16, "max_sequence_length": 8}
# TI2V-5B's own VAE (residual, 2×2 pixel patches: 8× in space here) under patch-(1, 2, 2)
# tokens: sides must be multiples of 16.
WAN_TI2V_VIDEO = {"num_frames": 5, "height": 32, "width": 32, "max_sequence_length": 8}
# HunyuanVideo 1.5 with text padded to 16 (instead of 1,000) Qwen tokens, glyphs to 8 bytes.
HUNYUAN_VIDEO = {"num_frames": 5, "height": 16, "width": 16}
HUNYUAN_OPTIONS = {"max_sequence_length": 16, "glyph_max_length": 8}
# LTX-Video: a VAE 4× in time and space (the real one is 8× and 32×); LTXPipeline itself
# insists on sides that are multiples of 32.
LTX_VIDEO = {"num_frames": 9, "height": 32, "width": 32, "max_sequence_length": 8}

LATENTS_MEAN = [0.1, -0.2, 0.3, 0.0]  # not 0/1: a decode that skips them is caught
LATENTS_STD = [1.5, 0.8, 1.2, 1.0]


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Initialise modules from `seed` without touching the caller's random stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _write_defaults(directory: Path, defaults: dict) -> Path:
    (directory / "videogrpo.json").write_text(json.dumps(defaults))
    return directory


def _wan_transformer(in_channels: int):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=in_channels,
        out_channels=in_channels,
        text_dim=16,
        freq_dim=16,
        ffn_dim=32,
        num_layers=1,
    )


def build_wan22_a14b(directory: Path, seed: int = 0) -> Path:
    """Wan 2.2 T2V-A14B in miniature: two experts switched at WAN22_BOUNDARY."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline

    tokenizer = build_word_tokenizer(WORDS, WAN_VIDEO["max_sequence_length"])
    text_encoder = build_tiny_umt5(len(tokenizer), 16, 1, 2, 32, seed=seed)
    with seeded(seed):
        vae = AutoencoderKLWan(
            base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1,
            temperal_downsample=[False, True], latents_mean=LATENTS_MEAN, latents_std=LATENTS_STD,
            scale_factor_temporal=2, scale_factor_spatial=4,
        )  # fmt: skip
        high_noise, low_noise = _wan_transformer(4), _wan_transformer(4)
    WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer=high_noise, transformer_2=low_noise, boundary_ratio=WAN22_BOUNDARY,
    ).save_pretrained(directory)  # fmt: skip
    return _write_defaults(directory, WAN_VIDEO)


def build_wan22_ti2v(directory: Path, seed: int = 0) -> Path:
    """Wan 2.2 TI2V-5B in miniature: residual VAE with pixel patches, per-token timesteps."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline

    tokenizer = build_word_tokenizer(WORDS, WAN_TI2V_VIDEO["max_sequence_length"])
    text_encoder = build_tiny_umt5(len(tokenizer), 16, 1, 2, 32, seed=seed)
    with seeded(seed):
        vae = AutoencoderKLWan(
            base_dim=8, decoder_base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1,
            temperal_downsample=[False, True], latents_mean=LATENTS_MEAN, latents_std=LATENTS_STD,
            is_residual=True, in_channels=12, out_channels=12, patch_size=2,
            scale_factor_temporal=2, scale_factor_spatial=8,
        )  # fmt: skip
        transformer = _wan_transformer(4)
    WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer=transformer, expand_timesteps=True,
    ).save_pretrained(directory)  # fmt: skip
    return _write_defaults(directory, WAN_TI2V_VIDEO)


# The real Qwen2.5-VL template puts a 108-token system message before the prompt, and
# HunyuanVideo15Pipeline crops those 108 tokens off; this template emits 108 filler tokens
# instead, so what survives the crop is the user prompt and the generation prompt, as with the
# real tokenizer (which is why even the empty negative prompt keeps a real token: an all-masked
# text stream would make the token refiner's masked mean 0/0).
HUNYUAN_CHAT_TEMPLATE = (
    "{{ 'system ' * 108 }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ message['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %} assistant{% endif %}"
)


def _qwen_style_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<unk>"]
    vocabulary = {token: i for i, token in enumerate([*specials, "system", "assistant", *WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocabulary, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        padding_side="right",
        chat_template=HUNYUAN_CHAT_TEMPLATE,
    )


def build_hunyuan_video_15(directory: Path, seed: int = 0) -> Path:
    """HunyuanVideo15Pipeline in miniature: Qwen2.5-VL-style text model, ByT5 glyph encoder,
    latents + zero condition latents + mask on channels (9 = 4 + 4 + 1), a CFG guider."""
    from diffusers import (
        AutoencoderKLHunyuanVideo15,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideo15Pipeline,
        HunyuanVideo15Transformer3DModel,
    )
    from diffusers.guiders import ClassifierFreeGuidance
    from transformers import (
        ByT5Tokenizer,
        Qwen2_5_VLTextConfig,
        Qwen2_5_VLTextModel,
        T5Config,
        T5EncoderModel,
    )

    tokenizer = _qwen_style_tokenizer()
    with seeded(seed):
        transformer = HunyuanVideo15Transformer3DModel(
            in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=8,
            num_layers=1, num_refiner_layers=1, mlp_ratio=2.0, patch_size=1, patch_size_t=1,
            text_embed_dim=16, text_embed_2_dim=32, image_embed_dim=12, rope_axes_dim=(2, 2, 4),
            target_size=16, task_type="t2v",
        )  # fmt: skip
        vae = AutoencoderKLHunyuanVideo15(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16),
            layers_per_block=1, spatial_compression_ratio=4, temporal_compression_ratio=2,
            downsample_match_channel=False, upsample_match_channel=False, scaling_factor=0.7,
        )  # fmt: skip
        text_encoder = Qwen2_5_VLTextModel(
            Qwen2_5_VLTextConfig(
                vocab_size=len(tokenizer), hidden_size=16, intermediate_size=16,
                num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=2,
                rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default"},
                rope_theta=1e6, bos_token_id=None, eos_token_id=None,
            )
        )  # fmt: skip
        glyph_encoder = T5EncoderModel(
            T5Config(vocab_size=384, d_model=32, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                     dropout_rate=0.0)
        )  # fmt: skip
    HunyuanVideo15Pipeline(
        text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), text_encoder_2=glyph_encoder,
        tokenizer_2=ByT5Tokenizer(), guider=ClassifierFreeGuidance(guidance_scale=1.0),
    ).save_pretrained(directory)  # fmt: skip
    return _write_defaults(directory, {**HUNYUAN_VIDEO, **HUNYUAN_OPTIONS})


def build_ltx(directory: Path, seed: int = 0) -> Path:
    """LTXPipeline in miniature: T5 text, a causal LTX VAE with non-trivial latent statistics."""
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel

    tokenizer = build_word_tokenizer(WORDS, LTX_VIDEO["max_sequence_length"])
    with seeded(seed):
        transformer = LTXVideoTransformer3DModel(
            in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2,
            attention_head_dim=8, cross_attention_dim=16, num_layers=1, caption_channels=16,
        )  # fmt: skip
        vae = AutoencoderKLLTXVideo(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1, 1),
            spatio_temporal_scaling=(True, True, False, False),
            decoder_spatio_temporal_scaling=(True, True, False, False),
            decoder_inject_noise=(False, False, False, False, False),
            upsample_residual=(False, False, False, False), upsample_factor=(1, 1, 1, 1),
            timestep_conditioning=False, patch_size=1, patch_size_t=1, scaling_factor=0.8,
            encoder_causal=True, decoder_causal=False,
        )  # fmt: skip
        vae.latents_mean.copy_(torch.tensor(LATENTS_MEAN))
        vae.latents_std.copy_(torch.tensor(LATENTS_STD))
        text_encoder = T5EncoderModel(
            T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=1,
                     num_heads=2, dropout_rate=0.0)
        )  # fmt: skip
    LTXPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae, text_encoder=text_encoder,
        tokenizer=tokenizer, transformer=transformer,
    ).save_pretrained(directory)  # fmt: skip
    return _write_defaults(directory, LTX_VIDEO)
