"""`model.type: wan` on a tiny random WanPipeline folder: equal to stock diffusers, trainable, and
loud about folders and sizes it cannot take."""

from __future__ import annotations

import json
import shutil
import socket

import numpy as np
import pytest
import torch
from conftest import PRESETS_DIR, TINY_PIPELINE_VIDEO
from diffusers import WanPipeline

from videogrpo.config import TrainConfig
from videogrpo.core import schedule
from videogrpo.errors import UserError
from videogrpo.models.base import VideoGenerator
from videogrpo.models.registry import build_model
from videogrpo.runs.checkpoint import load_state
from videogrpo.runs.loading import apply_run_weights, load_for_inference
from videogrpo.runs.train import train
from videogrpo.training.rollout import initial_noise, sample_final
from videogrpo.training.step import StepSettings

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_STEPS, SHIFT = 4, 3.0
PROMPTS = ["a red circle moving left", "a blue square moving right slowly"]


def load(path, **sampling) -> VideoGenerator:
    config = TrainConfig()
    config.model.type, config.model.path = "wan", str(path)
    for key, value in sampling.items():
        setattr(config.sampling, key, value)
    return build_model(config.model, config.sampling)


def stock_pipeline(path) -> WanPipeline:
    """A second, independent copy loaded by diffusers alone, sampling on our σ grid: the
    scheduler shifts what it is given, so it gets the unshifted linspace (as test_rollout)."""
    pipe = WanPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    set_timesteps = pipe.scheduler.set_timesteps
    unshifted = np.linspace(1.0, 0.0, NUM_STEPS + 1)[:-1]

    def set_our_sigmas(num_inference_steps, device=None, **_):
        set_timesteps(num_inference_steps, device=device, sigmas=unshifted)

    pipe.scheduler.set_timesteps = set_our_sigmas
    return pipe


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_ode_rollout_and_decode_equal_the_stock_wan_pipeline(tiny_pipeline_dir, guidance):
    """Same noise, prompt and negative prompt. Latents: 1e-4 abs, as the tiny default's check
    (diffusers keeps σ in float32, we derive it from a float64 grid, and diffusers runs CFG as two
    forwards where we batch one). Decoded video of the pipeline's own latents: the same float32
    ops on the same numbers (ours mirrors the pipeline's arithmetic), 1e-6."""
    model = load(tiny_pipeline_dir)
    assert isinstance(model, VideoGenerator) and model.latent_shape == (4, 3, 4, 4)
    seeds, negative = [11, 12], "a square"
    settings = StepSettings("ode", 0.0, schedule.sigmas(NUM_STEPS, SHIFT), guidance)
    ours = sample_final(
        model, settings, model.encode(PROMPTS, negative), seeds,
        sde_mask=torch.zeros(NUM_STEPS, dtype=torch.bool),
    )  # fmt: skip
    pipe = stock_pipeline(tiny_pipeline_dir)
    common = dict(
        prompt=PROMPTS,
        negative_prompt=negative,
        num_inference_steps=NUM_STEPS,
        guidance_scale=guidance,
        max_sequence_length=TINY_PIPELINE_VIDEO["max_sequence_length"],
        num_frames=TINY_PIPELINE_VIDEO["num_frames"],
        height=TINY_PIPELINE_VIDEO["height"],
        width=TINY_PIPELINE_VIDEO["width"],
    )
    theirs = pipe(latents=initial_noise(model, seeds), output_type="latent", **common).frames
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
    assert (ours - initial_noise(model, seeds)).abs().max() > 0.1  # the model really moved it
    video = pipe(latents=initial_noise(model, seeds), output_type="pt", **common).frames
    torch.testing.assert_close(
        model.decode(theirs), video.permute(0, 1, 3, 4, 2), atol=1e-6, rtol=0
    )


