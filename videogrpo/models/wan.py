"""`model.type: wan` — any diffusers WanPipeline folder (Wan 2.1 T2V) as a VideoGenerator.

The folder is loaded with stock `WanPipeline.from_pretrained`, so the same code serves
Wan2.1-T2V-1.3B-Diffusers and any tiny pipeline saved with `save_pretrained`. The pipeline object
is kept only for its modules and its public `encode_prompt` (so prompt cleaning, truncation and
zero padding are exactly diffusers'); sampling is videogrpo's own loop, and the decode applies
Wan's latents_mean / latents_std as the pipeline does.

An optional `videogrpo.json` in the folder gives defaults for that model (`num_frames`, `height`,
`width`, `max_sequence_length`, `reject_unknown_words`); diffusers ignores the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import WanPipeline
from torch import Tensor

from videogrpo.errors import UserError
from videogrpo.models.base import (
    DEFAULT_TIMESTEP_SCALE,
    Conditioning,
    ModelSpec,
    guided_velocity,
)
from videogrpo.models.trainable import TrainableTransformer

MODEL_INDEX = "model_index.json"
DEFAULTS_FILE = "videogrpo.json"
PIPELINE_CLASSES = ("WanPipeline",)
COMPONENTS = ("tokenizer", "text_encoder", "transformer", "vae", "scheduler")
# WanPipeline.__call__'s defaults: 81 frames of 480 × 832, prompts padded to 512 tokens.
WAN_DEFAULTS = {"num_frames": 81, "height": 480, "width": 832, "max_sequence_length": 512}
OPTIONS = ("max_sequence_length",)
FOLDER_KEYS = (*WAN_DEFAULTS, "reject_unknown_words")


def read_pipeline_folder(
    path: Path, classes: tuple[str, ...], components: tuple[str, ...]
) -> dict[str, Any]:
    """model_index.json of a diffusers pipeline folder, checked: a one-line error names the fix."""
    index_file = path / MODEL_INDEX
    if not path.is_dir():
        raise UserError(f"model.path: {str(path)!r} is not a folder")
    if not index_file.is_file():
        raise UserError(f"model.path: {str(path)!r} has no {MODEL_INDEX}; not a diffusers pipeline")
    try:
        index = json.loads(index_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"model.path: {index_file} is not readable JSON ({error})") from error
    if not isinstance(index, dict) or index.get("_class_name") not in classes:
        found = index.get("_class_name") if isinstance(index, dict) else None
        raise UserError(
            f"model.path: {index_file} names pipeline {found!r}; this model.type loads "
            f"{' or '.join(classes)}"
        )
    missing = [name for name in components if not _component_present(path, index, name)]
    if missing:
        raise UserError(
            f"model.path: {str(path)!r} lacks the pipeline component(s) {', '.join(missing)} "
            f"({MODEL_INDEX} must list each and its folder must exist)"
        )
    return index


def _component_present(path: Path, index: dict, name: str) -> bool:
    entry = index.get(name)
    return isinstance(entry, list) and entry[0] is not None and (path / name).is_dir()


def read_folder_defaults(path: Path) -> dict[str, Any]:
    file = path / DEFAULTS_FILE
    if not file.is_file():
        return {}
    try:
        defaults = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"model.path: {file} is not readable JSON ({error})") from error
    unknown = sorted(set(defaults) - set(FOLDER_KEYS)) if isinstance(defaults, dict) else ["?"]
    if unknown:
        raise UserError(f"{file}: unknown keys {unknown}; allowed: {', '.join(FOLDER_KEYS)}")
    return defaults


class WanGenerator(TrainableTransformer):
    """A Wan 2.1 text-to-video pipeline: UMT5 text, WanTransformer3DModel, AutoencoderKLWan."""

    lora_pipeline_class = WanPipeline

    def __init__(self, pipeline: WanPipeline, video: dict[str, Any], spec: ModelSpec) -> None:
        super().__init__()
        self.pipeline = pipeline
        self.text_encoder = pipeline.text_encoder
        self.transformer = pipeline.transformer
        self.vae = pipeline.vae
        self.tokenizer = pipeline.tokenizer
        self.num_frames, self.height, self.width = (
            video["num_frames"],
            video["height"],
            video["width"],
        )
        self.max_sequence_length = int(video["max_sequence_length"])
        self.reject_unknown_words = bool(video.get("reject_unknown_words", False))
        self.compute_dtype = spec.dtype
        self._check_video_size()
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> WanGenerator:
        if spec.path is None:
            raise UserError("model.path: the wan model type needs a WanPipeline folder")
        unknown = sorted(set(spec.options) - set(OPTIONS))
        if unknown:
            raise UserError(f"model.options: unknown {unknown} for wan; allowed: {list(OPTIONS)}")
        path = Path(spec.path)
        read_pipeline_folder(path, PIPELINE_CLASSES, COMPONENTS)
        video = {**WAN_DEFAULTS, **read_folder_defaults(path), **spec.options}
        asked = {"num_frames": spec.num_frames, "height": spec.height, "width": spec.width}
        video.update({key: value for key, value in asked.items() if value is not None})
        dtypes = {"transformer": spec.dtype, "default": torch.float32}
        try:
            pipeline = WanPipeline.from_pretrained(path, dtype=dtypes)
        except (OSError, ValueError, RuntimeError, TypeError) as error:
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise UserError(f"model.path: cannot load {str(path)!r} ({reason})") from error
        pipeline.set_progress_bar_config(disable=True)
        return cls(pipeline, video, spec).to(spec.device)

    # ----------------------------------------------------------------- shapes

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

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

    def _check_video_size(self) -> None:
        """The VAE takes 1 + k·(temporal scale) frames and sides that patchify after it."""
        patch_h, patch_w = self.transformer.config.patch_size[1:]
        side = self.spatial_scale * max(patch_h, patch_w)
        scale = self.temporal_scale
        if (self.num_frames - 1) % scale:
            raise UserError(
                f"sampling.num_frames: {self.num_frames} does not fit this Wan VAE; use "
                f"1 + {scale}·k frames, e.g. {self.num_frames // scale * scale + 1}"
            )
        if self.height % side or self.width % side:
            raise UserError(
                f"sampling.height/width: {self.height}×{self.width} does not fit this Wan model; "
                f"both must be multiples of {side}"
            )

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

    @torch.no_grad()
    def _text_embeddings(self, prompts: list[str]) -> Tensor:
        embeddings, _ = self.pipeline.encode_prompt(
            prompts,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
            device=self.text_encoder.device,
        )
        return embeddings

    def encode(self, prompts: list[str], negative_prompt: str = "") -> Conditioning:
        """UMT5 embeddings, zero-padded as WanPipeline pads them; cached per prompt string."""
        wanted = dict.fromkeys([*prompts, negative_prompt])
        missing = [p for p in wanted if p not in self._prompt_cache]
        if missing:
            self._prompt_cache.update(zip(missing, self._text_embeddings(missing), strict=True))
        text = torch.stack([self._prompt_cache[p] for p in prompts]).to(self.device)
        negative = self._prompt_cache[negative_prompt].to(self.device)
        return Conditioning({"text": text, "negative_text": negative.expand_as(text)})

    # ----------------------------------------------------------------- velocity and video

    def velocity(
        self, latents: Tensor, sigma: Tensor, conditioning: Conditioning, guidance_scale: float
    ) -> Tensor:
        """v ≈ ε − x₀ at x_σ; Wan 2.1 takes timestep = 1000·σ, one per sample."""
        sigma = torch.as_tensor(sigma, device=latents.device).reshape(-1)
        timesteps = sigma.expand(latents.shape[0]).float() * DEFAULT_TIMESTEP_SCALE
        return guided_velocity(self._forward, latents, timesteps, conditioning, guidance_scale)

    def _forward(self, latents: Tensor, timesteps: Tensor, fields) -> Tensor:
        dtype = self.transformer.dtype
        return self.transformer(
            hidden_states=latents.to(dtype),
            timestep=timesteps,
            encoder_hidden_states=fields["text"].to(dtype),
            return_dict=False,
        )[0]

    def _latent_statistics(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """Wan's per-channel latents_mean and 1 / latents_std, as WanPipeline computes them."""
        view = (1, self.vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(self.vae.config.latents_mean).view(view)
        inverse_std = 1.0 / torch.tensor(self.vae.config.latents_std).view(view)
        return mean.to(like.device, like.dtype), inverse_std.to(like.device, like.dtype)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Normalised latents → (B, F, H, W, 3) in [0, 1], with WanPipeline's arithmetic."""
        latents = latents.to(self.vae.device, self.vae.dtype)
        mean, inverse_std = self._latent_statistics(latents)
        video = self.vae.decode(latents / inverse_std + mean, return_dict=False)[0]
        return (video.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 4, 1)

    def encode_videos(self, videos: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(B, F, H, W, 3) in [0, 1] → normalised latents (a posterior sample): data x₀."""
        pixels = (2 * videos.float() - 1).permute(0, 4, 1, 2, 3)
        pixels = pixels.to(self.vae.device, self.vae.dtype)
        latents = self.vae.encode(pixels).latent_dist.sample(generator)
        mean, inverse_std = self._latent_statistics(latents)
        return ((latents - mean) * inverse_std).float()

    # ----------------------------------------------------------------- files

    def save_pretrained(self, directory: str | Path) -> None:
        """The whole pipeline (with the fine-tuned transformer), loadable as `model.type: wan`."""
        self.pipeline.save_pretrained(directory)
        defaults = {
            "num_frames": self.num_frames,
            "height": self.height,
            "width": self.width,
            "max_sequence_length": self.max_sequence_length,
            "reject_unknown_words": self.reject_unknown_words,
        }
        (Path(directory) / DEFAULTS_FILE).write_text(json.dumps(defaults, indent=2) + "\n")
