"""The GRPO loop and the run on disk, on a tiny random TinyWan with every preset.

Guards DESIGN.md invariants: ratio exactly 1 on the first replay, the moving anchor is a copy,
equalizer factors as measured with autograd, resume = never stopping, and the LoRA export loads
into diffusers as the trained policy.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import PRESET_IDS, PRESETS, PRESETS_DIR, make_trainer, tiny_settings

import videogrpo.training.trainer as trainer_module
import videogrpo.training.update as update_module
from videogrpo.config import load_config
from videogrpo.core import equalizer, schedule
from videogrpo.embedded.tiny_wan import TinyWan
from videogrpo.embedded.world.grammar import HELDOUT_PROMPTS
from videogrpo.runs.checkpoint import load_state
from videogrpo.runs.loading import apply_run_weights
from videogrpo.runs.report.charts import chart_sections
from videogrpo.runs.tracking import MetricsLog
from videogrpo.runs.train import train
from videogrpo.training.rollout import initial_noise
from videogrpo.training.trust_region import MovingAnchor

pytestmark = pytest.mark.usefixtures("one_thread")

EVAL_KEYS = {"vq", "mq", "ta", "composite"}


class ReplayLog:
    """Records (log π_θ, log π_old) of every clipped-loss call, split by optimizer step.

    `updates[i][j]` lists the calls of minibatch j of the i-th policy update.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.updates: list[list[list[tuple[torch.Tensor, torch.Tensor]]]] = []
        original_update = trainer_module.policy_update
        original_loss = update_module.clipped_policy_loss

        def policy_update(*args, after_step, **kwargs):
            self.updates.append([[]])

            def step_taken(kl: float) -> None:
                self.updates[-1].append([])
                after_step(kl)

            return original_update(*args, after_step=step_taken, **kwargs)

        def clipped_policy_loss(log_prob, old_log_prob, *args, **kwargs):
            self.updates[-1][-1].append((log_prob.detach().clone(), old_log_prob.clone()))
            return original_loss(log_prob, old_log_prob, *args, **kwargs)

        monkeypatch.setattr(trainer_module, "policy_update", policy_update)
        monkeypatch.setattr(update_module, "clipped_policy_loss", clipped_policy_loss)

    def minibatches(self, update: int) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        return [calls for calls in self.updates[update] if calls]


def non_time_metrics(record: dict) -> dict:
    return {key: value for key, value in record.items() if not key.startswith("time/")}


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------- ratio = 1


@pytest.mark.parametrize("preset", PRESET_IDS)
def test_first_optimizer_step_replays_at_ratio_exactly_one(
    tiny_model_dir, tmp_path, preset, monkeypatch
):
    """One optimizer step per rollout: every replayed log-prob equals the stored one bitwise, so
    ratio_mean is exactly 1.0 and nothing is clipped, also in iteration 2 after the policy moved."""
    log = ReplayLog(monkeypatch)
    trainer = make_trainer(tiny_model_dir, tmp_path, preset, ["optim.minibatches=1"])
    for iteration in range(2):
        metrics = trainer.step().metrics
        assert metrics["optim/steps"] == 1
        assert metrics["policy/ratio_mean"] == 1.0 and metrics["policy/ratio_max"] == 1.0
        assert metrics["policy/clip_frac"] == 0.0 and metrics["policy/approx_kl"] == 0.0
        (calls,) = log.minibatches(iteration)
        for log_prob, old_log_prob in calls:
            assert torch.equal(log_prob, old_log_prob)


