"""`reward.type: clipscore` and `pickscore`: CLIP-family image rewards, per frame, averaged.

Both read a local folder holding a transformers `CLIPModel` and the `CLIPProcessor` it was
trained with (`save_pretrained` of both into one folder: e.g. openai/clip-vit-large-patch14 for
CLIPScore; PickScore's yuvalkirstain/PickScore_v1 model with the laion/CLIP-ViT-H-14-laion2B-
s32B-b79K processor). No open_clip, no torchvision: the processor's PIL path resizes.

A video's score is the mean of its frames' scores over `frames` frames spread evenly from the
first to the last, each frame against the video's prompt:
- clipscore = 2.5 · max(cos(text, frame), 0)  (Hessel et al. 2021, CLIPScore, eq. 1)
- pickscore = exp(logit_scale) · cos(text, frame)  (Kirstain et al. 2023, the model card's score)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch
from torch import Tensor

from videogrpo.errors import UserError
from videogrpo.rewards.frames import check_batch, to_uint8, uniform_frame_indices
from videogrpo.rewards.guarded import one_line
from videogrpo.rewards.placement import quiet_loading, resolve_device, resolve_dtype

# CLIPScore's rescaling weight w (Hessel et al. 2021, section 3): spreads scores over [0, 2.5].
CLIPSCORE_WEIGHT = 2.5
# Frames scored per video by default: 8 spread evenly cover a 81-frame Wan clip every ~1.4 s at
# 16 fps, which CLIP rewards sample far more densely than their per-frame cost justifies.
DEFAULT_FRAMES = 8


def _features(output: object) -> Tensor:
    """transformers 4 returns the projected embeddings, 5 an output object holding them."""
    return output if isinstance(output, Tensor) else output.pooler_output


class ClipFrameScorer(ABC):
    """Shared part: load the folder, embed frames and prompts, average per-frame scores."""

    component: str  # the one component's name, set by each subclass

    def __init__(
        self,
        path: str,
        frames: int = DEFAULT_FRAMES,
        device: str = "auto",
        dtype: str = "float32",
    ) -> None:
        from transformers import CLIPModel, CLIPProcessor

        folder = Path(path).expanduser()
        key = "reward.options.path"
        if not folder.is_dir():
            raise UserError(f"{key}: folder {str(folder)!r} not found")
        if not (folder / "config.json").is_file():
            raise UserError(
                f"{key}: {folder} has no config.json; save a CLIPModel and its CLIPProcessor "
                "there with save_pretrained"
            )
        if frames < 0:
            raise UserError(f"reward.options.frames: {frames} must be >= 0 (0: every frame)")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device, "float32")
        self.frames = frames
        try:
            with quiet_loading():
                self.processor = CLIPProcessor.from_pretrained(folder)
                model = CLIPModel.from_pretrained(folder, dtype=self.dtype)
        except (OSError, ValueError, TypeError) as error:
            message = f"{key}: cannot load a CLIP model from {folder}: {one_line(error)}"
            raise UserError(message) from error
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.components: tuple[str, ...] = (self.component,)

    @torch.no_grad()
    def cosines(self, videos: Tensor, prompts: list[str]) -> Tensor:
        """cos(prompt, frame) of every sampled frame, (B, K) float32."""
        check_batch(videos, prompts)
        batch, num_frames = videos.shape[:2]
        picked = to_uint8(videos[:, uniform_frame_indices(num_frames, self.frames)])
        images = list(picked.flatten(0, 1).numpy())
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        text = self.processor(text=prompts, padding=True, truncation=True, return_tensors="pt")
        image_embeds = _features(
            self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype))
        )
        text_embeds = _features(
            self.model.get_text_features(
                input_ids=text["input_ids"].to(self.device),
                attention_mask=text["attention_mask"].to(self.device),
            )
        )
        image_embeds = torch.nn.functional.normalize(image_embeds.float(), dim=-1)
        text_embeds = torch.nn.functional.normalize(text_embeds.float(), dim=-1)
        image_embeds = image_embeds.reshape(batch, -1, image_embeds.shape[-1])
        return torch.einsum("bkd,bd->bk", image_embeds, text_embeds).cpu()

    @abstractmethod
    def frame_scores(self, cosines: Tensor) -> Tensor:
        """Per-frame scores from per-frame cosines, both (B, K)."""

    def __call__(self, videos: Tensor, prompts: list[str]) -> dict[str, Tensor]:
        return {self.component: self.frame_scores(self.cosines(videos, prompts)).mean(dim=1)}


class ClipScore(ClipFrameScorer):
    """CLIPScore: 2.5 · max(cos, 0) per frame, averaged over the sampled frames."""

    component = "clipscore"

    def frame_scores(self, cosines: Tensor) -> Tensor:
        return CLIPSCORE_WEIGHT * cosines.clamp(min=0)


class PickScore(ClipFrameScorer):
    """PickScore: the model's learned temperature exp(logit_scale) times cos, per frame."""

    component = "pickscore"

    def frame_scores(self, cosines: Tensor) -> Tensor:
        return self.model.logit_scale.exp().float().cpu() * cosines
