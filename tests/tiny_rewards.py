"""Tiny random learned-reward folders for tests: a CLIPModel + CLIPProcessor saved to disk.

Random weights are enough: the tests check the arithmetic and plumbing around the model (which
frames, which prompt, which normalisation), not what the model has learned.
"""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path

import torch
from safetensors.torch import save_file

# CLIP's special tokens and one token per letter (word-final and not), no merges: any lower-case
# prompt tokenizes, letter by letter.
CLIP_SPECIAL = ("<|startoftext|>", "<|endoftext|>")
CLIP_IMAGE_SIZE = 32
CLIP_TEXT_LENGTH = 32


def build_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A 1-layer CLIPModel (width 16, projection 8) with its processor, saved in `folder`."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    folder.mkdir(parents=True, exist_ok=True)
    vocabulary = {token: index for index, token in enumerate(CLIP_SPECIAL)}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        for token in (letter, f"{letter}</w>"):
            vocabulary[token] = len(vocabulary)
    (folder / "vocab.json").write_text(json.dumps(vocabulary))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=CLIP_TEXT_LENGTH
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": CLIP_IMAGE_SIZE},
        crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
    )
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocabulary),
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": CLIP_TEXT_LENGTH,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": CLIP_IMAGE_SIZE,
            "patch_size": 8,
        },
        projection_dim=8,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CLIPModel(config)
    model.save_pretrained(folder)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


# --- A tiny VideoReward checkpoint ----------------------------------------------------------
# It is built the same way under transformers 4.45 (scripts/record_videoalign_reference.py runs
# VideoAlign's own code on it) and 5 (the tests): word-level tokenizer with fixed ids, weights
# drawn per name from a seed, so both builds hold the same numbers.

QWEN_SPECIAL = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<unk>",
)
VIDEOALIGN_REWARD_TOKENS = ("<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>")
# Qwen2-VL-2B-Instruct's chat_template.json.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen2-VL-2B-Instruct's preprocessor_config.json (read by the reference's processor only).
QWEN2_VL_PREPROCESSOR = {
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2VLProcessor",
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "rescale_factor": 0.00392156862745098,
    "resample": 3,
}
VIDEOALIGN_LORA_RANK, VIDEOALIGN_LORA_ALPHA = 4, 8
VIDEOALIGN_LORA_EXCLUDED = ("lm_head", "rm_head", "embed_tokens", "visual")
VIDEOALIGN_STEP = 12
# The checkpoint's inference_config: what the reward z-normalises with.
VIDEOALIGN_NORMALIZATION = {
    "VQ_mean": 0.25,
    "VQ_std": 2.0,
    "MQ_mean": -0.5,
    "MQ_std": 0.5,
    "TA_mean": 1.0,
    "TA_std": 4.0,
}
# Frames per second and pixel budget of the tiny checkpoint's data_config (VideoAlign's: 2 fps,
# 448 × 448 = 200704 pixels).
VIDEOALIGN_FPS = 2.0
VIDEOALIGN_MAX_PIXELS = 200704
PROMPT_FILE = (
    Path(__file__).resolve().parent.parent / "videogrpo/rewards/assets/videoalign_prompt.txt"
)
# Words of the test prompts beyond the template's (others tokenize as <unk>).
EXTRA_WORDS = "red blue green circle square moves left right slowly quickly on black background"


def _words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]+", text)


def _qwen_config(vocab_size: int, token_ids: dict[str, int]) -> dict:
    """Qwen2-VL's config.json layout (transformers 4.45: text settings at the top level)."""
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "model_type": "qwen2_vl",
        "hidden_size": 48,
        "intermediate_size": 96,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "hidden_act": "silu",
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [4, 4, 4]},
        "tie_word_embeddings": True,
        "vocab_size": vocab_size,
        "bos_token_id": token_ids["<|endoftext|>"],
        "eos_token_id": token_ids["<|im_end|>"],
        "vision_start_token_id": token_ids["<|vision_start|>"],
        "vision_end_token_id": token_ids["<|vision_end|>"],
        "vision_token_id": token_ids["<|image_pad|>"],
        "image_token_id": token_ids["<|image_pad|>"],
        "video_token_id": token_ids["<|video_pad|>"],
        "torch_dtype": "float32",
        "vision_config": {
            "depth": 1,
            "embed_dim": 32,
            "mlp_ratio": 2,
            "num_heads": 2,
            "in_chans": 3,
            "hidden_size": 48,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "temporal_patch_size": 2,
        },
    }


