"""What every diffusers text-to-video pipeline adapter shares: loading a folder by path, the
prompt-embedding cache, moving text encoders and VAE on and off the training device, the
velocity call's precision and the video size check.

A family adapter (wan.py, hunyuan_video_15.py, ltx.py) subclasses `PipelineGenerator` and writes
only what differs: which pipeline class and components, how prompts become conditioning fields
(through the pipeline's own `encode_prompt`, so cleaning, templates and truncation are
diffusers'), how the transformer is called at (x, timestep), and how latents become pixels.
The pipeline object is kept for its modules and helpers; its `__call__` is never used.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from videogrpo.errors import UserError
from videogrpo.models.base import (
    DEFAULT_TIMESTEP_SCALE,
    NEGATIVE_PREFIX,
    Conditioning,
    ModelSpec,
    TransformerForward,
    guided_velocity,
)
from videogrpo.models.pipeline_folder import (
    DEFAULTS_FILE,
    load_pipeline,
    read_folder_defaults,
    read_pipeline_folder,
)
from videogrpo.models.text_cache import Entry, PaddedField, TextCache, fingerprint, trim
from videogrpo.models.trainable import TrainableTransformer

logger = logging.getLogger(__name__)

OFFLOAD_DEVICE = torch.device("cpu")
VIDEO_KEYS = ("num_frames", "height", "width")
# Prompts per text-encoder call when filling the cache ahead of a run.
ENCODE_BATCH_SIZE = 8


class PipelineGenerator(TrainableTransformer):
    """A diffusers pipeline folder as a `VideoGenerator`; subclasses fill in one family."""

    family: ClassVar[str]  # the model.type name, for messages
    pipeline_class: ClassVar[type]
    required_components: ClassVar[tuple[str, ...]]
    text_encoder_names: ClassVar[tuple[str, ...]] = ("text_encoder",)
    display_name: ClassVar[str]  # the family in prose: "Wan", "HunyuanVideo 1.5"
    # The pipeline's default video size (num_frames, height, width), a folder's videogrpo.json
    # and the config's sampling.* override it.
    video_defaults: ClassVar[Mapping[str, int]]
    # model.options this family takes, with their defaults (also allowed in videogrpo.json).
    option_defaults: ClassVar[Mapping[str, Any]]
    # Conditioning fields padded to a fixed length, trimmed in the cache (text_cache.py).
    padded_fields: ClassVar[tuple[PaddedField, ...]] = ()
    # Settings that change the embeddings (part of the disk cache's key).
    text_setting_keys: ClassVar[tuple[str, ...]] = ("max_sequence_length",)

    def __init__(self, pipeline: Any, settings: Mapping[str, Any], spec: ModelSpec) -> None:
        super().__init__()
        self.pipeline = pipeline
        self.settings = dict(settings)
        self.vae = pipeline.vae
        self.transformer = pipeline.transformer
        self.tokenizer = pipeline.tokenizer
        for name in self.text_encoder_names:
            setattr(self, name, getattr(pipeline, name))
        self.num_frames = int(settings["num_frames"])
        self.height = int(settings["height"])
        self.width = int(settings["width"])
        self.training_device = spec.device
        # On a CPU-only machine the moves are no-ops, but the bookkeeping is the same.
        self.offload = spec.memory.offload
        self._resident: set[str] = set()  # offloadable components now on the training device
        self.text_cache = TextCache(
            spec.memory.text_cache_dir,
            fingerprint(
                {
                    "family": self.family,
                    "text_dtype": spec.text_encoder_dtype,
                    **{key: settings[key] for key in self.text_setting_keys},
                },
                Path(spec.path or "."),
                tuple(name for name in pipeline.components if "text" in name or "token" in name),
            ),
        )
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> PipelineGenerator:
        if spec.path is None:
            raise UserError(
                f"model.path: the {cls.family} model type needs a {cls.pipeline_class.__name__} "
                "folder"
            )
        unknown = sorted(set(spec.options) - set(cls.option_defaults))
        if unknown:
            raise UserError(
                f"model.options: unknown {unknown} for {cls.family}; allowed: "
                f"{', '.join(cls.option_defaults)}"
            )
        path = Path(spec.path)
        index = read_pipeline_folder(path, (cls.pipeline_class.__name__,), cls.required_components)
        allowed_in_file = (*cls.video_defaults, *cls.option_defaults, *cls.extra_folder_keys())
        folder_settings = read_folder_defaults(path, allowed_in_file)
        dtypes = {"default": torch.float32, "vae": spec.vae_dtype}
        for name, entry in index.items():
            if isinstance(entry, list) and name.startswith("transformer"):
                dtypes[name] = spec.dtype
            elif isinstance(entry, list) and name.startswith("text_encoder"):
                dtypes[name] = spec.text_encoder_dtype
        pipeline = load_pipeline(cls.pipeline_class, path, dtypes)
        return cls.from_pipeline(pipeline, spec, folder_settings)

    @classmethod
    def from_pipeline(
        cls, pipeline: Any, spec: ModelSpec, folder_settings: Mapping[str, Any] | None = None
    ) -> PipelineGenerator:
        """An already built pipeline (its modules in the dtypes they have) as this backbone, with
        the spec's options, video size and memory switches applied as `from_spec` applies them."""
        settings = {**cls.video_defaults, **cls.option_defaults, **(folder_settings or {})}
        settings.update(spec.options)
        asked = {"num_frames": spec.num_frames, "height": spec.height, "width": spec.width}
        settings.update({key: value for key, value in asked.items() if value is not None})
        model = cls(pipeline, cls.resolve_settings(pipeline, settings), spec)
        model.check_video_size()
        model.place_components()
        model.configure_denoisers(
            gradient_checkpointing=spec.memory.gradient_checkpointing,
            attention_backend=spec.attention_backend,
            compile=spec.compile,
        )
        if spec.memory.vae_slicing:
            model.vae.enable_slicing()
        if spec.memory.vae_tiling:
            model.vae.enable_tiling()
        return model

    @classmethod
    def extra_folder_keys(cls) -> tuple[str, ...]:
        """videogrpo.json keys beyond the options (Wan: reject_unknown_words)."""
        return ()

    @classmethod
    def resolve_settings(cls, pipeline: Any, settings: dict[str, Any]) -> dict[str, Any]:
        """Fill defaults that depend on the loaded pipeline (HunyuanVideo 1.5's size)."""
        return settings

    # ----------------------------------------------------------------- placement

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def offloadable(self) -> dict[str, nn.Module]:
        """Components used in one phase only: text encoders (encode) and the VAE (decode)."""
        return {name: getattr(self, name) for name in (*self.text_encoder_names, "vae")}

    def place_components(self) -> None:
        """Denoisers on the training device; the rest there too unless offloading."""
        for module in self.denoisers().values():
            module.to(self.training_device)
        target = OFFLOAD_DEVICE if self.offload else self.training_device
        for module in self.offloadable().values():
            module.to(target)

    def bring(self, *names: str) -> None:
        """Move these offloadable components onto the training device for their phase."""
        for name in names:
            if self.offload and name not in self._resident:
                getattr(self, name).to(self.training_device)
                self._resident.add(name)

    def offload_idle(self) -> None:
        """Before the transformer runs: text encoders and VAE back to the CPU."""
        for name in sorted(self._resident):
            getattr(self, name).to(OFFLOAD_DEVICE)
        self._resident.clear()

    def resident_components(self) -> set[str]:
        """Offloadable components on the training device now (empty without offloading)."""
        return set(self._resident) if self.offload else set(self.offloadable())

    # ----------------------------------------------------------------- shapes

    @property
    def latent_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def check_video_size(self) -> None:
        raise NotImplementedError

    # ----------------------------------------------------------------- text

    def clear_prompt_cache(self) -> None:
        super().clear_prompt_cache()
        self.text_cache.clear()

    def encode_fields(self, prompts: list[str]) -> dict[str, Tensor]:
        """Uncached conditioning fields of `prompts`, batch first (the family's encode_prompt)."""
        raise NotImplementedError

    def cache_prompts(self, prompts: list[str]) -> None:
        """Encode every prompt not cached yet, in batches; with a cache folder the embeddings go
        to disk only, so a large prompt file does not fill the memory."""
        keep_in_memory = self.text_cache.folder is None
        missing = [p for p in dict.fromkeys(prompts) if p not in self.text_cache]
        for start in range(0, len(missing), ENCODE_BATCH_SIZE):
            batch = missing[start : start + ENCODE_BATCH_SIZE]
            for prompt, entry in zip(batch, self._encode_entries(batch), strict=True):
                self.text_cache.put(prompt, entry, keep_in_memory)

    def _encode_entries(self, prompts: list[str]) -> list[Entry]:
        self.warn_truncated(prompts)
        self.bring(*self.text_encoder_names)
        with torch.no_grad():
            fields = self.encode_fields(prompts)
        return [
            trim({name: value[i].cpu() for name, value in fields.items()}, self.padded_fields)
            for i in range(len(prompts))
        ]

    def encode(self, prompts: list[str], negative_prompt: str = "") -> Conditioning:
        """Each prompt's fields plus the negative prompt's as `negative_…`, from the cache."""
        wanted = list(dict.fromkeys([*prompts, negative_prompt]))
        entries = {prompt: self.text_cache.get(prompt) for prompt in wanted}
        missing = [prompt for prompt, entry in entries.items() if entry is None]
        if missing:
            for prompt, entry in zip(missing, self._encode_entries(missing), strict=True):
                self.text_cache.put(prompt, entry)
                entries[prompt] = entry
        rows = {prompt: entry.padded() for prompt, entry in entries.items()}
        names = rows[negative_prompt].keys()
        fields = {name: torch.stack([rows[p][name] for p in prompts]) for name in names}
        negative = {
            f"{NEGATIVE_PREFIX}{name}": rows[negative_prompt][name].expand_as(fields[name])
            for name in names
        }
        return Conditioning({**fields, **negative}).to(self.device)

    def warn_truncated(self, prompts: list[str]) -> None:
        """Prompts longer than the encoder's limit are cut as diffusers cuts them; say so."""
        limit = self.token_limit()
        if limit is None:
            return
        counts = self.token_counts(prompts)
        cut = [prompt for prompt, count in zip(prompts, counts, strict=True) if count > limit]
        if cut:
            logger.warning(
                "%d prompt(s) exceed the text encoder's %d tokens and are truncated as %s does, "
                "e.g. %r",
                len(cut),
                limit,
                self.pipeline_class.__name__,
                cut[0][:80],
            )

    def token_limit(self) -> int | None:
        return int(self.settings["max_sequence_length"])

    def token_counts(self, prompts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(prompts, add_special_tokens=True).input_ids]

    # ----------------------------------------------------------------- velocity

    def velocity(
        self, latents: Tensor, sigma: Tensor, conditioning: Conditioning, guidance_scale: float
    ) -> Tensor:
        """v ≈ ε − x₀ at x_σ in float32, with timestep = 1000·σ, one per sample."""
        self.offload_idle()
        sigma = torch.as_tensor(sigma, device=latents.device).reshape(-1).float()
        sigma = sigma.expand(latents.shape[0])
        forward, guidance_scale = self.forward_for(sigma, guidance_scale)
        with self.compute_context():
            return guided_velocity(
                forward, latents, sigma * DEFAULT_TIMESTEP_SCALE, conditioning, guidance_scale
            )

    def forward_for(self, sigma: Tensor, guidance_scale: float) -> tuple[TransformerForward, float]:
        """The transformer call and guidance at this σ (Wan 2.2 switches experts here)."""
        return self.forward, guidance_scale

    def forward(self, latents: Tensor, timesteps: Tensor, fields: Mapping[str, Tensor]) -> Tensor:
        raise NotImplementedError

    # ----------------------------------------------------------------- video

    def decode_pixels(self, latents: Tensor) -> Tensor:
        """Latents on the VAE → (B, 3, F, H, W) in [−1, 1] (the family's denormalisation)."""
        raise NotImplementedError

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Clean latents → (B, F, H, W, 3) in [0, 1], as the pipeline post-processes."""
        self.bring("vae")
        video = self.decode_pixels(latents.to(self.vae.device, self.vae.dtype))
        return (video.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 4, 1)

    # ----------------------------------------------------------------- files

    def folder_defaults(self) -> dict[str, Any]:
        """What videogrpo.json records so that the saved folder loads back the same way."""
        keys = (*self.video_defaults, *self.option_defaults, *self.extra_folder_keys())
        return {key: self.settings[key] for key in keys if key in self.settings}

    def save_pretrained(self, directory: str | Path) -> None:
        """The whole pipeline (with the fine-tuned transformer), loadable by the same type."""
        self.pipeline.save_pretrained(directory)
        defaults = self.folder_defaults()
        (Path(directory) / DEFAULTS_FILE).write_text(json.dumps(defaults, indent=2) + "\n")
