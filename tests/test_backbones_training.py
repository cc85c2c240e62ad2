"""GRPO on every backbone family's tiny folder: each method preset trains, the first minibatch
replays at ratio exactly 1, Wan 2.2's experts switch at the boundary in rollout and update
alike, and the exported LoRA moves the stock pipeline exactly as it moves videogrpo's policy."""

from __future__ import annotations

import json

import pytest
import torch
from backbone_cases import CASES, load_stock_pipeline, stock_sample
from conftest import PRESET_IDS, PRESETS_DIR, TINY_PIPELINE_VIDEO
from test_trainer import ReplayLog
from tiny_pipelines import PROMPTS, WAN22_BOUNDARY

from videogrpo.core import schedule
from videogrpo.models.lora import lora_weight_name
from videogrpo.runs.loading import apply_run_weights
from videogrpo.runs.train import train
from videogrpo.training.rollout import initial_noise, sample_final
from videogrpo.training.step import StepSettings

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_STEPS = 4


class ThreeScores:
    """A cheap reward with the presets' components, so every preset (the self-paced curriculum
    included) runs unchanged: contrast, temporal smoothness, red minus blue."""

    components = ("vq", "mq", "ta")

    def __call__(self, videos, prompts):
        steadiness = 1 - (videos[:, 1:] - videos[:, :-1]).abs().mean(dim=(1, 2, 3, 4))
        return {
            "vq": videos.std(dim=(1, 2, 3, 4)),
            "mq": steadiness,
            "ta": videos[..., 0].mean(dim=(1, 2, 3)) - videos[..., 2].mean(dim=(1, 2, 3)),
        }