def _seeded(name: str, shape: torch.Size, seed: int) -> torch.Tensor:
    """Weights by name: norms near 1, biases and matrices small; the same in any torch build."""
    generator = torch.Generator().manual_seed(seed + zlib.crc32(name.encode()))
    noise = torch.randn(shape, generator=generator)
    if "norm" in name.split(".")[-2] or name.split(".")[-2] in ("ln_q",):
        return 1 + 0.1 * noise if name.endswith("weight") else 0.1 * noise
    return 0.1 * noise


def _reference_names(config: dict) -> dict[str, torch.Size]:
    """Qwen2VLForConditionalGeneration's weights with transformers-4.45 names → shapes."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    with torch.device("meta"):
        model = Qwen2VLForConditionalGeneration(Qwen2VLConfig.from_dict(config))
    shapes = {}
    for name, tensor in model.state_dict().items():
        for new, old in (("model.language_model.", "model."), ("model.visual.", "visual.")):
            if name.startswith(new):
                name = old + name.removeprefix(new)
        shapes[name] = tensor.shape
    return shapes


def build_tiny_videoreward(root: Path, form: str, seed: int = 0) -> tuple[Path, Path]:
    """(reward folder, base folder) of a 1-layer Qwen2-VL VideoReward in `form` full or lora.

    Both forms hold one model: base weights, a trained vision tower, embeddings and head, and
    LoRA factors on every language-model linear layer (VideoAlign's targets).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    base, reward = root / "base", root / f"videoreward_{form}"
    checkpoint = reward / f"checkpoint-{VIDEOALIGN_STEP}"
    for folder in (base, checkpoint / "tokenizer"):
        folder.mkdir(parents=True, exist_ok=True)
    words = sorted(set(_words(PROMPT_FILE.read_text() + " " + EXTRA_WORDS)))
    token_ids = {token: i for i, token in enumerate([*QWEN_SPECIAL, *words])}
    backend = Tokenizer(models.WordLevel(vocab=token_ids, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(list(QWEN_SPECIAL[:-1]))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
        padding_side="right",
    )
    tokenizer.save_pretrained(base)
    (base / "chat_template.json").write_text(json.dumps({"chat_template": QWEN2_VL_CHAT_TEMPLATE}))
    (base / "preprocessor_config.json").write_text(json.dumps(QWEN2_VL_PREPROCESSOR))
    tokenizer.add_special_tokens({"additional_special_tokens": list(VIDEOALIGN_REWARD_TOKENS)})
    tokenizer.save_pretrained(checkpoint / "tokenizer")

    base_vocab = len(token_ids) + 16  # padded like Qwen2-VL's 151936 rows for 151657 tokens
    config = _qwen_config(base_vocab, token_ids)
    (base / "config.json").write_text(json.dumps(config, indent=1))
    shapes = _reference_names(config)
    base_state = {name: _seeded(name, shape, seed) for name, shape in shapes.items()}
    base_state["lm_head.weight"] = base_state["model.embed_tokens.weight"]  # tied, as in 2B
    # transformers 4.45 refuses safetensors files without this metadata.
    save_file(
        {k: v.clone() for k, v in base_state.items()},
        base / "model.safetensors",
        metadata={"format": "pt"},
    )

    # What training changed outside LoRA: the vision tower, the resized embeddings, the head.
    reward_vocab = len(tokenizer)
    trained = {
        name: base_state[name] + 0.05 * _seeded(f"trained.{name}", shape, seed)
        for name, shape in shapes.items()
        if name.startswith("visual.")
    }
    trained["model.embed_tokens.weight"] = _seeded("trained.embed", (reward_vocab, 48), seed)
    trained["rm_head.weight"] = _seeded("rm_head.weight", (3, 48), seed)
    targets = sorted(
        name.removesuffix(".weight")
        for name, shape in shapes.items()
        if len(shape) == 2
        and name.startswith("model.layers.")
        and not any(word in name for word in VIDEOALIGN_LORA_EXCLUDED)
    )
    factors = {}
    for module in targets:
        out_features, in_features = shapes[f"{module}.weight"]
        factors[module] = (
            _seeded(f"{module}.lora_A", (VIDEOALIGN_LORA_RANK, in_features), seed),
            _seeded(f"{module}.lora_B", (out_features, VIDEOALIGN_LORA_RANK), seed),
        )

    prefix = "base_model.model."
    if form == "full":  # the peft-wrapped model's whole state dict, LoRA unmerged
        state = {}
        full = {**base_state, **trained}
        full["lm_head.weight"] = full["model.embed_tokens.weight"]
        for name, value in full.items():
            module, _, parameter = name.rpartition(".")
            if module in factors:
                state[f"{prefix}{module}.base_layer.{parameter}"] = value.clone()
            else:
                state[f"{prefix}{name}"] = value.clone()
        for module, (a, b) in factors.items():
            state[f"{prefix}{module}.lora_A.default.weight"] = a
            state[f"{prefix}{module}.lora_B.default.weight"] = b
        torch.save(state, checkpoint / "model.pth")
    elif form == "lora":  # peft's adapter file and the other trained weights
        adapter = {}
        for module, (a, b) in factors.items():
            adapter[f"{prefix}{module}.lora_A.weight"] = a
            adapter[f"{prefix}{module}.lora_B.weight"] = b
        save_file(adapter, checkpoint / "adapter_model.safetensors", metadata={"format": "pt"})
        torch.save(
            {f"{prefix}{k}": v.clone() for k, v in trained.items()},
            checkpoint / "non_lora_state_dict.pth",
        )
    else:
        raise ValueError(f"form must be full or lora, got {form!r}")

    model_config = {
        "data_config": {
            "meta_data": "unused",
            "data_dir": "unused",
            "max_frame_pixels": VIDEOALIGN_MAX_PIXELS,
            "num_frames": None,
            "fps": VIDEOALIGN_FPS,
            "eval_dim": ["VQ", "MQ", "TA"],
            "prompt_template_type": "detailed_special",
            "sample_type": "uniform",
        },
        "model_config": {
            "model_name_or_path": str(base),
            "output_dim": 3,
            "use_special_tokens": True,
            "reward_token": "special",
            "torch_dtype": "float32",
        },
        "peft_lora_config": {
            "lora_enable": True,
            "vision_lora": False,
            "lora_r": VIDEOALIGN_LORA_RANK,
            "lora_alpha": VIDEOALIGN_LORA_ALPHA,
            "lora_dropout": 0.05,
            "lora_namespan_exclude": list(VIDEOALIGN_LORA_EXCLUDED),
            "lora_task_type": "CAUSAL_LM",
            "use_rslora": False,
            "num_lora_modules": -1,
        },
        "inference_config": VIDEOALIGN_NORMALIZATION,
    }
    (reward / "model_config.json").write_text(json.dumps(model_config, indent=1))
    return reward, base


def videoalign_test_videos() -> list[tuple[str, torch.Tensor, float]]:
    """Stated inputs of the preprocessing fixture: (name, uint8 (F, H, W, 3), frames per second).

    Integer patterns (exact in any build): a horizontal ramp, products of coordinates (fine
    detail for the antialiasing), 8-pixel blocks, all moving with the frame index. The sizes
    cover enlarging a small clip, rounding a mid-sized one and shrinking a large one.
    """
    specs = [
        ("small_enlarged", 9, 40, 56, 8.0),
        ("mid_rounded", 20, 300, 500, 16.0),
        ("large_shrunk", 12, 480, 640, 24.0),
    ]
    videos = []
    for name, frames, height, width, fps in specs:
        t = torch.arange(frames).view(-1, 1, 1)
        y = torch.arange(height).view(1, -1, 1)
        x = torch.arange(width).view(1, 1, -1)
        red = (3 * x + 5 * t) % 256
        green = ((x * y) // 7 + 11 * t) % 256
        blue = ((x // 8) * 37 + (y // 8) * 59 + 13 * t) % 256
        video = torch.stack(torch.broadcast_tensors(red, green, blue), dim=-1).to(torch.uint8)
        videos.append((name, video, fps))
    return videos


def videoalign_score_inputs() -> tuple[list[torch.Tensor], list[str], float]:
    """Three same-sized clips (uint8 (8, 32, 32, 3), the world's size), prompts, frame rate."""
    t = torch.arange(8).view(-1, 1, 1)
    y = torch.arange(32).view(1, -1, 1)
    x = torch.arange(32).view(1, 1, -1)
    videos = []
    for offset in (0, 40, 90):
        red = (7 * x + 3 * y + 9 * t + offset) % 256
        green = ((x + offset) * (y + 1) // 5 + 17 * t) % 256
        blue = (((x + t) // 4) * 61 + (y // 4) * 23 + offset) % 256
        videos.append(torch.stack(torch.broadcast_tensors(red, green, blue), -1).to(torch.uint8))
    prompts = ["a red circle moves left", "a blue square moves right slowly", "green"]
    return videos, prompts, 8.0