def test_loads_offline_without_any_network(tiny_pipeline_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*_args, **_kwargs):
        raise AssertionError("loading the Wan folder tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    model = load(tiny_pipeline_dir)
    assert model.decode(torch.zeros(1, *model.latent_shape)).shape == (1, 5, 16, 16, 3)


def broken_copy(source, target, damage: str):
    shutil.copytree(source, target)
    index_file = target / "model_index.json"
    if damage == "missing vae":
        shutil.rmtree(target / "vae")
    elif damage == "wrong class":
        index = json.loads(index_file.read_text())
        index["_class_name"] = "CogVideoXPipeline"
        index_file.write_text(json.dumps(index))
    elif damage == "no index":
        index_file.unlink()
    elif damage == "unlisted transformer":
        index = json.loads(index_file.read_text())
        del index["transformer"]
        index_file.write_text(json.dumps(index))
    return target


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing vae", r"lacks the pipeline component\(s\) vae"),
        ("unlisted transformer", r"lacks the pipeline component\(s\) transformer"),
        ("wrong class", r"names pipeline 'CogVideoXPipeline'; this model.type loads WanPipeline"),
        ("no index", r"has no model_index.json"),
    ],
)
def test_a_folder_that_is_not_a_wan_pipeline_is_a_one_line_error(
    tiny_pipeline_dir, tmp_path, damage, message
):
    folder = broken_copy(tiny_pipeline_dir, tmp_path / "broken", damage)
    with pytest.raises(UserError, match=message) as error:
        load(folder)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        (
            {"num_frames": 6},
            r"num_frames: 6 does not fit this Wan VAE; use 1 \+ 2·k frames, e\.g\. 7",
        ),
        ({"height": 20}, r"20×16 does not fit this Wan model; both must be multiples of 8"),
    ],
)
def test_sizes_the_vae_or_the_patches_cannot_take_are_refused(tiny_pipeline_dir, sizes, message):
    with pytest.raises(UserError, match=message):
        load(tiny_pipeline_dir, **sizes)
    bigger = load(tiny_pipeline_dir, num_frames=9, height=24, width=32)
    assert bigger.latent_shape == (4, 5, 6, 8)


class Redness:
    """A reward defined here and named by the config: mean red minus mean blue of the clip."""

    components = ("redness",)

    def __call__(self, videos, prompts):
        return {"redness": videos[..., 0].mean(dim=(1, 2, 3)) - videos[..., 2].mean(dim=(1, 2, 3))}


def wan_settings(model_dir, output_dir, finetune: str) -> list[str]:
    return [
        "model.type=wan",
        f"model.path={model_dir}",
        f"model.finetune={finetune}",
        "model.lora_rank=4",
        "model.lora_alpha=8",
        f"reward.type={__name__}:Redness",
        f"run.output_dir={output_dir}",
        f"run.name={finetune}",
        "run.iterations=2",
        "run.videos_every=0",
        "sampling.num_steps=4",
        "data.prompts_per_iteration=2",
        "data.group_size=2",
        f"data.prompts={PROMPTS_FILE_NAME}",
        f"eval.prompts={PROMPTS_FILE_NAME}",
        "eval.num_steps=2",
        "eval.videos=1",
        "optim.minibatches=1",
        "optim.lr=1e-2",
    ]


PROMPTS_FILE_NAME = "wan_prompts.txt"


@pytest.mark.parametrize(("preset", "finetune"), [("sage", "full"), ("flowgrpo", "lora")])
def test_two_grpo_iterations_train_a_wan_folder(
    tiny_pipeline_dir, tmp_path, monkeypatch, preset, finetune
):
    """Every iteration replays its rollout at ratio exactly 1 (one optimizer step per rollout);
    the weights move; the exported LoRA loads into stock WanPipeline and moves its output exactly
    as our trained adapter moves ours; a full fine-tune exports a folder `wan` loads back."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / PROMPTS_FILE_NAME).write_text("\n".join(PROMPTS) + "\n")
    settings = wan_settings(tiny_pipeline_dir, tmp_path / "runs", finetune)
    result = train(PRESETS_DIR / f"{preset}.yaml", settings, progress=False)
    metrics = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()]
    assert [m["policy/ratio_mean"] for m in metrics] == [1.0, 1.0]
    assert result.summary["eval_after"].keys() == {"redness", "composite"}
    weights = load_state(result.run_dir / "checkpoint")["trainer"]["weights"]
    if finetune == "full":
        exported = load_for_inference(str(result.run_dir / "model"), None, "wan")
        for name, tensor in exported.transformer.state_dict().items():
            assert torch.equal(tensor, weights[f"transformer.{name}"]), name
        return

    pipe = WanPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    noise = initial_noise(load(tiny_pipeline_dir), [3])

    def one_step() -> torch.Tensor:
        return pipe(
            prompt=PROMPTS[0], latents=noise.clone(), num_inference_steps=1, guidance_scale=1.0,
            output_type="latent", max_sequence_length=TINY_PIPELINE_VIDEO["max_sequence_length"],
            num_frames=5, height=16, width=16,
        ).frames  # fmt: skip

    base = one_step()
    pipe.load_lora_weights(str(result.run_dir / "lora"))
    adapted = one_step()
    assert (adapted - base).abs().max() > 1e-4

    policy = load(tiny_pipeline_dir)
    apply_run_weights(policy, result.run_dir)
    sigma_from, sigma_to = pipe.scheduler.sigmas[:2].tolist()
    velocity = policy.velocity(noise, torch.tensor([sigma_from]), policy.encode(PROMPTS[:1]), 1.0)
    # 1e-4 as the tiny default's LoRA check: diffusers steps in float32 from its float32 σ.
    torch.testing.assert_close(
        adapted, noise + (sigma_to - sigma_from) * velocity, atol=1e-4, rtol=0
    )