def test_train_extremes_replays_only_each_groups_best_and_worst_at_ratio_one(
    tiny_model_dir, tmp_path, monkeypatch
):
    """data.train_extremes=1 of groups of 4: the update sees exactly the highest and lowest
    advantage of each group, and their recomputed log π_old keeps the first replay at ratio 1."""
    log = ReplayLog(monkeypatch)
    seen = []
    original_update = trainer_module.policy_update

    def record_batch(model, optimizer, batch, *args, **kwargs):
        seen.append((batch.advantages.clone(), batch.trained.clone()))
        return original_update(model, optimizer, batch, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "policy_update", record_batch)
    settings = ["data.group_size=4", "data.train_extremes=1", "optim.minibatches=1"]
    trainer = make_trainer(tiny_model_dir, tmp_path, "dancegrpo", settings)
    metrics = trainer.step().metrics
    (advantages, trained), (calls,) = seen[0], log.minibatches(0)
    groups = zip(advantages.reshape(-1, 4), trained.reshape(-1, 4, trained.shape[1]), strict=True)
    for group, rows in groups:
        kept = rows.any(dim=1)
        assert kept.sum() == 2
        assert set(torch.nonzero(kept).flatten().tolist()) == {
            int(group.argmin()),
            int(group.argmax()),
        }
    for log_prob, old_log_prob in calls:
        assert torch.equal(log_prob, old_log_prob)
    assert metrics["policy/ratio_mean"] == 1.0 and metrics["time/old_log_probs"] > 0


# ---------------------------------------------------------------------- presets on disk


@pytest.mark.parametrize("preset", PRESETS, ids=PRESET_IDS)
def test_every_preset_runs_two_iterations_and_writes_its_run_directory(
    tiny_model_dir, tmp_path, preset, monkeypatch
):
    """Each preset end to end through run.train, with 2 minibatches per rollout: the FIRST
    minibatch replays at ratio exactly 1, the second sees the moved policy."""
    log = ReplayLog(monkeypatch)
    overrides = tiny_settings(tiny_model_dir, tmp_path) + ["run.name=run", "optim.minibatches=2"]
    result = train(preset, overrides, progress=False)
    run_dir = result.run_dir
    assert run_dir == tmp_path / "run"

    assert len(log.updates) == 2
    moved = False
    for update in range(2):
        first, *later = log.minibatches(update)
        assert first and later
        for log_prob, old_log_prob in first:
            assert torch.equal(log_prob, old_log_prob)
        moved |= any(not torch.equal(new, old) for calls in later for new, old in calls)
    assert moved, "the second minibatch should see the policy moved by the first step"

    assert load_config(run_dir / "config.yaml") == load_config(preset, overrides)
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["iteration"] for m in metrics] == [1, 2]
    assert all(m["optim/steps"] == 2 and math.isfinite(m["reward/composite_mean"]) for m in metrics)
    evals = read_jsonl(run_dir / "eval.jsonl")
    assert [e["iteration"] for e in evals] == [0, 2] and evals[0].keys() >= EVAL_KEYS

    # The report reads the keys the trainer writes: only optim/* is left to "Other metrics"
    # (guards the report charting curriculum weights under names the trainer never logged).
    sections = {section.title: section.charts for section in chart_sections(metrics, evals)}
    assert [chart.title for chart in sections["Other metrics"]] == ["optim"]
    curriculum = {chart.title: chart.series for chart in sections["Self-paced curriculum"]}
    if load_config(preset).reward.curriculum != "static":
        weights = curriculum["Curriculum weights (mean ± std over groups)"]
        assert [series.label for series in weights] == ["vq", "mq", "ta"]
    else:
        assert not curriculum

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary == result.summary
    assert {"config", "iterations", "eval_before", "eval_after", "wall_seconds"} <= summary.keys()
    assert summary["iterations"] == 2
    assert summary["eval_before"].keys() == summary["eval_after"].keys() == EVAL_KEYS
    assert summary["config"]["sampling"]["rule"] == load_config(preset).sampling.rule

    report = (run_dir / "report.html").read_text()
    assert report.rstrip().endswith("</html>")
    if load_config(preset).model.finetune == "lora":
        assert list((run_dir / "lora").glob("*.safetensors"))
    else:  # full fine-tuning exports the whole model, loadable like any model folder
        exported = TinyWan.from_pretrained(run_dir / "model")
        assert exported.config == TinyWan.from_pretrained(tiny_model_dir).config
    assert load_state(run_dir / "checkpoint")["trainer"]["iteration"] == 2
    assert (run_dir / "eval_videos" / "iter_000000" / "000.gif").is_file()


# ---------------------------------------------------------------------- advantages


