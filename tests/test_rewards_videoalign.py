"""VideoAlign on a tiny random VideoReward checkpoint, against VideoAlign's own code.

tests/fixtures/videoalign_reference.json was recorded by scripts/record_videoalign_reference.py
with the reference (KwaiVGI/VideoAlign on transformers 4.45 and torchvision) on the stated videos
and the tiny checkpoint of tiny_rewards.py, which is built here the same way, number for number.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tiny_rewards import (
    VIDEOALIGN_FPS,
    VIDEOALIGN_MAX_PIXELS,
    build_tiny_videoreward,
    videoalign_score_inputs,
    videoalign_test_videos,
)

from videogrpo.errors import UserError
from videogrpo.rewards.videoalign import COMPONENTS, SCORES, VideoAlign, question
from videogrpo.rewards.videoalign_inputs import (
    CLIP_STD,
    FrameSettings,
    chat_text,
    resize_frames,
    resized_size,
    sampled_frame_count,
    sampled_frame_indices,
    video_patches,
)

REFERENCE = json.loads(
    (Path(__file__).parent / "fixtures" / "videoalign_reference.json").read_text()
)
SETTINGS = FrameSettings(fps=VIDEOALIGN_FPS, num_frames=None, max_pixels=VIDEOALIGN_MAX_PIXELS)
# One 8-bit level of one pixel moves a normalised value by 1 / (255 · std) <= 0.0151. The values
# match exactly on the machine that recorded them; a CPU whose bicubic arithmetic rounds one
# pixel the other way at an exact .5 may differ by that much, an error of layout by far more.
ONE_LEVEL = 1 / (255 * min(CLIP_STD))
# Scores of a 1-layer float32 model through two attention kernels and batch layouts: recorded
# differences are below 5e-7; 1e-5 is still 100× below the spread between the test videos.
SCORE_TOLERANCE = 1e-5


def checksum_weights(count: int) -> torch.Tensor:
    return torch.sin(torch.arange(1, count + 1, dtype=torch.float64) * 0.7)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("videoreward")
    full, base = build_tiny_videoreward(root, "full")
    lora, _ = build_tiny_videoreward(root, "lora")
    return {"full": full, "lora": lora, "base": base}


@pytest.fixture(scope="module")
def scored_batch():
    videos, prompts, fps = videoalign_score_inputs()
    return torch.stack(videos).float() / 255, prompts, fps


@pytest.mark.parametrize("name", [name for name, _, _ in videoalign_test_videos()])
def test_torch_preprocessing_equals_the_reference_processor(name):
    video, fps = next((v, f) for n, v, f in videoalign_test_videos() if n == name)
    reference = REFERENCE["preprocessing"][name]
    count = sampled_frame_count(video.shape[0], fps, VIDEOALIGN_FPS, None)
    frames = video[sampled_frame_indices(video.shape[0], count)].permute(0, 3, 1, 2)
    resized = resize_frames(frames, resized_size(*video.shape[1:3], VIDEOALIGN_MAX_PIXELS))
    assert list(resized.shape) == reference["resized_frames"]
    assert abs(resized.double().sum().item() - reference["resized_frame_sum"]) <= 2

    patches, grid = video_patches(video, fps, SETTINGS)
    recorded = reference["patches"]
    assert list(grid) == reference["grid"] and list(patches.shape) == recorded["shape"]
    rows = patches.double() @ checksum_weights(patches.shape[1])
    columns = checksum_weights(patches.shape[0]) @ patches.double()
    tolerance = 2 * ONE_LEVEL
    torch.testing.assert_close(
        rows, torch.tensor(recorded["row_checksums"], dtype=torch.float64), rtol=0, atol=tolerance
    )
    torch.testing.assert_close(
        columns,
        torch.tensor(recorded["column_checksums"], dtype=torch.float64),
        rtol=0,
        atol=tolerance,
    )
    sampled = patches.flatten()[torch.tensor(recorded["sampled_indices"])].double()
    torch.testing.assert_close(
        sampled,
        torch.tensor(recorded["sampled_values"], dtype=torch.float64),
        rtol=0,
        atol=tolerance,
    )


def test_the_token_ids_equal_the_reference_processors(checkpoints):
    reward = VideoAlign(str(checkpoints["full"]), device="cpu")
    prompt = REFERENCE["recorded_with"]["preprocessing_prompt"]
    for name, reference in REFERENCE["preprocessing"].items():
        grid_t, grid_h, grid_w = reference["grid"]
        text = chat_text(question(prompt), grid_t * grid_h * grid_w // 4)
        assert reward.tokenizer(text)["input_ids"] == reference["input_ids"], name


@pytest.mark.parametrize("form", ["full", "lora"])
@pytest.mark.parametrize("normalize", [False, True])
def test_scores_equal_videoaligns_own_inference(checkpoints, scored_batch, form, normalize):
    videos, prompts, fps = scored_batch
    reward = VideoAlign(str(checkpoints[form]), video_fps=fps, normalize=normalize, device="cpu")
    scores = reward(videos, prompts)
    recorded = REFERENCE["scores"][form]["normalized" if normalize else "raw"]
    assert reward.components == COMPONENTS
    for name in COMPONENTS:
        expected = torch.tensor([row[name] for row in recorded])
        torch.testing.assert_close(scores[name], expected, rtol=0, atol=SCORE_TOLERANCE)


def test_scores_are_deterministic_and_batched_equals_one_by_one(checkpoints, scored_batch):
    videos, prompts, fps = scored_batch
    reward = VideoAlign(str(checkpoints["lora"]), video_fps=fps, device="cpu")
    first, second = reward(videos, prompts), reward(videos, prompts)
    singles = [reward(videos[i : i + 1], prompts[i : i + 1]) for i in range(len(prompts))]
    for name in COMPONENTS:
        assert torch.equal(first[name], second[name])
        one_by_one = torch.cat([single[name] for single in singles])
        torch.testing.assert_close(first[name], one_by_one, rtol=0, atol=SCORE_TOLERANCE)


def test_normalisation_is_the_checkpoint_configs(checkpoints, scored_batch):
    videos, prompts, fps = scored_batch
    folder = checkpoints["full"]
    config = json.loads((folder / "model_config.json").read_text())["inference_config"]
    raw = VideoAlign(str(folder), video_fps=fps, normalize=False, device="cpu")(videos, prompts)
    normalised = VideoAlign(str(folder), video_fps=fps, device="cpu")(videos, prompts)
    for name in SCORES:
        expected = (raw[name] - config[f"{name}_mean"]) / config[f"{name}_std"]
        torch.testing.assert_close(normalised[name], expected, rtol=0, atol=1e-6)
    total = normalised["VQ"] + normalised["MQ"] + normalised["TA"]
    torch.testing.assert_close(normalised["Overall"], total, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("frames", "fps", "expected"),
    [
        (9, 8.0, 4),  # 2.25 frames at 2 per second: raised to the minimum 4
        (48, 8.0, 12),  # 6 seconds at 2 per second
        (81, 16.0, 10),  # Wan's 81 frames at 16 fps: 10.125, rounded to an even 10
        (3, 16.0, 2),  # fewer frames than the minimum: the largest even count there is
    ],
)
def test_frames_are_kept_at_two_per_second_of_video(frames, fps, expected):
    assert sampled_frame_count(frames, fps, VIDEOALIGN_FPS, None) == expected


def test_half_a_level_of_float_noise_does_not_change_a_score(checkpoints, scored_batch):
    """Frames are scored as the 8-bit values a video file would hold."""
    videos, prompts, fps = scored_batch
    reward = VideoAlign(str(checkpoints["full"]), video_fps=fps, device="cpu")
    nudged = videos + 0.4 / 255
    assert torch.equal(reward(videos, prompts)["TA"], reward(nudged, prompts)["TA"])


def test_bad_folders_are_one_line_user_errors(checkpoints, tmp_path):
    cases = []
    no_config = tmp_path / "no_config"
    shutil.copytree(checkpoints["full"], no_config)
    (no_config / "model_config.json").unlink()
    cases.append(({"path": str(no_config)}, "has no model_config.json"))
    cases.append(({"path": str(checkpoints["full"]), "checkpoint": 7}, "no checkpoint-7"))
    no_base = tmp_path / "no_base"
    shutil.copytree(checkpoints["full"], no_base)
    config = json.loads((no_base / "model_config.json").read_text())
    config["model_config"]["model_name_or_path"] = "Qwen/Qwen2-VL-2B-Instruct"
    (no_base / "model_config.json").write_text(json.dumps(config))
    cases.append(({"path": str(no_base)}, "reward.options.base_model"))
    cases.append(({"path": str(checkpoints["full"]), "video_fps": 0}, "video_fps"))
    for options, message in cases:
        with pytest.raises(UserError, match=message) as caught:
            VideoAlign(device="cpu", **options)
        assert "\n" not in str(caught.value)
    with_base = VideoAlign(str(no_base), base_model=str(checkpoints["base"]), device="cpu")
    assert with_base.components == COMPONENTS


def test_bfloat16_weights_score_within_bfloat16_precision(checkpoints, scored_batch):
    """The GPU default (bfloat16) runs its whole forward in that dtype; on the CPU here."""
    videos, prompts, fps = scored_batch
    folder = str(checkpoints["lora"])
    exact = VideoAlign(folder, video_fps=fps, normalize=False, device="cpu")(videos, prompts)
    half = VideoAlign(folder, video_fps=fps, normalize=False, device="cpu", dtype="bfloat16")
    assert half.model.rm_head.weight.dtype == torch.bfloat16
    scores = half(videos, prompts)
    # bfloat16 keeps 8 significant bits (relative step 2^-8 = 0.004); through one layer and the
    # head the raw scores (about 0.1 to 1.2 here) drift by a few steps.
    for name in SCORES:
        assert scores[name].dtype == torch.float32
        torch.testing.assert_close(scores[name], exact[name], rtol=0, atol=0.05)
