"""Shared fixtures for the trainer-layer tests: one tiny random TinyWan and tiny run settings.

CPU is scarce, so every trainer test runs a 1-layer Wan at the world's clip size (8×32×32, which
the renderer and rewards need) with 4 rollout steps, 2 prompts × 2 samples and a 2-prompt eval.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

if typing.TYPE_CHECKING:
    from videogrpo.training.trainer import GRPOTrainer

from videogrpo.embedded.tiny_wan import TinyWan, TinyWanConfig
from videogrpo.embedded.world.grammar import tokenizer_vocabulary

PRESETS_DIR = Path(__file__).resolve().parent.parent / "configs"
ALL_PRESETS = sorted(PRESETS_DIR.glob("*.yaml"))
# A preset for a real backbone names it (model.type: wan …); tests/test_backbones_training.py
# runs those on tiny folders of their family.
BACKBONE_PRESETS = [
    path for path in ALL_PRESETS if "type" in (yaml.safe_load(path.read_text()).get("model") or {})
]
# Presets whose reward needs downloaded weights: the engine tests run every other preset on the
# tiny model; tests/test_rewards_presets.py runs these with tiny stand-ins of those weights.
WEIGHTED_REWARD_PRESETS = ("selfpaced_videoalign",)
PRESETS = [
    path
    for path in ALL_PRESETS
    if path not in BACKBONE_PRESETS and path.stem not in WEIGHTED_REWARD_PRESETS
]
PRESET_IDS = [path.stem for path in PRESETS]

# Smallest model the world's clips allow: 8 frames of 32×32 RGB, 1 block of 2 heads × 12 dims.
TINY_CONFIG = TinyWanConfig(
    num_layers=1,
    num_attention_heads=2,
    attention_head_dim=12,
    ffn_dim=48,
    text_dim=16,
    text_num_layers=1,
    text_num_heads=2,
    text_ffn_dim=32,
    freq_dim=16,
)

# Smallest config that still exercises every model code path (2 frames, 2×2 tokens per frame,
# 1 layer): for model-layer tests that need no world clip.
MICRO_CONFIG = TinyWanConfig(
    num_frames=2,
    height=16,
    width=16,
    patch_size=(1, 8, 8),
    num_layers=1,
    num_attention_heads=2,
    attention_head_dim=12,
    ffn_dim=32,
    freq_dim=16,
    text_dim=16,
    text_num_layers=1,
    text_num_heads=2,
    text_ffn_dim=32,
    max_text_len=8,
)

# A vocabulary covering the prompts model-layer tests encode with MICRO_CONFIG.
MICRO_WORDS = [
    "a",
    "red",
    "blue",
    "circle",
    "square",
    "moves",
    "left",
    "right",
    "slowly",
    "on",
    "black",
]

# A held-out prompt of the world's grammar (the `sample` and `eval` CLI tests use it).
HELDOUT_PROMPT = "a red square moving left slowly on a black background"


def tiny_settings(model_dir: Path, output_dir: Path, iterations: int = 2) -> list[str]:
    """`--set` overrides that shrink any preset to seconds on a CPU (the preset's method kept)."""
    return [
        f"model.path={model_dir}",
        "model.lora_rank=4",
        "model.lora_alpha=8",
        f"run.output_dir={output_dir}",
        f"run.iterations={iterations}",
        "run.videos_every=0",
        "sampling.num_steps=4",
        "selection.window_size=2",  # mixgrpo: 3 SDE steps of 4 (the last is ODE)
        "selection.window_every=1",  # ... and the window moves every iteration
        "data.prompts_per_iteration=2",
        "data.group_size=2",
        "eval.max_prompts=2",
        "eval.samples_per_prompt=1",
        "eval.num_steps=2",
        "eval.videos=1",
    ]


def make_trainer(model_dir, output_dir, preset: str = "sage", overrides=()) -> GRPOTrainer:
    """A GRPOTrainer as run.train builds it (same seed before the LoRA init), without the disk."""
    import torch

    from videogrpo.config import load_config
    from videogrpo.runs.loading import load_model, load_reward
    from videogrpo.training.prompts import load_prompts
    from videogrpo.training.trainer import GRPOTrainer

    settings = tiny_settings(model_dir, output_dir) + list(overrides)
    config = load_config(PRESETS_DIR / f"{preset}.yaml", settings)
    torch.manual_seed(config.run.seed)
    model = load_model(config)
    return GRPOTrainer(config, model, load_reward(config), load_prompts(config.data.prompts))


def setting_keys(cls: type | None = None, prefix: str = "") -> list[str]:
    """Every dotted key of the training config tree (sections recursed, leaves listed)."""
    from videogrpo.config import TrainConfig

    cls = TrainConfig if cls is None else cls
    keys = []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[field.name]):
            keys += setting_keys(hints[field.name], f"{prefix}{field.name}.")
        else:
            keys.append(f"{prefix}{field.name}")
    return keys


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random (unpretrained) TinyWan saved with save_pretrained; seed 0, deterministic."""
    directory = tmp_path_factory.mktemp("tiny_wan")
    model = TinyWan(TINY_CONFIG, tokenizer_vocabulary())
    model.requires_grad_(False)
    model.save_pretrained(directory)
    return directory


@pytest.fixture
def one_thread():
    """One torch thread: on a busy 2-core machine tiny matmuls with 2 threads run ~30× slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# A complete tiny WanPipeline folder: 5 frames of 16×16 → latents 4 × 3 × 4 × 4 (VAE 2× in time,
