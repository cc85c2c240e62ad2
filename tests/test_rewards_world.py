"""The synthetic world's verifiable reward: ground truth near 1, noise near 0, no free floor for an
empty clip, and each component falling with the defect it is meant to see."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from videogrpo.embedded.world.grammar import (
    VOCABULARY,
    all_attributes,
    format_prompt,
    parse_prompt,
    sample_prompts,
)
from videogrpo.embedded.world.render import BACKGROUND_RGB, FRAMES, render_prompts
from videogrpo.errors import UserError
from videogrpo.rewards.base import RewardModel, composite
from videogrpo.rewards.world import WorldReward

reward = WorldReward()
PROMPTS = sample_prompts(48, "all", 0)
# Not the identity and not a reversal (a reversed clip is still smooth motion).
SHUFFLED_FRAMES = [3, 0, 6, 1, 7, 2, 5, 4]
assert sorted(SHUFFLED_FRAMES) == list(range(FRAMES))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tensors are small: on a shared CPU, thread hand-offs cost more than they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def clips() -> torch.Tensor:
    return render_prompts(PROMPTS, 1)


def blur(videos: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of every frame, edges replicated."""
    radius = 4
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    batch, frames, height, width, channels = videos.shape
    planes = videos.permute(0, 1, 4, 2, 3).reshape(-1, 1, height, width)
    planes = F.pad(planes, (radius,) * 4, mode="replicate")
    planes = F.conv2d(planes, kernel.view(1, 1, 1, -1))
    planes = F.conv2d(planes, kernel.view(1, 1, -1, 1))
    return planes.reshape(batch, frames, channels, height, width).permute(0, 1, 3, 4, 2)


def jitter(videos: torch.Tensor, pixels: int, seed: int = 0) -> torch.Tensor:
    """Shift each frame by a random whole-pixel offset in [-pixels, pixels] on both axes."""
    generator = torch.Generator().manual_seed(seed)
    offsets = torch.randint(-pixels, pixels + 1, (*videos.shape[:2], 2), generator=generator)
    out = torch.empty_like(videos)
    for b in range(videos.shape[0]):
        for f in range(videos.shape[1]):
            out[b, f] = videos[b, f].roll(offsets[b, f].tolist(), dims=(0, 1))
    return out


def empty_clips(prompts: list[str]) -> torch.Tensor:
    """The asked background and nothing on it."""
    backgrounds = BACKGROUND_RGB[[parse_prompt(p).index("background") for p in prompts]]
    return backgrounds[:, None, None, None, :].expand(-1, FRAMES, 32, 32, 3).clone()


def with_one_wrong(prompts: list[str], attribute: str) -> list[str]:
    """The same prompts with `attribute` replaced by the next word of its vocabulary."""
    words = VOCABULARY[attribute]
    changed = []
    for prompt in prompts:
        attributes = parse_prompt(prompt)
        wrong = words[(words.index(getattr(attributes, attribute)) + 1) % len(words)]
        changed.append(format_prompt(dataclasses.replace(attributes, **{attribute: wrong})))
    return changed


def test_speaks_the_reward_protocol(clips):
    assert isinstance(reward, RewardModel)
    scores = reward(clips, PROMPTS)
    assert tuple(scores) == reward.components == ("vq", "mq", "ta")
    for value in scores.values():
        assert value.shape == (len(PROMPTS),) and value.dtype == torch.float32
        assert ((value >= 0) & (value <= 1)).all()


def test_ground_truth_scores_near_one_on_every_prompt():
    prompts = [format_prompt(a) for a in all_attributes()] * 2
    scores = reward(render_prompts(prompts, 5), prompts)
    for name, value in scores.items():
        assert value.min() >= 0.95, name


