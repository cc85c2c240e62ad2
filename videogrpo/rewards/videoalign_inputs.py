"""VideoAlign's model inputs from frames in memory, in plain torch (no torchvision, no processor).

VideoAlign (KwaiVGI/VideoAlign) reads an mp4, keeps frames at `fps` per second of video
(vision_process.py, after qwen-vl-utils), resizes them bicubically to multiples of 28 within a
pixel budget, and hands them to the transformers-4.45 Qwen2-VL image processor, which rescales,
normalises with CLIP's mean and std and cuts 2×14×14 patches in the order the vision tower's 2×2
merger expects. The transformers-5 processors need torchvision, so this module does each step
itself; tests/fixtures/videoalign_reference.json holds the reference pipeline's output on stated
inputs (recorded by scripts/record_videoalign_reference.py) and the tests compare against it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from videogrpo.errors import UserError

# qwen-vl-utils / VideoAlign vision_process.py constants.
SIZE_FACTOR = 28  # patch 14 × merge 2: frame sides are multiples of this
FRAME_FACTOR = 2  # frame counts are even (the temporal patch holds 2 frames)
MIN_FRAMES = 4  # fps sampling keeps at least this many frames ...
MAX_FRAMES = 768  # ... and at most this many
VIDEO_MIN_PIXELS = 128 * 28 * 28  # smaller frames are enlarged to at least this many pixels
MAX_ASPECT_RATIO = 200
# Qwen2-VL-2B-Instruct's preprocessor_config.json.
PATCH_SIZE = 14
TEMPORAL_PATCH_SIZE = 2
MERGE_SIZE = 2
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _round_by(number: float, factor: int) -> int:
    return round(number / factor) * factor  # Python's round, half to even, as the reference


def _ceil_by(number: float, factor: int) -> int:
    return math.ceil(number / factor) * factor


def _floor_by(number: float, factor: int) -> int:
    return math.floor(number / factor) * factor


def sampled_frame_count(
    num_frames: int, video_fps: float, fps: float | None, fixed_count: int | None
) -> int:
    """How many frames VideoAlign keeps: `fps` per second of video (at least 4), or a fixed
    count when its config sets `num_frames`; always even and at most the clip's length."""
    if fixed_count is not None:
        count = _round_by(fixed_count, FRAME_FACTOR)
    else:
        min_frames = _ceil_by(MIN_FRAMES, FRAME_FACTOR)
        max_frames = _floor_by(min(MAX_FRAMES, num_frames), FRAME_FACTOR)
        count = num_frames / video_fps * fps
        count = _round_by(min(max(count, min_frames), max_frames), FRAME_FACTOR)
    count = min(count, num_frames)
    if not FRAME_FACTOR <= count <= num_frames:
        raise UserError(
            f"VideoAlign needs at least {FRAME_FACTOR} frames per video; got {num_frames}"
        )
    return count


def sampled_frame_indices(num_frames: int, count: int) -> Tensor:
    """Evenly spread from the first frame to the last, rounded (half to even) as the reference."""
    return torch.linspace(0, num_frames - 1, count).round().long()


def resized_size(height: int, width: int, max_pixels: int) -> tuple[int, int]:
    """Sides that are multiples of 28, near the frame's aspect ratio, within the pixel budget.

    Frames above `max_pixels` shrink below it; frames below VIDEO_MIN_PIXELS grow above it (the
    budget is checked first, as in the reference's smart_resize).
    """
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise UserError(f"VideoAlign cannot read frames of aspect ratio above {MAX_ASPECT_RATIO}")
    new_height = max(SIZE_FACTOR, _round_by(height, SIZE_FACTOR))
    new_width = max(SIZE_FACTOR, _round_by(width, SIZE_FACTOR))
    if new_height * new_width > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        new_height = _floor_by(height / beta, SIZE_FACTOR)
        new_width = _floor_by(width / beta, SIZE_FACTOR)
    elif new_height * new_width < VIDEO_MIN_PIXELS:
        beta = math.sqrt(VIDEO_MIN_PIXELS / (height * width))
        new_height = _ceil_by(height * beta, SIZE_FACTOR)
        new_width = _ceil_by(width * beta, SIZE_FACTOR)
    return new_height, new_width