# 4× in space), transformer patches (1, 2, 2), a word tokenizer padded to 8 tokens.
TINY_PIPELINE_VIDEO = {"num_frames": 5, "height": 16, "width": 16, "max_sequence_length": 8}
TINY_PIPELINE_WORDS = ["a", "red", "blue", "circle", "square", "moving", "left", "right", "slowly"]


def build_tiny_wan_pipeline(directory: Path, seed: int = 0) -> Path:
    """Save a random WanPipeline (stock diffusers classes only) plus its videogrpo.json."""
    import json

    import torch
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )

    from videogrpo.embedded.text import build_tiny_umt5, build_word_tokenizer

    tokenizer = build_word_tokenizer(
        TINY_PIPELINE_WORDS, TINY_PIPELINE_VIDEO["max_sequence_length"]
    )
    text_encoder = build_tiny_umt5(len(tokenizer), 16, 1, 2, 32, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKLWan(
            base_dim=8,
            z_dim=4,
            dim_mult=[1, 2, 2],
            num_res_blocks=1,
            temperal_downsample=[False, True],
            latents_mean=[0.1, -0.2, 0.3, 0.0],  # not 0/1: a decode that skips them is caught
            latents_std=[1.5, 0.8, 1.2, 1.0],
            scale_factor_temporal=2,
            scale_factor_spatial=4,
        )
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=12,
            in_channels=4,
            out_channels=4,
            text_dim=16,
            freq_dim=16,
            ffn_dim=32,
            num_layers=1,
        )
    pipeline = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer=transformer,
    )
    pipeline.save_pretrained(directory)
    (directory / "videogrpo.json").write_text(json.dumps(TINY_PIPELINE_VIDEO))
    return directory


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory: pytest.TempPathFactory):
    """Each backbone family's tiny pipeline folder (tests/backbone_cases.py), built once per
    session on first use and shared by every test file; tests that break one copy it first."""
    from backbone_cases import CASES

    built: dict[str, Path] = {}

    def folder(name: str) -> Path:
        if name not in built:
            built[name] = CASES[name].build(tmp_path_factory.mktemp(name))
        return built[name]

    return folder


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_wan_pipeline(tmp_path_factory.mktemp("tiny_wan_pipeline"))