def family_settings(folder, tmp_path, name: str | None = None) -> list[str]:
    """Tiny-run overrides; with a family `name`, also its model.type and its scheduler's shift
    (a backbone preset names its own)."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    family = []
    if name is not None:
        family = [f"model.type={CASES[name].model_type}", f"sampling.shift={CASES[name].shift}"]
    return [
        *family,
        f"model.path={folder}",
        "model.lora_rank=4",
        "model.lora_alpha=8",
        f"reward.type={__name__}:ThreeScores",
        f"run.output_dir={tmp_path}",
        "run.name=run",
        "run.iterations=2",
        "run.videos_every=0",
        f"sampling.num_steps={NUM_STEPS}",
        "selection.window_size=2",
        "selection.window_every=1",
        f"data.prompts={prompts}",
        "data.prompts_per_iteration=2",
        "data.group_size=2",
        f"eval.prompts={prompts}",
        "eval.samples_per_prompt=1",
        "eval.num_steps=2",
        "eval.videos=1",
        "optim.minibatches=2",
    ]


@pytest.mark.parametrize("preset", PRESET_IDS)
@pytest.mark.parametrize("name", list(CASES))
def test_every_method_preset_trains_each_family_and_replays_its_first_minibatch_exactly(
    family_dirs, tmp_path, monkeypatch, name, preset
):
    log = ReplayLog(monkeypatch)
    settings = family_settings(family_dirs(name), tmp_path, name)
    result = train(PRESETS_DIR / f"{preset}.yaml", settings, progress=False)
    metrics = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()]
    assert len(metrics) == 2 and result.summary["iterations"] == 2
    for update in range(2):
        first, *_ = log.minibatches(update)
        for log_prob, old_log_prob in first:
            assert torch.equal(log_prob, old_log_prob)
    if result.summary["config"]["model"]["finetune"] == "lora":
        assert (result.run_dir / "lora" / lora_weight_name()).is_file()
    else:  # sage and selfpaced fine-tune every weight: the whole folder is exported
        assert (result.run_dir / "model" / "model_index.json").is_file()


def test_wan22_experts_switch_at_the_boundary_in_rollout_and_update(
    family_dirs, tmp_path, monkeypatch
):
    """Every transformer call, with or without gradients, goes to the expert its timestep
    picks (high noise: t ≥ boundary·1000), and both experts are trained."""
    calls = []
    from videogrpo.models import wan

    original = wan.WanGenerator.forward_for

    def recording_forward_for(self, sigma, guidance_scale):
        forward, scale = original(self, sigma, guidance_scale)
        expert = self.expert_at(sigma)

        def recorded(latents, timesteps, fields):
            calls.append((expert, float(timesteps[0]), torch.is_grad_enabled()))
            return forward(latents, timesteps, fields)

        return recorded, scale

    monkeypatch.setattr(wan.WanGenerator, "forward_for", recording_forward_for)
    settings = family_settings(family_dirs("wan22_a14b"), tmp_path, "wan22_a14b")
    settings += ["run.iterations=1", "model.finetune=lora"]
    result = train(PRESETS_DIR / "sage.yaml", settings, progress=False)
    boundary = WAN22_BOUNDARY * 1000
    for expert, timestep, _ in calls:
        assert expert == ("transformer" if timestep >= boundary else "transformer_2")
    rollout = {(e, t) for e, t, grad in calls if not grad}
    update = {(e, t) for e, t, grad in calls if grad}
    assert update <= rollout and {e for e, _ in update} == {"transformer", "transformer_2"}
    lora = result.run_dir / "lora"
    assert (lora / lora_weight_name()).is_file()
    assert (lora / lora_weight_name("transformer_2")).is_file()


def load_trained_lora(name, pipe, lora_dir) -> None:
    """What a user does with the exported folder, per family."""
    if name == "hunyuan_video_15":  # HunyuanVideo15Pipeline has no load_lora_weights
        pipe.transformer.load_lora_adapter(
            str(lora_dir), prefix="transformer", weight_name=lora_weight_name()
        )
        return
    pipe.load_lora_weights(str(lora_dir))
    if name == "wan22_a14b":
        pipe.load_lora_weights(
            str(lora_dir),
            weight_name=lora_weight_name("transformer_2"),
            load_into_transformer_2=True,
        )


@pytest.mark.parametrize("name", list(CASES))
def test_the_exported_lora_moves_the_stock_pipeline_as_it_moves_the_policy(
    family_dirs, tmp_path, name
):
    """After two iterations with a high learning rate, the stock pipeline with the exported
    LoRA samples what the trained policy samples (1e-4, as the ODE equality), and not what the
    base samples."""
    case, folder = CASES[name], family_dirs(name)
    settings = [*family_settings(folder, tmp_path, name), "optim.lr=3e-2"]
    run_dir = train(PRESETS_DIR / "flowgrpo.yaml", settings, progress=False).run_dir
    policy = case.load(folder)
    apply_run_weights(policy, run_dir)
    seeds = [5]
    noise = initial_noise(policy, seeds)
    steps = StepSettings("ode", 0.0, schedule.sigmas(NUM_STEPS, case.shift), 1.0)
    ours = sample_final(
        policy, steps, policy.encode(PROMPTS[:1]), seeds,
        sde_mask=torch.zeros(NUM_STEPS, dtype=torch.bool),
    )  # fmt: skip
    pipe = load_stock_pipeline(case, folder)
    kwargs = dict(num_steps=NUM_STEPS, guidance=1.0)
    base = stock_sample(case, pipe, noise, PROMPTS[:1], **kwargs)
    load_trained_lora(name, pipe, run_dir / "lora")
    adapted = stock_sample(case, pipe, noise, PROMPTS[:1], **kwargs)
    assert (adapted - base).abs().max() > 1e-3
    torch.testing.assert_close(adapted, ours, atol=1e-4, rtol=0)


# Which tiny folder each backbone preset runs on, and the overrides that shrink it to seconds.
PRESET_FAMILIES = {
    "wan21_1.3b_sage": "wan21",
    "wan21_1.3b_flowgrpo": "wan21",
    "wan21_1.3b_dancegrpo": "wan21",
    "hunyuanvideo15_sage": "hunyuan_video_15",
}


@pytest.mark.parametrize("preset", list(PRESET_FAMILIES))
def test_every_backbone_preset_trains_two_iterations_on_a_tiny_folder_of_its_family(
    family_dirs, tiny_pipeline_dir, tmp_path, monkeypatch, preset
):
    """The presets as written (bfloat16 transformer, gradient checkpointing, offload, a disk
    text cache, LoRA) on the tiny folder of their family, shrunk to CPU size: two iterations,
    the first minibatch of each replayed at ratio exactly 1."""
    family = PRESET_FAMILIES[preset]
    if family == "wan21":
        folder, video = tiny_pipeline_dir, TINY_PIPELINE_VIDEO
    else:
        folder, video = family_dirs(family), CASES[family].video
    log = ReplayLog(monkeypatch)
    settings = family_settings(folder, tmp_path) + [
        *(f"sampling.{key}={video[key]}" for key in ("num_frames", "height", "width")),
        "data.group_size=4",
        "data.train_extremes=1",
        f"memory.text_cache_dir={tmp_path / 'text_cache'}",
        "eval.max_prompts=2",
        "reward.options={}",  # the preset's are VideoAlign's
    ]
    result = train(PRESETS_DIR / f"{preset}.yaml", settings, progress=False)
    assert result.summary["iterations"] == 2
    assert result.summary["config"]["model"]["dtype"] == "bfloat16"
    for update in range(2):
        first, *_ = log.minibatches(update)
        for log_prob, old_log_prob in first:
            assert log_prob.dtype == torch.float32 and torch.isfinite(log_prob).all()
            assert torch.equal(log_prob, old_log_prob)
    assert any((tmp_path / "text_cache").rglob("*.safetensors"))
