"""Tiny random learned-reward folders for tests: a CLIPModel + CLIPProcessor saved to disk.

Random weights are enough: the tests check the arithmetic and plumbing around the model (which
frames, which prompt, which normalisation), not what the model has learned.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

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