def test_normalize_then_sum_uses_the_curriculums_per_group_weights(tiny_model_dir, tmp_path):
    """staged + normalize_then_sum: A_i = Σ_j w_gj·A_ij of each component standardised in its
    group (guards the aggregation being silently ignored whenever a curriculum is on)."""
    trainer = make_trainer(
        tiny_model_dir,
        tmp_path,
        "selfpaced",
        ["reward.aggregation=normalize_then_sum", "reward.competence=group"],
    )
    components = {  # two groups of 2; vq barely varies, as on the default world
        "vq": torch.tensor([0.70, 0.71, 0.60, 0.62]),
        "mq": torch.tensor([0.9, 0.3, 0.5, 0.6]),
        "ta": torch.tensor([0.2, 0.6, 0.8, 0.4]),
    }
    advantages, weighted = trainer.score(components)
    standardised = {  # each component in its group: (low, high) → (−1, +1)
        "vq": torch.tensor([-1.0, 1.0, -1.0, 1.0]),
        "mq": torch.tensor([1.0, -1.0, -1.0, 1.0]),
        "ta": torch.tensor([-1.0, 1.0, 1.0, -1.0]),
    }
    per_sample = weighted.weights.double().repeat_interleave(2, dim=0)
    expected = sum(per_sample[:, j] * standardised[c].double() for j, c in enumerate(standardised))
    assert not torch.allclose(weighted.weights[0], weighted.weights[1])  # per-group, not shared
    torch.testing.assert_close(advantages.double(), expected, atol=1e-5, rtol=0)


def test_per_component_bounds_from_config_normalise_each_component(tiny_model_dir, tmp_path):
    """reward.lo / reward.hi as mappings: a reward whose components live on different scales
    (VideoAlign's are unbounded logits) is mapped to [0, 1] per component, then clipped."""
    trainer = make_trainer(
        tiny_model_dir,
        tmp_path,
        "selfpaced",
        ["reward.lo={vq: -2, mq: 0, ta: 0.5}", "reward.hi={vq: 2, mq: 1, ta: 1}"],
    )
    components = {
        "vq": torch.tensor([-2.0, 0.0, 1.0, 3.0]),
        "mq": torch.tensor([0.1, 0.2, 0.3, 0.4]),
        "ta": torch.tensor([0.25, 0.5, 0.75, 1.0]),
    }
    _, weighted = trainer.score(components)
    expected = torch.tensor(
        [[0.0, 0.1, 0.0], [0.5, 0.2, 0.0], [0.75, 0.3, 0.5], [1.0, 0.4, 1.0]]
    )  # vq (r + 2)/4 clipped, mq as is, ta (r − 0.5)/0.5 clipped
    torch.testing.assert_close(weighted.normalized, expected)


# ---------------------------------------------------------------------- moving anchor


def test_moving_anchor_is_a_copy_and_refreshes_after_every_second_step(tiny_model_dir, tmp_path):
    """anchor_every=2, one optimizer step per iteration: the anchor keeps the initial weights
    while the policy moves (KL to it > 0), and becomes the policy right after step 2."""
    trainer = make_trainer(
        tiny_model_dir, tmp_path, "sage", ["kl.anchor_every=2", "optim.minibatches=1"]
    )
    initial = trainer.model.trainable_state_dict()

    def anchor_equals(weights) -> bool:
        return all(torch.equal(trainer.kl.anchor.weights[n], weights[n]) for n in weights)

    first = trainer.step().metrics
    assert trainer.optimizer_steps == 1 and trainer.kl.anchor.refreshed_at == 0
    after_one = trainer.model.trainable_state_dict()
    assert any(not torch.equal(after_one[n], initial[n]) for n in initial), "policy must move"
    assert anchor_equals(initial), "an optimizer step changed the anchor: it aliases the policy"
    assert first["kl/pos"] == 0.0  # anchor = policy at that rollout, replayed in the same batch

    second = trainer.step().metrics  # its update measured the old anchor, then took step 2
    assert second["kl/pos"] > 0.0  # the moved policy is measured against the old anchor
    after_two = trainer.model.trainable_state_dict()
    assert trainer.kl.anchor.refreshed_at == 2 and anchor_equals(after_two)

    third = trainer.step().metrics  # step 3: 1 step since the refresh, none due
    assert trainer.kl.anchor.refreshed_at == 2
    assert third["kl/pos"] == 0.0
    assert not anchor_equals(trainer.model.trainable_state_dict())


