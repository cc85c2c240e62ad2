"""The embedded default: a tiny real `WanTransformer3DModel` working in pixel space.

Tiny so that the whole GRPO loop runs on a laptop CPU; the real diffusers architecture (and a real
UMT5 text encoder, a `WanPipeline`-compatible tokenizer and the diffusers LoRA format) so that
everything tested on it — the velocity call, CFG, LoRA export — is what runs on Wan 2.1/2.2.
The autoencoder is the identity (latent = 2·video − 1), so there is no VAE to train or ship.
"""

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import Tensor

from videogrpo.embedded.clean_prediction import CleanPredictionWanTransformer
from videogrpo.embedded.text import build_tiny_umt5, build_word_tokenizer
from videogrpo.errors import UserError
from videogrpo.models.base import (
    DEFAULT_TIMESTEP_SCALE,
    Conditioning,
    ModelSpec,
    guided_velocity,
)
from videogrpo.models.lora import has_lora
from videogrpo.models.trainable import TrainableTransformer

CONFIG_FILE = "config.json"
VOCABULARY_FILE = "vocabulary.json"
WEIGHTS_FILE = "model.safetensors"
# Where `videogrpo pretrain` writes the shipped weights and `load_default` reads them.
DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parent / "assets" / "tiny_wan"
# Wan 2.1's sampling shift in the reference implementations (ALGORITHMS §1).
WAN_FLOW_SHIFT = 3.0
# The network's output parametrisation → the transformer class that turns it into a velocity.
TRANSFORMER_CLASSES: dict[str, type[WanTransformer3DModel]] = {
    "clean": CleanPredictionWanTransformer,
    "velocity": WanTransformer3DModel,
}
# config.json key of folders saved before the negative prompt became sampling.negative_prompt.
LEGACY_NEGATIVE_PROMPT_KEY = "negative_prompt"
# Longest error reason quoted in a one-line UserError.
MAX_REASON_CHARS = 160