def test_uniform_noise_scores_near_zero():
    noise = torch.rand(len(PROMPTS), FRAMES, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    for name, value in reward(noise, PROMPTS).items():
        assert value.max() <= 0.1, name


def test_empty_clip_gets_no_free_floor():
    scores = reward(empty_clips(PROMPTS), PROMPTS)
    assert scores["mq"].max() <= 0.2
    assert scores["ta"].max() <= 0.2
    assert composite(scores).max() <= 0.35
    # Clean but empty is not full visual quality either.
    assert scores["vq"].max() < 0.95


def test_vq_falls_monotonically_with_pixel_noise(clips):
    noise = torch.randn(clips.shape, generator=torch.Generator().manual_seed(0))
    levels = [0.0, 0.02, 0.05, 0.1, 0.2]
    vq = torch.stack([reward((clips + s * noise).clamp(0, 1), PROMPTS)["vq"] for s in levels])
    assert (vq.diff(dim=0) < 0).all()


def test_vq_falls_monotonically_with_blur(clips):
    vq = [reward(clips, PROMPTS)["vq"]]
    vq += [reward(blur(clips, sigma), PROMPTS)["vq"] for sigma in (0.5, 1.0, 1.5, 2.0)]
    assert (torch.stack(vq).diff(dim=0) < 0).all()


def test_vq_ignores_the_prompt(clips):
    degraded = blur(clips, 0.7)
    other_prompts = sample_prompts(len(PROMPTS), "all", 99)
    assert torch.equal(reward(degraded, PROMPTS)["vq"], reward(degraded, other_prompts)["vq"])


def test_mq_falls_when_frames_are_shuffled(clips):
    mq = reward(clips[:, SHUFFLED_FRAMES], PROMPTS)["mq"]
    assert mq.max() < 0.5


def test_mq_falls_with_position_jitter(clips):
    before = reward(clips, PROMPTS)["mq"]
    after = reward(jitter(clips, 2), PROMPTS)["mq"]
    assert (after <= before).all()
    assert after.mean() < 0.5


def test_mq_falls_with_flicker(clips):
    every_other_frame = (torch.arange(FRAMES) % 2).view(1, -1, 1, 1, 1)
    flickering = (clips + 0.1 * every_other_frame).clamp(0, 1)
    assert reward(flickering, PROMPTS)["mq"].max() < 0.5


@pytest.mark.parametrize("attribute", list(VOCABULARY))
def test_ta_falls_below_0_6_when_one_attribute_is_wrong(clips, attribute):
    wrong_prompts = with_one_wrong(PROMPTS, attribute)
    assert reward(clips, wrong_prompts)["ta"].max() < 0.6
    parts = reward.attribute_scores(clips, wrong_prompts)
    assert parts[attribute].max() < 0.1
    for name, value in parts.items():
        if name != attribute:
            assert value.min() > 0.9, name


def test_ta_is_graded_by_how_many_attributes_are_right(clips):
    prompts, ta = PROMPTS, [reward(clips, PROMPTS)["ta"]]
    for attribute in ("colour", "shape", "direction"):
        prompts = with_one_wrong(prompts, attribute)
        ta.append(reward(clips, prompts)["ta"])
    assert (torch.stack(ta).diff(dim=0) < 0).all()


def test_slightly_imperfect_samples_score_between_wrong_and_right(clips):
    """A tiny model's samples are a little blurry, noisy, off-colour and wobbly: graded."""
    generator = torch.Generator().manual_seed(0)
    imperfect = blur(clips, 0.7) + 0.03 * torch.randn(clips.shape, generator=generator)
    imperfect = (imperfect * torch.tensor([0.9, 1.0, 0.95])).clamp(0, 1)
    imperfect[:, FRAMES // 2] = imperfect[:, FRAMES // 2].roll(1, dims=1)  # one frame off by 1 px
    for name, value in reward(imperfect, PROMPTS).items():
        assert 0.3 < value.mean() < 0.95, name


def test_coherent_object_sees_one_moving_object(clips):
    assert reward.coherent_object(clips).all()
    assert not reward.coherent_object(empty_clips(PROMPTS)).any()
    assert not reward.coherent_object(torch.rand_like(clips)).any()
    standing_still = clips[:, :1].expand_as(clips)
    assert not reward.coherent_object(standing_still).any()


def test_rejects_prompts_outside_the_grammar_and_bad_shapes(clips):
    with pytest.raises(UserError, match="red, green, blue"):
        reward(clips[:1], ["a purple blob"])
    with pytest.raises(UserError, match="videos but"):
        reward(clips[:2], PROMPTS[:1])
    with pytest.raises(UserError, match=r"\(B, F, H, W, 3\)"):
        reward(clips[0], PROMPTS[:1])


def test_accepts_other_dtypes_and_clamps_overshoot(clips):
    reference = reward(clips[:4], PROMPTS[:4])
    overshoot = (clips[:4].double() - 0.5) * 1.1 + 0.5
    untouched = overshoot.clone()
    scores = reward(overshoot, PROMPTS[:4])
    assert torch.equal(overshoot, untouched)
    for name, value in scores.items():
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, reference[name], atol=0.02, rtol=0)


def test_a_nan_clip_scores_nan_without_touching_its_neighbours(clips):
    broken = clips[:3].clone()
    broken[1, 2, 3, 4, 0] = float("nan")
    scores = reward(broken, PROMPTS[:3])
    for value in scores.values():
        assert value[1].isnan() and not value[[0, 2]].isnan().any()
