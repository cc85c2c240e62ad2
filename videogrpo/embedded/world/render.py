"""Renderer of the synthetic world's ground-truth clips: one flat-coloured shape moving in a line.

A clip is a float32 tensor (B, F, H, W, 3) in [0, 1], channels last: the reward protocol's layout.
Edges are crisp (no anti-aliasing) and positions are whole pixels, so every pixel of a
ground-truth clip is exactly a palette colour and the object's area never changes; the rewards
rely on both. Rendering is batched tensor code and deterministic given a torch.Generator.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from videogrpo.embedded.world.grammar import VOCABULARY, Attributes, parse_prompt
from videogrpo.errors import UserError

# 8 frames of 32 x 32: small enough for a CPU model, long enough to show motion at two speeds.
FRAMES = 8
HEIGHT = 32
WIDTH = 32

# Side of the object's bounding box in pixels. Odd, so shapes have a centre pixel; 9 leaves room
# for the fast object's 14-pixel path inside 32 pixels.
OBJECT_SIZE = 9

# RGB of every word that names a colour. Object colours are corners of the RGB cube; the
# backgrounds are black and mid-gray, at least 0.87 away from every object colour.
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "cyan": (0.0, 1.0, 1.0),
    "magenta": (1.0, 0.0, 1.0),
    "black": (0.0, 0.0, 0.0),
    "gray": (0.5, 0.5, 0.5),
}

# The path's box is centred in the frame and then shifted by up to this many whole pixels each way
# (clamped so the object stays inside): 25 start positions. A uniform start over the whole frame
# (up to 384 positions) left the tiny model unable to keep one object across frames after 10
# minutes of pretraining; a little jitter keeps samples varied without making the world a lottery.
START_JITTER = 2

# Pixels per frame for each speed word: 1 and 2 are clearly different yet keep the fast path
# (2 * (FRAMES - 1) = 14 px plus the object) inside the frame.
SPEED_PX_PER_FRAME: dict[str, int] = {"slowly": 1, "quickly": 2}

# Unit step (dx, dy) per direction word; image rows grow downwards, so "up" is dy = -1.
DIRECTION_STEP: dict[str, tuple[int, int]] = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
}

# The same tables as tensors in VOCABULARY order, indexed by Attributes.index(...).
OBJECT_RGB = torch.tensor([PALETTE[w] for w in VOCABULARY["colour"]])
BACKGROUND_RGB = torch.tensor([PALETTE[w] for w in VOCABULARY["background"]])
SPEED_TABLE = torch.tensor([SPEED_PX_PER_FRAME[w] for w in VOCABULARY["speed"]])
DIRECTION_TABLE = torch.tensor([DIRECTION_STEP[w] for w in VOCABULARY["direction"]])


def _shape_templates(size: int) -> dict[str, torch.Tensor]:
    """Boolean (size, size) mask of each shape, tested at pixel centres."""
    centre = (size - 1) / 2
    rows = torch.arange(size, dtype=torch.float32)[:, None]
    cols = torch.arange(size, dtype=torch.float32)[None, :]
    square = torch.ones(size, size, dtype=torch.bool)
    circle = (rows - centre) ** 2 + (cols - centre) ** 2 <= (size / 2) ** 2
    # Apex at the top centre, full-width base on the bottom row: half-width grows 1/2 px per row.
    triangle = (cols - centre).abs() <= (rows + 0.5) / 2
    return {"square": square, "circle": circle, "triangle": triangle}


# (shapes, OBJECT_SIZE, OBJECT_SIZE) in VOCABULARY order.
SHAPE_TEMPLATES = torch.stack([_shape_templates(OBJECT_SIZE)[w] for w in VOCABULARY["shape"]])


def _indices(attributes: Sequence[Attributes], attribute: str) -> torch.Tensor:
    return torch.tensor([a.index(attribute) for a in attributes], dtype=torch.long)


def render(
    attributes: Sequence[Attributes],
    generator: torch.Generator | None = None,
    *,
    frames: int = FRAMES,
    height: int = HEIGHT,
    width: int = WIDTH,
) -> torch.Tensor:
    """Ground-truth clips (B, F, H, W, 3) for these attributes.

    The path is centred in the frame, then shifted by a uniform whole-pixel jitter of at most
    START_JITTER each way, clamped so the object stays fully inside for every frame; the jitter is
    the only randomness, drawn from `generator`.
    """
    step = DIRECTION_TABLE[_indices(attributes, "direction")]
    velocity = step * SPEED_TABLE[_indices(attributes, "speed")].unsqueeze(1)  # (B, 2): dx, dy
    travel = velocity.abs() * (frames - 1)
    room = torch.tensor([width, height]) - OBJECT_SIZE - travel
    if (room < 0).any():
        raise UserError(
            f"a {frames}-frame path of a {OBJECT_SIZE}-pixel object does not fit in "
            f"{height}x{width}; use more pixels or fewer frames"
        )
    span = 2 * START_JITTER + 1
    jitter = (torch.rand(room.shape, generator=generator) * span).floor().long() - START_JITTER
    offset = (room // 2 + jitter).clamp(torch.zeros_like(room), room)
    start = offset + torch.where(velocity < 0, travel, torch.zeros_like(travel))
    time = torch.arange(frames)
    top_left = start[:, None, :] + velocity[:, None, :] * time[None, :, None]  # (B, F, 2)

    # Each pixel's position inside the object's box, looked up in the shape's template.
    cols = torch.arange(width)[None, None, None, :] - top_left[..., 0, None, None]  # (B, F, 1, W)
    rows = torch.arange(height)[None, None, :, None] - top_left[..., 1, None, None]  # (B, F, H, 1)
    inside_box = (cols >= 0) & (cols < OBJECT_SIZE) & (rows >= 0) & (rows < OBJECT_SIZE)
    shape = _indices(attributes, "shape")[:, None, None, None]
    in_shape = SHAPE_TEMPLATES[
        shape, rows.clamp(0, OBJECT_SIZE - 1), cols.clamp(0, OBJECT_SIZE - 1)
    ]  # (B, F, H, W)
    mask = (inside_box & in_shape).unsqueeze(-1).float()

    background = BACKGROUND_RGB[_indices(attributes, "background")][:, None, None, None, :]
    colour = OBJECT_RGB[_indices(attributes, "colour")][:, None, None, None, :]
    return background + mask * (colour - background)


def render_prompts(
    prompts: Sequence[str], generator: torch.Generator | int | None = None
) -> torch.Tensor:
    """Ground-truth clips for canonical prompts; an int generator is a seed."""
    if isinstance(generator, int):
        generator = torch.Generator().manual_seed(generator)
    return render([parse_prompt(p) for p in prompts], generator)
