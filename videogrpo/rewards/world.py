"""Verifiable rewards of the synthetic world on VideoAlign's three axes: vq, mq, ta in [0, 1].

All three read a clip through one soft segmentation: the background is the clip's median colour
and a pixel belongs to the object in proportion to its colour distance from it. From that soft
mask come each frame's area, centroid, colour and shape moments, all plain tensor sums, so a whole
batch is scored at once. Scores are products of smooth tolerances, so a partly right sample lands
between wrong and right (GRPO needs that signal), and mq and ta are multiplied by how much of a
plausible object the clip holds, so a clip with nothing in it earns nothing (no free floor).
docs/world.md explains each formula and the reason for each constant.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from videogrpo.embedded.world.grammar import Attributes, parse_prompt
from videogrpo.embedded.world.render import (
    BACKGROUND_RGB,
    DIRECTION_TABLE,
    OBJECT_RGB,
    OBJECT_SIZE,
    SHAPE_TEMPLATES,
    SPEED_TABLE,
)
from videogrpo.errors import UserError

COMPONENTS = ("vq", "mq", "ta")
TA_ATTRIBUTES = ("background", "colour", "shape", "direction", "speed")

# Guards divisions by an empty mask or a motionless clip; far below any real value.
EPS = 1e-6

# --- Segmentation ---------------------------------------------------------------------------
# The background is the median of every BACKGROUND_SAMPLE_STRIDE-th pixel (rows and columns):
# the object covers at most 9 of those 64 points per frame, so the median is background, and
# sampling keeps the median (a sort) cheap.
BACKGROUND_SAMPLE_STRIDE = 4
# A pixel starts to count as object at this RGB distance from the background and counts fully
# at the next: above the noise of a decent sample, below the smallest object-background
# distance in the palette (0.87, a primary colour on gray), so a blended edge counts in part.
FOREGROUND_START = 0.3
FOREGROUND_FULL = 0.7

# --- Objectness: one object of the world's size in each frame ---------------------------------
# Soft area (pixels) below which a frame holds less than a whole object: half the triangle (41).
MIN_OBJECT_AREA = 20.0
# Soft area above which a frame holds more than one object: twice the square (81).
MAX_OBJECT_AREA = 2.0 * OBJECT_SIZE**2
# Compactness, area / (2 pi trace(covariance)), is 1 for a disc, 0.97 for the square and 0.81
# for the triangle; scattered pixels or separate blobs score far lower.
COMPACTNESS_FULL = 0.75

# --- vq ---------------------------------------------------------------------------------------
# RGB distance from the nearer of the clip's two colours (background, object) at which a
# pixel's cleanliness falls to 1/e.
CLEAN_TOLERANCE = 0.1
# Sharpness is edge_width ** -SHARPNESS_EXPONENT; the square root lets a 4-pixel-wide edge (a
# 1-pixel Gaussian blur) halve vq rather than quarter it, keeping blurry samples graded.
SHARPNESS_EXPONENT = 0.5
# vq of a clean clip with no object: a blank canvas is clean but shows nothing.
EMPTY_CLIP_VQ = 0.5

# --- mq: deviations at which each factor falls to 1/e -----------------------------------------
# Coefficient of variation of the object's area across frames.
AREA_VARIATION_TOLERANCE = 0.2
# RMS RGB distance of each frame's object colour from the clip's.
COLOUR_VARIATION_TOLERANCE = 0.15
# RMS second difference of the centroid in px/frame^2 (the world's motion has none): a jerk as
# large as the fast speed.
JERK_TOLERANCE = 2.0
# Mean absolute change per frame of background brightness (flicker, temporal noise): a 5 %
# brightness change from one frame to the next is visible flicker.
FLICKER_TOLERANCE = 0.05

# --- ta ---------------------------------------------------------------------------------------
# RGB distances at which the background / object colour match falls to 1/e; the nearest wrong
# choices are 0.87 (background) and 1.0 (object) away, where the match is about 0.
BACKGROUND_TOLERANCE = 0.3
COLOUR_TOLERANCE = 0.3
# Per-feature tolerance of the shape match (fill, vertical skew, squareness; see
# _shape_features); the nearest wrong shape is at least 2.1 tolerances away (match <= 0.01).
SHAPE_FEATURE_TOLERANCE = torch.tensor([0.12, 0.3, 0.12])
# Speed below which a direction cannot be told from drift: half the slow speed, px/frame.
MIN_DIRECTED_SPEED = 0.5
# Speed error (px/frame) at which the speed match falls to 1/e; slow and fast differ by 1.
SPEED_TOLERANCE = 0.4
# Share of ta lost by one fully wrong attribute: each wrong attribute halves ta, so a sample
# with more attributes right always scores higher.
WRONG_ATTRIBUTE_PENALTY = 0.5

# --- coherent_object ---------------------------------------------------------------------------
# Every frame must reach this fraction of full compactness (as a hard pass / fail).
COHERENT_COMPACTNESS = 0.5 * COMPACTNESS_FULL


def _tolerance(deviation: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """exp(-(deviation / scale)^2): 1 when exact, 1/e at one scale, smooth everywhere."""
    return torch.exp(-((deviation / scale) ** 2))


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor, dim: int) -> torch.Tensor:
    return (values * weights).sum(dim) / (weights.sum(dim) + EPS)


@dataclass
class _Moments:
    """Soft-mask moments per frame: area, centroid (x, y), compactness, shape features."""

    area: torch.Tensor
    centroid: torch.Tensor
    compactness: torch.Tensor
    shape_features: torch.Tensor


def _moments(mask: torch.Tensor) -> _Moments:
    """Moments of (..., H, W) soft masks, from row and column sums (cheap, exact).

    Shape features tell the world's shapes apart without knowing where the object is: fill
    (area / OBJECT_SIZE^2) is 1.0 for the square, 0.85 for the circle and 0.51 for the triangle;
    vertical skew (third moment in y) marks the triangle's wide base; squareness,
    mu22 / sqrt(mu40 mu04), is 0.57 for the square's flat sides and 0.36 for the circle.
    """
    height, width = mask.shape[-2:]
    xs = torch.arange(width, dtype=mask.dtype)
    ys = torch.arange(height, dtype=mask.dtype)
    column_mass = mask.sum(-2)
    row_mass = mask.sum(-1)
    area = column_mass.sum(-1)
    safe_area = area + EPS
    centroid = torch.stack([column_mass @ xs, row_mass @ ys], -1) / safe_area[..., None]
    dx = xs - centroid[..., :1]
    dy = ys - centroid[..., 1:]

    def along_x(power: int) -> torch.Tensor:
        return (column_mass * dx**power).sum(-1) / safe_area

    def along_y(power: int) -> torch.Tensor:
        return (row_mass * dy**power).sum(-1) / safe_area

    m22 = ((mask @ dx.square().unsqueeze(-1)).squeeze(-1) * dy.square()).sum(-1) / safe_area
    fill = area / OBJECT_SIZE**2
    skew = along_y(3) / (along_y(2) ** 1.5 + EPS)
    squareness = m22 / ((along_x(4) * along_y(4)).sqrt() + EPS)
    return _Moments(
        area=area,
        centroid=centroid,
        compactness=area / (2 * torch.pi * (along_x(2) + along_y(2)) + EPS),
        shape_features=torch.stack([fill, skew, squareness], -1),
    )


SHAPE_FEATURES = _moments(SHAPE_TEMPLATES.float()).shape_features  # (shapes, 3), exact shapes


@dataclass
class _Track:
    """What the soft segmentation sees in B clips of F frames."""

    planes: torch.Tensor  # (B, F, 3, H, W) the clip, channel planes
    background: torch.Tensor  # (B, 3) median colour
    background_distance: torch.Tensor  # (B, F, H, W) RGB distance from the background
    mask: torch.Tensor  # (B, F, H, W) object membership in [0, 1]
    moments: _Moments  # per frame, (B, F)
    frame_colour: torch.Tensor  # (B, F, 3) object colour of each frame
    clip_colour: torch.Tensor  # (B, 3) object colour over the clip, empty frames left out
    presence: torch.Tensor  # (B, F) how much of a whole object each frame holds
    objectness: torch.Tensor  # (B,) mean over frames of presence x plausible size x compactness
    velocity: torch.Tensor  # (B, 2) least-squares centroid velocity, px/frame


def _distance(planes: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """RGB distance of (B, F, 3, H, W) pixels from one colour per clip (B, 3) or frame (B, F, 3)."""
    if colour.ndim == 2:
        colour = colour[:, None]
    return (planes - colour[..., None, None]).square().sum(2).sqrt()


def _track(planes: torch.Tensor) -> _Track:
    stride = BACKGROUND_SAMPLE_STRIDE
    samples = planes[..., ::stride, ::stride].transpose(1, 2).flatten(2)
    background = samples.median(dim=-1).values
    background_distance = _distance(planes, background)
    foreground = background_distance - FOREGROUND_START
    mask = foreground.div_(FOREGROUND_FULL - FOREGROUND_START).clamp_(0, 1)
    moments = _moments(mask)

    # Squared weights favour the object's interior over blended edge pixels.
    interior = mask.square().flatten(2).unsqueeze(-2)  # (B, F, 1, H*W)
    colour_sums = (interior @ planes.flatten(3).transpose(-1, -2)).squeeze(-2)
    frame_colour = colour_sums / (interior.sum(-1) + EPS)

    area = moments.area
    presence = (area / MIN_OBJECT_AREA).clamp(max=1)
    plausible_size = (MAX_OBJECT_AREA / (area + EPS)).clamp(max=1)
    compact = (moments.compactness / COMPACTNESS_FULL).clamp(max=1)
    objectness = (presence * plausible_size * compact).mean(1)
    clip_colour = _weighted_mean(frame_colour, presence.unsqueeze(-1), 1)

    # Weighted least-squares slope of the centroid over time; empty frames weigh nothing.
    time = torch.arange(planes.shape[1], dtype=planes.dtype)
    time = (time - _weighted_mean(time, presence, 1)[:, None]).unsqueeze(-1)  # (B, F, 1)
    weight = presence.unsqueeze(-1)
    centred = moments.centroid - _weighted_mean(moments.centroid, weight, 1)[:, None]
    velocity = (weight * time * centred).sum(1) / ((weight * time.square()).sum(1) + EPS)
    return _Track(
        planes=planes,
        background=background,
        background_distance=background_distance,
        mask=mask,
        moments=moments,
        frame_colour=frame_colour,
        clip_colour=clip_colour,
        presence=presence,
        objectness=objectness,
        velocity=velocity,
    )


def _visual_quality(track: _Track) -> torch.Tensor:
    """Clean pixels x crisp edges, discounted when there is nothing to look at."""
    # Clean: every pixel is one of the clip's two flat colours, background or object.
    object_distance = _distance(track.planes, track.frame_colour)
    nearest = torch.minimum(track.background_distance, object_distance)
    cleanliness = _tolerance(nearest, CLEAN_TOLERANCE).mean((1, 2, 3))

    # Crisp: an edge is one jump, so consecutive brightness differences are uncorrelated. Blur
    # spreads an edge over w same-signed steps, whose lag-1 correlation is 1 - 1/w: 1 / (1 -
    # correlation) is the edge width in pixels.
    brightness = track.planes.sum(2)
    correlation = 0.0
    energy = 0.0
    for axis in (-1, -2):
        step = brightness.diff(dim=axis)
        length = step.shape[axis] - 1
        neighbours = step.narrow(axis, 1, length) * step.narrow(axis, 0, length)
        correlation = correlation + neighbours.sum((1, 2, 3))
        energy = energy + step.square().sum((1, 2, 3))
    inverse_edge_width = (1 - correlation / (energy + EPS)).clamp(0, 1)
    sharpness = inverse_edge_width**SHARPNESS_EXPONENT

    content = EMPTY_CLIP_VQ + (1 - EMPTY_CLIP_VQ) * track.presence.mean(1)
    return cleanliness * sharpness * content


def _motion_quality(track: _Track) -> torch.Tensor:
    """One object that keeps its size and colour and moves without jerks on a steady background."""
    presence = track.presence
    area = track.moments.area
    mean_area = _weighted_mean(area, presence, 1)
    area_spread = _weighted_mean((area - mean_area[:, None]).square(), presence, 1).sqrt()
    area_variation = area_spread / (mean_area + EPS)

    colour_offset = (track.frame_colour - track.clip_colour[:, None]).square().sum(-1)
    colour_variation = _weighted_mean(colour_offset, presence, 1).sqrt()

    centroid = track.moments.centroid
    jerk = (centroid[:, 2:] - 2 * centroid[:, 1:-1] + centroid[:, :-2]).square().sum(-1)
    all_three_present = presence[:, 2:] * presence[:, 1:-1] * presence[:, :-2]
    jerkiness = _weighted_mean(jerk, all_three_present, 1).sqrt()

    brightness = track.planes.mean(2)
    change = brightness.diff(dim=1).abs()
    background_in_both = (1 - track.mask[:, 1:]) * (1 - track.mask[:, :-1])
    flicker = _weighted_mean(change.flatten(1), background_in_both.flatten(1), 1)

    return (
        track.objectness
        * _tolerance(area_variation, AREA_VARIATION_TOLERANCE)
        * _tolerance(colour_variation, COLOUR_VARIATION_TOLERANCE)
        * _tolerance(jerkiness, JERK_TOLERANCE)
        * _tolerance(flicker, FLICKER_TOLERANCE)
    )


def _attribute_scores(track: _Track, attributes: list[Attributes]) -> dict[str, torch.Tensor]:
    """How well each clip shows each attribute its prompt asks for, each in [0, 1]."""

    def asked(name: str) -> torch.Tensor:
        return torch.tensor([a.index(name) for a in attributes])

    background_error = (track.background - BACKGROUND_RGB[asked("background")]).norm(dim=-1)
    colour_error = (track.clip_colour - OBJECT_RGB[asked("colour")]).norm(dim=-1)
    features = _weighted_mean(track.moments.shape_features, track.presence.unsqueeze(-1), 1)
    feature_error = (features - SHAPE_FEATURES[asked("shape")]) / SHAPE_FEATURE_TOLERANCE

    # Direction: the share of squared speed along the asked direction, times whether the object
    # moves that way fast enough to tell from drift.
    velocity = track.velocity
    along = (velocity * DIRECTION_TABLE[asked("direction")]).sum(-1)
    speed = velocity.norm(dim=-1)
    share_along = along.clamp(min=0).square() / (speed.square() + EPS)
    return {
        "background": _tolerance(background_error, BACKGROUND_TOLERANCE),
        "colour": _tolerance(colour_error, COLOUR_TOLERANCE),
        "shape": torch.exp(-feature_error.square().sum(-1)),
        "direction": share_along * (along / MIN_DIRECTED_SPEED).clamp(0, 1),
        "speed": _tolerance(speed - SPEED_TABLE[asked("speed")], SPEED_TOLERANCE),
    }


def _text_alignment(track: _Track, scores: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each wrong attribute halves the score; no plausible object, no score."""
    alignment = track.objectness
    for name in TA_ATTRIBUTES:
        alignment = alignment * (1 - WRONG_ATTRIBUTE_PENALTY * (1 - scores[name]))
    return alignment


