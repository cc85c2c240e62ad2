"""Record what VideoAlign's own code makes of stated inputs, for the VideoAlign tests.

The VideoAlign tests compare videogrpo's plain-torch preprocessing and its transformers-5 model
against these numbers. They come from the reference itself, which needs transformers 4.45 and
torchvision, so this script runs in a throwaway environment, never in the project's:

    python3 -m venv /tmp/va-ref
    /tmp/va-ref/bin/pip install torch==2.14.1 torchvision==0.29.1 "transformers==4.45.2" \
        "peft==0.13.2" "trl==0.11.4" "huggingface_hub<1.0" accelerate datasets pandas requests
    git clone https://github.com/KwaiVGI/VideoAlign /tmp/VideoAlign   # recorded at 219ab9d
    /tmp/va-ref/bin/python scripts/record_videoalign_reference.py --videoalign /tmp/VideoAlign

(install transformers and trl in one command: trl alone pulls the newest transformers). Two
recordings give byte-identical files; the versions used are written into the file.

It records, for the stated videos of tests/tiny_rewards.py:
- preprocessing: VideoAlign's frame sampling and torchvision resize (vision_process.py) and the
  transformers-4.45 Qwen2-VL processor's patches (checksums that see every value and its
  position, and a sample of raw values) and token ids;
- scores: VideoAlign's VideoVLMRewardInference on the tiny VideoReward checkpoint of
  tests/tiny_rewards.py (built here the same way as in the tests), full and LoRA form, raw and
  normalised. The reference reads mp4 files; here its video reader is handed the same frames in
  memory, so no codec stands between the two implementations.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from tiny_rewards import (  # noqa: E402 - the tests folder is put on the path just above
    VIDEOALIGN_FPS,
    VIDEOALIGN_MAX_PIXELS,
    build_tiny_videoreward,
    videoalign_score_inputs,
    videoalign_test_videos,
)

PREPROCESSING_PROMPT = "a red circle moves left"
# Sampled raw values per video: enough to show the numbers themselves, not only checksums.
SAMPLED_VALUES = 256


def checksum_weights(count: int) -> torch.Tensor:
    """Fixed weights (no RNG) that make a weighted sum depend on where each value sits."""
    return torch.sin(torch.arange(1, count + 1, dtype=torch.float64) * 0.7)


def patch_checksums(patches: torch.Tensor) -> dict:
    patches = patches.double()
    rows, columns = patches.shape
    picks = torch.linspace(0, rows * columns - 1, SAMPLED_VALUES).long()
    return {
        "shape": [rows, columns],
        "row_checksums": (patches @ checksum_weights(columns)).tolist(),
        "column_checksums": (checksum_weights(rows) @ patches).tolist(),
        "sampled_indices": picks.tolist(),
        "sampled_values": patches.flatten()[picks].tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videoalign", required=True, help="a checkout of KwaiVGI/VideoAlign")
    parser.add_argument("--out", default=str(REPO / "tests/fixtures/videoalign_reference.json"))
    args = parser.parse_args()
    videoalign = Path(args.videoalign).resolve()
    sys.path.insert(0, str(videoalign))

    import os

    os.environ["FORCE_QWENVL_VIDEO_READER"] = "torchvision"
    import torchvision
    import transformers
    import vision_process

    in_memory: dict[str, tuple[torch.Tensor, float]] = {}

    def read_video(path, start_pts=0.0, end_pts=None, pts_unit="sec", output_format="TCHW"):
        frames, fps = in_memory[path.removeprefix("file://")]
        return frames.permute(0, 3, 1, 2).contiguous(), torch.empty(0), {"video_fps": fps}

    vision_process.io = types.SimpleNamespace(read_video=read_video)

    import inference

    training_config = inference.TrainingConfig

    def sdpa_training_config(**kwargs):  # flash-attention 2 needs a GPU; sdpa is the same math
        return training_config(**{**kwargs, "disable_flash_attn2": True})

    inference.TrainingConfig = sdpa_training_config

    record: dict = {
        "recorded_with": {
            "videoalign_commit": subprocess.run(
                ["git", "-C", str(videoalign), "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
            ).stdout.strip()
            or "unknown",
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "transformers": transformers.__version__,
            "script": "scripts/record_videoalign_reference.py",
            "preprocessing_prompt": PREPROCESSING_PROMPT,
        },
        "checksum_weights": "sin(0.7 * k), k = 1, 2, ...",
        "preprocessing": {},
        "scores": {},
    }
    with tempfile.TemporaryDirectory() as workdir:
        root = Path(workdir)
        full, base = build_tiny_videoreward(root, "full")
        lora, _ = build_tiny_videoreward(root, "lora")
        scorers = {
            form: inference.VideoVLMRewardInference(str(folder), device="cpu", dtype=torch.float32)
            for form, folder in (("full", full), ("lora", lora))
        }
        for name, video, fps in videoalign_test_videos():
            path = str(root / f"{name}.mp4")
            in_memory[path] = (video, fps)
            element = {
                "type": "video",
                "video": f"file://{path}",
                "max_pixels": VIDEOALIGN_MAX_PIXELS,
                "fps": VIDEOALIGN_FPS,
                "sample_type": "uniform",
            }
            conversation = [{"role": "user", "content": [element]}]
            (frames,) = vision_process.process_vision_info([conversation])[1]
            # What the reference's reward() feeds its model for this video and prompt.
            batch = scorers["full"].prepare_batch([path], [PREPROCESSING_PROMPT])
            record["preprocessing"][name] = {
                "frames_per_second": fps,
                "source_shape": list(video.shape),
                "resized_frames": list(frames.shape),
                "resized_frame_sum": float(frames.double().sum()),
                "grid": batch["video_grid_thw"][0].tolist(),
                "patches": patch_checksums(batch["pixel_values_videos"]),
                "input_ids": batch["input_ids"][0].tolist(),
            }

        videos, prompts, fps = videoalign_score_inputs()
        paths = []
        for index, video in enumerate(videos):
            path = str(root / f"scored_{index}.mp4")
            in_memory[path] = (video, fps)
            paths.append(path)
        for form, folder in (("full", full), ("lora", lora)):
            model = inference.VideoVLMRewardInference(
                str(folder), device="cpu", dtype=torch.float32
            )
            with torch.no_grad():
                raw = model.reward(paths, prompts, use_norm=False)
                normalised = model.reward(paths, prompts, use_norm=True)
            record["scores"][form] = {"raw": raw, "normalized": normalised}
    record["scores"]["prompts"] = prompts
    record["scores"]["frames_per_second"] = fps
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
