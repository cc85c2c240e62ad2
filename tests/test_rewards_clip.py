"""CLIPScore and PickScore on a tiny random CLIPModel loaded by path, checked by hand.

The hand computation runs the model's towers one frame and one prompt at a time and does the
cosine itself, so a reward that pairs a frame with another video's prompt, skips the
normalisation, scores the wrong frames or averages wrongly cannot match it.
"""

from __future__ import annotations

import pytest
import torch
from tiny_rewards import build_tiny_clip

from videogrpo.errors import UserError
from videogrpo.rewards.clip import CLIPSCORE_WEIGHT, ClipScore, PickScore
from videogrpo.rewards.frames import to_uint8

PROMPTS = ["a red circle moves left", "a blue square"]
# Float32 towers on a batch versus one image at a time: cosines agree to ~1e-7 (they are sums
# of 8 products of unit-vector entries); 1e-5 leaves room for CPUs that block matmuls otherwise.
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def videos():
    generator = torch.Generator().manual_seed(3)
    return torch.rand(2, 5, 24, 40, 3, generator=generator)


def hand_cosines(clip_dir, videos, prompts, frame_indices) -> torch.Tensor:
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(clip_dir).eval()
    processor = CLIPProcessor.from_pretrained(clip_dir)
    rows = []
    with torch.no_grad():
        for video, prompt in zip(videos, prompts, strict=True):
            ids = processor(text=[prompt], return_tensors="pt")["input_ids"]
            text = model.text_projection(model.text_model(input_ids=ids).pooler_output)[0]
            row = []
            for index in frame_indices:
                frame = to_uint8(video[index]).numpy()
                pixels = processor(images=[frame], return_tensors="pt")["pixel_values"]
                image = model.visual_projection(model.vision_model(pixels).pooler_output)[0]
                row.append(torch.dot(image, text) / (image.norm() * text.norm()))
            rows.append(torch.stack(row))
    return torch.stack(rows)


def test_pickscore_is_the_learned_temperature_times_the_mean_frame_cosine(clip_dir, videos):
    reward = PickScore(str(clip_dir), frames=0, device="cpu")
    cosines = hand_cosines(clip_dir, videos, PROMPTS, range(videos.shape[1]))
    scale = reward.model.logit_scale.exp().item()
    expected = (scale * cosines).mean(dim=1)
    scores = reward(videos, PROMPTS)
    assert reward.components == ("pickscore",)
    torch.testing.assert_close(scores["pickscore"], expected, rtol=0, atol=scale * TOLERANCE)


def test_clipscore_samples_frames_evenly_from_first_to_last(clip_dir, videos):
    # 2 of 5 frames: the first and the last, so changing frames 1-3 must change nothing.
    reward = ClipScore(str(clip_dir), frames=2, device="cpu")
    cosines = hand_cosines(clip_dir, videos, PROMPTS, [0, 4])
    expected = (CLIPSCORE_WEIGHT * cosines.clamp(min=0)).mean(dim=1)
    atol = CLIPSCORE_WEIGHT * TOLERANCE
    torch.testing.assert_close(reward(videos, PROMPTS)["clipscore"], expected, rtol=0, atol=atol)
    middle_changed = videos.clone()
    middle_changed[:, 1:4] = 1 - middle_changed[:, 1:4]
    torch.testing.assert_close(
        reward(middle_changed, PROMPTS)["clipscore"], expected, rtol=0, atol=atol
    )


def test_each_video_is_scored_against_its_own_prompt(clip_dir, videos):
    reward = PickScore(str(clip_dir), frames=3, device="cpu")
    atol = reward.model.logit_scale.exp().item() * TOLERANCE
    straight = reward(videos, PROMPTS)["pickscore"]
    swapped = reward(videos.flip(0), PROMPTS[::-1])["pickscore"]
    torch.testing.assert_close(swapped, straight.flip(0), rtol=0, atol=atol)
    assert not torch.allclose(reward(videos, PROMPTS[::-1])["pickscore"], straight, atol=atol)


def test_a_folder_without_its_config_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        PickScore(str(tmp_path), device="cpu")
    with pytest.raises(UserError, match="not found"):
        ClipScore(str(tmp_path / "missing"), device="cpu")