def test_anchor_refreshes_once_every_steps_have_passed(tiny_model_dir):
    model = TinyWan.from_pretrained(tiny_model_dir)
    model.enable_lora(rank=2, alpha=2.0)
    anchor = MovingAnchor(model, every=3)
    history = []
    for optimizer_steps in (0, 2, 4, 6, 7, 9, 10):  # iteration starts with 2 steps per rollout
        anchor.maybe_refresh(model, optimizer_steps)
        history.append(anchor.refreshed_at)
    assert history == [0, 0, 4, 4, 7, 7, 10]


# ---------------------------------------------------------------------- equalizer


def test_equalizer_scales_each_steps_gradient_norm_by_its_factor(tiny_model_dir, tmp_path):
    """With the equalizer, after/before = S_k per trained step, and `before` is the per-step
    velocity-gradient norm that the same run measures without the equalizer (rel. 1e-5)."""
    plain = ["kl.reference=none", "optim.minibatches=1"]
    on = make_trainer(tiny_model_dir, tmp_path, "sage", plain).step().metrics
    off = make_trainer(tiny_model_dir, tmp_path, "sage", [*plain, "policy.equalizer=false"])
    off = off.step().metrics
    factors = equalizer.factors("sage", schedule.sigmas(4, 3.0), 0.5, 3e-3)
    steps = sorted(int(k.rsplit("/", 1)[1]) for k in on if k.startswith("grad/step_norm_after/"))
    assert steps == [0, 1, 2]  # every SDE step; the last step is deterministic
    assert float(factors[:3].max() / factors[:3].min()) > 1.5  # the factors really differ
    for k in steps:
        before, after = on[f"grad/step_norm_before/{k}"], on[f"grad/step_norm_after/{k}"]
        assert before > 0
        assert after / before == pytest.approx(float(factors[k]), rel=1e-6)
        assert before == pytest.approx(off[f"grad/step_norm_after/{k}"], rel=1e-5)
        assert off[f"grad/step_norm_before/{k}"] == off[f"grad/step_norm_after/{k}"]


# ---------------------------------------------------------------------- resume


def assert_same_continuation(straight, resumed) -> None:
    """Iterations 3-4 and the end state of `resumed` are bitwise those of `straight`."""
    expected = read_jsonl(straight.run_dir / "metrics.jsonl")
    got = read_jsonl(resumed.run_dir / "metrics.jsonl")
    assert [m["iteration"] for m in got] == [1, 2, 3, 4]
    for want, have in zip(expected[2:], got[2:], strict=True):
        want, have = non_time_metrics(want), non_time_metrics(have)
        assert want.keys() == have.keys()
        for key in want:
            assert have[key] == want[key], key

    final = load_state(straight.run_dir / "checkpoint")["trainer"]
    resumed_final = load_state(resumed.run_dir / "checkpoint")["trainer"]
    assert final["weights"].keys() == resumed_final["weights"].keys()
    for name, weight in final["weights"].items():
        assert torch.equal(resumed_final["weights"][name], weight), name
    for name, weight in final["anchor"]["weights"].items():
        assert torch.equal(resumed_final["anchor"]["weights"][name], weight), name
    assert resumed.summary["iterations"] == 4
    assert resumed.summary["eval_before"] == straight.summary["eval_before"]
    assert resumed.summary["eval_after"] == straight.summary["eval_after"]