def _planes(videos: torch.Tensor, prompts: list[str] | None = None) -> torch.Tensor:
    """The clips as CPU float32 channel planes (B, F, 3, H, W) in [0, 1], after checking them.

    Channel planes make every per-channel operation a contiguous pass; the copy is always fresh,
    so clamping in place never touches the caller's tensor.
    """
    if videos.ndim != 5 or videos.shape[-1] != 3:
        raise UserError(f"videos must be (B, F, H, W, 3) in [0, 1]; got {tuple(videos.shape)}")
    if videos.shape[1] < 3:
        raise UserError(f"motion needs at least 3 frames to judge; got {videos.shape[1]}")
    if prompts is not None and len(prompts) != videos.shape[0]:
        raise UserError(f"got {videos.shape[0]} videos but {len(prompts)} prompts")
    planes = videos.detach().to("cpu", torch.float32).permute(0, 1, 4, 2, 3)
    # Generators overshoot [0, 1] a little; the world's colours all lie inside it.
    return planes.clone(memory_format=torch.contiguous_format).clamp_(0, 1)


class WorldReward:
    """The synthetic world's verifiable reward: vq, mq, ta in [0, 1] per clip.

    vq ignores the prompt; mq reads only the clip; ta checks background, colour, shape,
    direction and speed against the prompt, which must be in the world's grammar. Clips may be
    on any device and dtype; scores come back on the CPU, NaN where a clip holds NaN.
    """

    components: tuple[str, ...] = COMPONENTS

    @torch.no_grad()
    def __call__(self, videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        attributes = [parse_prompt(p) for p in prompts]
        track = _track(_planes(videos, prompts))
        return {
            "vq": _visual_quality(track),
            "mq": _motion_quality(track),
            "ta": _text_alignment(track, _attribute_scores(track, attributes)),
        }

    def check_prompts(self, prompts: list[str]) -> None:
        """Scores exist only for the world's grammar: a bad prompt is a UserError up front."""
        for prompt in dict.fromkeys(prompts):
            parse_prompt(prompt)

    def diagnostics(self, videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Per clip, for eval: which asked-for attribute it misses, and whether one object moves."""
        scores = {f"attribute_{k}": v for k, v in self.attribute_scores(videos, prompts).items()}
        scores["coherent_fraction"] = self.coherent_object(videos).float()
        return scores

    @torch.no_grad()
    def attribute_scores(self, videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        """The per-attribute matches behind ta: background, colour, shape, direction, speed."""
        attributes = [parse_prompt(p) for p in prompts]
        return _attribute_scores(_track(_planes(videos, prompts)), attributes)

    @torch.no_grad()
    def coherent_object(self, videos: torch.Tensor) -> torch.Tensor:
        """Per clip, whether one compact object of the world's size is in every frame and moves."""
        track = _track(_planes(videos))
        area = track.moments.area
        in_every_frame = (
            (area >= MIN_OBJECT_AREA)
            & (area <= MAX_OBJECT_AREA)
            & (track.moments.compactness >= COHERENT_COMPACTNESS)
        ).all(1)
        return in_every_frame & (track.velocity.norm(dim=-1) >= MIN_DIRECTED_SPEED)