@dataclass(frozen=True)
class TinyWanConfig:
    """Sizes of the tiny model; every field is saved in config.json next to the weights.

    The defaults were chosen with benchmarks/bench_model_speed.py (docs/models.md): 8×8 spatial
    patches make a 32×32 frame 16 tokens, so attention over a whole clip (128 tokens) is cheap on
    two CPU cores, and the width/depth go where they buy quality instead.
    """

    num_frames: int = 8
    height: int = 32
    width: int = 32
    channels: int = 3  # RGB pixels: the identity autoencoder has no latent channels of its own
    patch_size: tuple[int, int, int] = (2, 8, 8)  # (frames, height, width) per token
    num_layers: int = 4
    num_attention_heads: int = 4
    attention_head_dim: int = 48  # rope splits it into t/h/w parts: 16 + 16 + 16
    ffn_dim: int = 768
    freq_dim: int = 64  # sinusoidal timestep features
    text_dim: int = 64  # UMT5 d_model, also the transformer's text input width
    text_num_layers: int = 2
    text_num_heads: int = 4
    text_ffn_dim: int = 128
    max_text_len: int = 16  # tokens incl. </s>; the synthetic prompts are ~10 words
    # What the network outputs: "clean" (x̂₀, converted to velocity inside the transformer; see
    # models/clean_prediction.py) or "velocity" (plain Wan). Both are velocity models outside.
    prediction: str = "clean"
    seed: int = 0  # initialisation of a fresh (unpretrained) model

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(self.patch_size))
        if len(self.patch_size) != 3:
            raise UserError(f"patch_size must have 3 entries (t, h, w), got {self.patch_size}")
        for name, size, patch in zip(
            ("num_frames", "height", "width"),
            (self.num_frames, self.height, self.width),
            self.patch_size,
            strict=True,
        ):
            if patch <= 0 or size % patch:
                raise UserError(f"{name}={size} must be a multiple of its patch size {patch}")
        if self.prediction not in TRANSFORMER_CLASSES:
            raise UserError(
                f"prediction={self.prediction!r} is not one of {sorted(TRANSFORMER_CLASSES)}"
            )
        rope_spatial = 2 * (self.attention_head_dim // 6)
        if self.attention_head_dim % 2 or rope_spatial == 0:
            raise UserError(
                f"attention_head_dim={self.attention_head_dim} must be even and at least 6 (rope)"
            )

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def tokens_per_clip(self) -> int:
        pt, ph, pw = self.patch_size
        return (self.num_frames // pt) * (self.height // ph) * (self.width // pw)


class TinyWan(TrainableTransformer):
    """A `VideoGenerator`: tiny Wan transformer + tiny UMT5, pixel-space latents.

    A fresh instance has every weight trainable (pretraining trains the text encoder jointly);
    `from_pretrained` returns a frozen model in eval mode, ready for `enable_lora` or
    `enable_full_finetuning`.
    """

    lora_pipeline_class = WanPipeline

    def __init__(self, config: TinyWanConfig, vocabulary: Sequence[str]) -> None:
        super().__init__()
        self.config = config
        self.vocabulary = list(vocabulary)
        self.tokenizer = build_word_tokenizer(self.vocabulary, config.max_text_len)
        self.text_encoder = build_tiny_umt5(
            vocab_size=len(self.tokenizer),
            d_model=config.text_dim,
            num_layers=config.text_num_layers,
            num_heads=config.text_num_heads,
            ffn_dim=config.text_ffn_dim,
            seed=config.seed,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed + 1)  # a stream of its own, apart from the text encoder
            self.transformer = TRANSFORMER_CLASSES[config.prediction](
                patch_size=config.patch_size,
                num_attention_heads=config.num_attention_heads,
                attention_head_dim=config.attention_head_dim,
                in_channels=config.channels,
                out_channels=config.channels,
                text_dim=config.text_dim,
                freq_dim=config.freq_dim,
                ffn_dim=config.ffn_dim,
                num_layers=config.num_layers,
            )
        # bf16 autocast is worth it for big backbones on GPU; the tiny model defaults to float32.
        self.autocast_dtype: torch.dtype | None = None

    # ----------------------------------------------------------------- shapes and noise

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        c = self.config
        return (c.channels, c.num_frames, c.height, c.width)

    # ----------------------------------------------------------------- text

    def text_embeddings(self, prompts: list[str]) -> Tensor:
        """(B, max_text_len, text_dim), differentiable, uncached: for pretraining the text encoder.

        Padding positions are zeroed after encoding, exactly as `WanPipeline` does, so our
        velocities match the pipeline's for the same prompt.
        """
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.config.max_text_len,
            truncation=True,
            return_attention_mask=True,
            return_tensors="pt",
        ).to(self.device)
        hidden = self.text_encoder(tokens.input_ids, tokens.attention_mask).last_hidden_state
        return hidden * tokens.attention_mask.unsqueeze(-1).to(hidden.dtype)

    def encode(self, prompts: list[str], negative_prompt: str = "") -> Conditioning:
        """Text embeddings of the prompts (`text`) and of the negative prompt (`negative_text`).

        Cached per prompt string while the text encoder is frozen (always, during RL); a trainable
        text encoder (pretraining) changes every step, so then nothing is cached.
        """
        if any(p.requires_grad for p in self.text_encoder.parameters()):
            conditional = self.text_embeddings(prompts)
            unconditional = self.text_embeddings([negative_prompt]).expand_as(conditional)
            return Conditioning({"text": conditional, "negative_text": unconditional})
        wanted = dict.fromkeys([*prompts, negative_prompt])
        missing = [p for p in wanted if p not in self._prompt_cache]
        if missing:
            with torch.no_grad():
                self._prompt_cache.update(zip(missing, self.text_embeddings(missing), strict=True))
        conditional = torch.stack([self._prompt_cache[p] for p in prompts]).to(self.device)
        negative = self._prompt_cache[negative_prompt]
        unconditional = torch.stack([negative] * len(prompts)).to(self.device)
        return Conditioning({"text": conditional, "negative_text": unconditional})

    def check_prompts(self, prompts: list[str]) -> None:
        """A word outside the vocabulary would silently become <unk>: refuse it instead."""
        for prompt in prompts:
            if self.tokenizer.unk_token_id in self.tokenizer(prompt).input_ids:
                unknown = [word for word in prompt.lower().split() if word not in self.vocabulary]
                raise UserError(
                    f"prompt {prompt!r} has words the model does not know ({', '.join(unknown)}); "
                    f"its vocabulary: {', '.join(self.vocabulary)}"
                )

    # ----------------------------------------------------------------- velocity and decode

    def velocity(
        self,
        latents: Tensor,
        sigma: Tensor,
        conditioning: Conditioning,
        guidance_scale: float,
    ) -> Tensor:
        """v ≈ ε − x₀ at x_σ; σ may be one value for the batch or one per sample."""
        sigma = torch.as_tensor(sigma, device=latents.device).reshape(-1)
        timesteps = sigma.expand(latents.shape[0]).float() * DEFAULT_TIMESTEP_SCALE
        return guided_velocity(
            self._transformer_forward, latents, timesteps, conditioning, guidance_scale
        )

    def _transformer_forward(
        self, latents: Tensor, timesteps: Tensor, fields: Mapping[str, Tensor]
    ) -> Tensor:
        """Wan takes no text mask: padded positions are zero embeddings instead."""
        text = fields["text"]
        dtype = self.transformer.dtype
        with torch.autocast(
            device_type=latents.device.type,
            dtype=self.autocast_dtype or torch.float32,
            enabled=self.autocast_dtype is not None,
        ):
            return self.transformer(
                hidden_states=latents.to(dtype),
                timestep=timesteps,
                encoder_hidden_states=text.to(dtype),
                return_dict=False,
            )[0]

    def decode(self, latents: Tensor) -> Tensor:
        """(B, C, F, H, W) in [−1, 1] → (B, F, H, W, C) in [0, 1] (identity autoencoder)."""
        return ((latents.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 4, 1)

    def encode_videos(self, videos: Tensor) -> Tensor:
        """(B, F, H, W, C) in [0, 1] → latents (B, C, F, H, W) in [−1, 1]: the data x₀ to learn."""
        return (2 * videos.float() - 1).permute(0, 4, 1, 2, 3).contiguous()

    # ----------------------------------------------------------------- files and diffusers

    def save_pretrained(self, directory: str | Path) -> None:
        """config.json + vocabulary.json + model.safetensors (no pickle anywhere)."""
        if has_lora(self.transformer):
            raise ValueError("save_pretrained writes the base model; export a LoRA with save_lora")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        (directory / VOCABULARY_FILE).write_text(json.dumps(self.vocabulary) + "\n")
        save_model(self, str(directory / WEIGHTS_FILE))

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        fix: str = "save it again with TinyWan.save_pretrained or run `videogrpo pretrain`",
    ) -> "TinyWan":
        """Load a frozen model in eval mode; any missing or unreadable file is a UserError."""
        directory = Path(directory)
        config_fields = _read_json(directory / CONFIG_FILE, fix)
        if isinstance(config_fields, dict):  # the negative prompt moved to sampling.negative_prompt
            config_fields.pop(LEGACY_NEGATIVE_PROMPT_KEY, None)
        known = {f.name for f in fields(TinyWanConfig)}
        if not isinstance(config_fields, dict) or not config_fields.keys() <= known:
            raise UserError(f"{directory / CONFIG_FILE} is not a TinyWanConfig; {fix}")
        # Folders saved before the clean-prediction head existed hold velocity-trained weights.
        config_fields.setdefault("prediction", "velocity")
        vocabulary = _read_json(directory / VOCABULARY_FILE, fix)
        if not isinstance(vocabulary, list) or not all(isinstance(w, str) for w in vocabulary):
            raise UserError(f"{directory / VOCABULARY_FILE} is not a list of words; {fix}")
        try:
            model = cls(TinyWanConfig(**config_fields), vocabulary)
        except (TypeError, ValueError) as error:  # a field of the wrong type or size
            raise UserError(
                f"{directory / CONFIG_FILE} does not describe a tiny Wan ({_reason(error)}); {fix}"
            ) from error
        weights = directory / WEIGHTS_FILE
        if not weights.is_file():
            raise UserError(f"missing tiny-Wan weights file {weights}; {fix}")
        try:
            load_model(model, str(weights), strict=True)
        except (SafetensorError, RuntimeError, OSError, ValueError) as error:
            raise UserError(
                f"cannot load tiny-Wan weights {weights} ({_reason(error)}); {fix}"
            ) from error
        model.requires_grad_(False)
        return model.eval()

    def to_diffusers_pipeline(self, shift: float = WAN_FLOW_SHIFT) -> WanPipeline:
        """A `WanPipeline` sharing this model's modules, to check our sampler against diffusers.

        There is no VAE (pixel space), so call it with `latents=` and `output_type="latent"`.
        """
        return WanPipeline(
            tokenizer=self.tokenizer,
            text_encoder=self.text_encoder,
            vae=None,
            scheduler=FlowMatchEulerDiscreteScheduler(shift=shift),
            transformer=self.transformer,
        )


def load_default() -> TinyWan:
    """The pretrained tiny model shipped inside the package; never touches the network."""
    return TinyWan.from_pretrained(
        DEFAULT_WEIGHTS_DIR,
        fix="reinstall videogrpo, or run `videogrpo pretrain` to rebuild the default weights",
    )


def load_tiny_wan(spec: ModelSpec) -> TinyWan:
    """`model.type: tiny_wan`: a folder written by `save_pretrained`, or the embedded default."""
    if spec.options:
        raise UserError(f"model.options: the tiny_wan model takes none, got {sorted(spec.options)}")
    model = load_default() if spec.path is None else TinyWan.from_pretrained(spec.path)
    c = model.config
    asked = (spec.num_frames, spec.height, spec.width)
    made = model.latent_shape[1:]
    if any(want is not None and want != have for want, have in zip(asked, made, strict=True)):
        raise UserError(
            f"sampling.num_frames/height/width: this tiny_wan model makes {c.num_frames}×"
            f"{c.height}×{c.width} clips only; leave them unset (null)"
        )
    model.autocast_dtype = None if spec.dtype == torch.float32 else spec.dtype
    return model.to(spec.device)


def _read_json(path: Path, fix: str) -> object:
    if not path.is_file():
        raise UserError(f"missing tiny-Wan file {path}; {fix}")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"cannot read tiny-Wan file {path} ({_reason(error)}); {fix}") from error


def _reason(error: Exception) -> str:
    """The first line of an error, short enough for a one-line message."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    return lines[0][:MAX_REASON_CHARS]