def resize_frames(frames: Tensor, size: tuple[int, int]) -> Tensor:
    """uint8 (T, 3, H, W) → uint8 at `size`: antialiased bicubic in float, clamped, rounded.

    The same arithmetic as torchvision's resize of a uint8 tensor, which the reference uses.
    """
    resized = torch.nn.functional.interpolate(
        frames.float(), size=size, mode="bicubic", align_corners=False, antialias=True
    )
    return resized.clamp_(0, 255).round_().to(torch.uint8)


def normalised_patches(frames: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
    """uint8 (T, 3, H, W) → the vision tower's input (grid_t·grid_h·grid_w, 3·2·14·14) float32
    and its (grid_t, grid_h, grid_w).

    Rescale by 1/255 in float64 then normalise in float32, as the reference's numpy code does,
    so values match to the last bit; the patch order puts each 2×2 merge group's patches next to
    each other, each patch as (channel, time, row, column).
    """
    scaled = (frames.double() * (1 / 255)).float()
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    pixels = (scaled - mean) / std
    remainder = pixels.shape[0] % TEMPORAL_PATCH_SIZE
    if remainder:  # repeat the last frame to fill the last temporal patch
        pixels = torch.cat(
            [pixels, pixels[-1:].expand(TEMPORAL_PATCH_SIZE - remainder, -1, -1, -1)]
        )
    time, channels, height, width = pixels.shape
    grid_t, grid_h, grid_w = time // TEMPORAL_PATCH_SIZE, height // PATCH_SIZE, width // PATCH_SIZE
    patches = pixels.reshape(
        grid_t,
        TEMPORAL_PATCH_SIZE,
        channels,
        grid_h // MERGE_SIZE,
        MERGE_SIZE,
        PATCH_SIZE,
        grid_w // MERGE_SIZE,
        MERGE_SIZE,
        PATCH_SIZE,
    ).permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    flat = patches.reshape(grid_t * grid_h * grid_w, channels * TEMPORAL_PATCH_SIZE * PATCH_SIZE**2)
    return flat, (grid_t, grid_h, grid_w)


@dataclass(frozen=True)
class FrameSettings:
    """The checkpoint's data_config: how many frames and how many pixels the model saw."""

    fps: float | None  # frames kept per second of video (None when num_frames is set)
    num_frames: int | None  # a fixed frame count instead of fps
    max_pixels: int  # pixel budget per frame (max_frame_pixels)


def video_patches(
    video: Tensor, video_fps: float, settings: FrameSettings
) -> tuple[Tensor, tuple[int, int, int]]:
    """One uint8 video (F, H, W, 3) → its vision-tower patches and grid (see above)."""
    num_frames, height, width = video.shape[:3]
    count = sampled_frame_count(num_frames, video_fps, settings.fps, settings.num_frames)
    frames = video[sampled_frame_indices(num_frames, count)].permute(0, 3, 1, 2)
    frames = resize_frames(frames, resized_size(height, width, settings.max_pixels))
    return normalised_patches(frames)


# Qwen2-VL's chat template (its chat_template.json) rendered for one user turn of a video then
# text, with the generation prompt, as VideoAlign's processor.apply_chat_template does.
CHAT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n<|vision_start|>{video}<|vision_end|>{text}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
VIDEO_PAD = "<|video_pad|>"


def chat_text(question: str, video_tokens: int) -> str:
    """The model's text: the chat turn with the video placeholder repeated once per merged
    patch (grid_t·grid_h·grid_w / 4), where the vision tower's outputs will be put."""
    return CHAT.format(video=VIDEO_PAD * video_tokens, text=question)