def test_resume_gives_the_same_iterations_as_never_stopping(tiny_model_dir, tmp_path, monkeypatch):
    """4 iterations straight vs (a) 2, stop, `train(resume=...)` with run.iterations=4, and
    (b) a crash during iteration 3 with checkpoints every 2, resumed as is: bitwise equal
    non-time metrics for iterations 3-4, final weights, anchor and held-out eval.

    selfpaced exercises every piece of resumable state: optimizer (2 steps per rollout), moving
    anchor (refreshed every step), adaptive KL controller, curriculum EMA, data/selection RNGs."""
    common = tiny_settings(tiny_model_dir, tmp_path) + ["kl.anchor_every=1", "optim.minibatches=2"]
    preset = PRESETS_DIR / "selfpaced.yaml"
    straight = train(preset, [*common, "run.iterations=4", "run.name=straight"], progress=False)

    stopped = train(preset, [*common, "run.iterations=2", "run.name=stopped"], progress=False)
    resumed = train(resume=stopped.run_dir, overrides=["run.iterations=4"], progress=False)
    assert resumed.run_dir == stopped.run_dir
    assert_same_continuation(straight, resumed)

    write = MetricsLog.write

    def crash_after_iteration_3(self, iteration, values, *args, **kwargs):
        write(self, iteration, values, *args, **kwargs)
        if self.path.name == "metrics.jsonl" and iteration == 3:
            raise KeyboardInterrupt

    crashed = [*common, "run.iterations=4", "run.checkpoint_every=2", "run.name=crashed"]
    with monkeypatch.context() as patch:
        patch.setattr(MetricsLog, "write", crash_after_iteration_3)
        with pytest.raises(KeyboardInterrupt):
            train(preset, crashed, progress=False)
    run_dir = tmp_path / "crashed"
    assert len(read_jsonl(run_dir / "metrics.jsonl")) == 3  # iteration 3 logged, not saved
    assert_same_continuation(straight, train(resume=run_dir, progress=False))


# ---------------------------------------------------------------------- LoRA export


def test_exported_lora_loads_into_diffusers_as_the_trained_policy(tiny_model_dir, tmp_path):
    """run_dir/lora goes into WanPipeline.load_lora_weights of the same base model; one
    denoising step then differs from the base and equals our trained policy's (1e-4 abs)."""
    overrides = tiny_settings(tiny_model_dir, tmp_path) + [
        "run.iterations=1", "run.name=lora", "optim.lr=1e-2", "model.finetune=lora",
    ]  # fmt: skip
    run_dir = train(PRESETS_DIR / "sage.yaml", overrides, progress=False).run_dir
    weights = load_state(run_dir / "checkpoint")["trainer"]["weights"]
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    assert lora_b and max(float(w.abs().max()) for w in lora_b) > 1e-3  # training moved B

    prompt = HELDOUT_PROMPTS[0]
    base_model = TinyWan.from_pretrained(tiny_model_dir)
    pipe = base_model.to_diffusers_pipeline()  # shares base_model's modules
    pipe.set_progress_bar_config(disable=True)
    noise = initial_noise(base_model, [3])

    def one_step() -> torch.Tensor:
        return pipe(
            prompt=prompt,
            latents=noise.clone(),
            num_inference_steps=1,
            guidance_scale=1.0,
            output_type="latent",
            max_sequence_length=base_model.config.max_text_len,
            height=64,
            width=64,
            num_frames=1,
        ).frames

    base = one_step()
    pipe.load_lora_weights(str(run_dir / "lora"))
    adapted = one_step()
    assert (adapted - base).abs().max() > 1e-3

    policy = TinyWan.from_pretrained(tiny_model_dir)
    apply_run_weights(policy, run_dir)
    sigma_from, sigma_to = pipe.scheduler.sigmas[:2].tolist()
    velocity = policy.velocity(noise, torch.tensor([sigma_from]), policy.encode([prompt]), 1.0)
    torch.testing.assert_close(
        adapted, noise + (sigma_to - sigma_from) * velocity, atol=1e-4, rtol=0
    )


def test_logged_learning_rate_is_the_one_used_during_warmup(tiny_model_dir, tmp_path):
    """Guards the bug where optim/lr was read after the iteration counter moved on, so warm-up
    logged the NEXT iteration's rate (3e-4 instead of 1.5e-4 at iteration 1 of a 2-it ramp)."""
    trainer = make_trainer(tiny_model_dir, tmp_path, "cps", ["optim.warmup_iterations=2"])
    lr = trainer.config.optim.lr
    for expected in (lr / 2, lr, lr):
        metrics = trainer.step().metrics
        assert trainer.optimizer.param_groups[0]["lr"] == expected
        assert metrics["optim/lr"] == expected
