"""The KL terms as each reference implementation computes them (ALGORITHMS §7).

Hand-computed from the reference formulas, not from our code: FlowGRPO's normaliser, SAGE's
adaptive-λ clock, and when the moving anchor is refreshed.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import PRESETS_DIR, make_trainer

from videogrpo.config import load_config
from videogrpo.training import build

# flowgrpo.yaml at 4 steps: σ = 1, 0.9, 0.75, 0.5, 0 (shift 3), η = 0.7. flow_grpo's train_sd3.py:
# kl = mean((μ − μ_ref)²) / (2·std_dev_t²), std_dev_t² = η²·σ/(1 − σ̄), σ̄ = σ_1 at σ = 1, no ε.
# With μ − μ_ref = 0.1 everywhere: std_dev_t² = 4.9, 4.41, 1.47, 0.49 and KL = 0.01/(2·that).
FLOWGRPO_KL = [0.01 / (2 * 4.9), 0.01 / (2 * 4.41), 0.01 / (2 * 1.47), 0.01 / (2 * 0.49)]


class NoWeights:
    """Stands in for a model where only the anchor's (empty) snapshot is taken."""

    def trainable_state_dict(self) -> dict:
        return {}


def test_flowgrpo_kl_divides_by_std_dev_t_squared_without_the_step_length():
    """Dividing by the step variance Σ_k = std_dev_t²·Δσ_k instead made β act 1/Δσ_k
    (here 10×, 6.7×, 4×, 2×) stronger than in flow_grpo."""
    config = load_config(PRESETS_DIR / "flowgrpo.yaml", ["sampling.num_steps=4"])
    settings = build.step_settings(config)
    kl = build.kl_reference(config, NoWeights(), settings)
    mean = torch.zeros(2, 3, 2, 2, 2)
    reference = torch.full((4, 2, 3, 2, 2, 2), -0.1)
    for k, expected in enumerate(FLOWGRPO_KL):
        terms = kl.terms(k, torch.tensor([0, 1]), mean, torch.zeros(2), None, reference)
        torch.testing.assert_close(terms["pos"], torch.full((2,), expected), rtol=1e-5, atol=0)


def test_sage_kl_divides_by_its_step_variance_plus_epsilon():
    """SAGE's sage_grpo branch: mean((μ − μ_ref)²) / (2·(Σ_k + 1e-6)), Σ_k the sage variance."""
    config = load_config(PRESETS_DIR / "sage.yaml", ["sampling.num_steps=4"])
    settings = build.step_settings(config)
    kl = build.kl_reference(config, NoWeights(), settings)
    assert config.kl.normalizer == "step_variance"
    mean = torch.zeros(1, 4)
    reference = torch.full((4, 1, 4), 0.1)
    rollout = SimpleNamespace(log_probs=torch.zeros(4, 1), means=None)  # for the step-wise term
    for k in range(3):
        variance = float(settings.variances[k])
        terms = kl.terms(k, torch.tensor([0]), mean, torch.zeros(1), rollout, reference)
        expected = 0.01 / (2 * (variance + 1e-6))
        assert float(terms["pos"]) == pytest.approx(expected, rel=1e-5)


# SAGE's adaptive controller (ALGORITHMS §7): λ ramps from 1e-7 to 1e-5 over 100 controller
# updates, then ×0.9 while the mean of the last 10 KL values exceeds 1.5·target, ×1.1 while it
# is below 0.5·target, clamped to [1e-7, 1e-5]; target = 1e-5. Official SAGE updates it at every
# (sample, timestep) inner iteration. With 40 trained pairs per optimizer update, after updates
# 1, 3 and 4 the controller has seen 40, 120 and 160 KL values:
#   40:  still ramping, λ = 1e-7 + 0.4·(1e-5 − 1e-7) = 4.06e-6 (whatever the KL)
#   120: KL 0 → 20 increases from 1e-5, clamped: 1e-5;  KL 1 (> 1.5e-5) → 1e-5·0.9²⁰
#   160: KL 0 → 1e-5;  KL 1 → 1e-5·0.9⁶⁰ = 1.8e-8, clamped to 1e-7
PAIRS_PER_UPDATE = 40
EXPECTED_LAMBDA = {
    0.0: {1: 4.06e-6, 3: 1e-5, 4: 1e-5},
    1.0: {1: 4.06e-6, 3: 1e-5 * 0.9**20, 4: 1e-7},
}


@pytest.mark.parametrize("kl_value", [0.0, 1.0])
def test_sage_controller_moves_at_every_sample_step_pair(kl_value):
    config = load_config(PRESETS_DIR / "sage.yaml")
    assert config.kl.controller_clock == "sample_step" and config.kl.target == 1e-5
    kl = build.kl_reference(config, NoWeights(), build.step_settings(config))
    seen = {}
    for update in range(1, 5):
        lambdas = kl.coefficients_for(torch.full((PAIRS_PER_UPDATE,), kl_value))
        kl.after_optimizer_step(NoWeights(), update, kl_value)  # the per-pair clock: no move
        seen[update] = kl.coefficient()
        if update == 1:  # each pair's loss used the λ from before its own update
            assert lambdas[0] == pytest.approx(1e-7) and lambdas[-1] < seen[1]
    for update, expected in EXPECTED_LAMBDA[kl_value].items():
        assert seen[update] == pytest.approx(expected, rel=1e-6), update


# tiny_settings: 2 prompts × 2 samples, 3 SDE steps of 4 (the last is ODE), one minibatch.
TRAINED_PAIRS = 4 * 3


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(
    ("clock", "calls"), [("sample_step", TRAINED_PAIRS), ("optimizer_step", 1)]
)
def test_the_update_moves_the_controller_once_per_pair_or_per_step(
    tiny_model_dir, tmp_path, monkeypatch, clock, calls
):
    trainer = make_trainer(
        tiny_model_dir, tmp_path, "sage", ["optim.minibatches=1", f"kl.controller_clock={clock}"]
    )
    seen = []
    update = trainer.kl.schedule.update
    monkeypatch.setattr(trainer.kl.schedule, "update", lambda kl: seen.append(kl) or update(kl))
    trainer.step()
    assert len(seen) == calls


@pytest.mark.usefixtures("one_thread")
def test_anchor_is_refreshed_right_after_optimizer_step_n_within_an_iteration(
    tiny_model_dir, tmp_path, monkeypatch
):
    """anchor_every = 2 with 2 minibatches × 2 epochs = 4 optimizer steps per iteration: the
    anchor must be refreshed after steps 2 and 4 (not only when an iteration starts, which made
    the real period 4), and the reference means of the minibatches after step 2 are recomputed
    against the new anchor (4 reference replays instead of 2)."""
    from videogrpo.training import trust_region

    trainer = make_trainer(
        tiny_model_dir,
        tmp_path,
        "sage",
        ["kl.anchor_every=2", "optim.minibatches=2", "optim.inner_epochs=2"],
    )
    anchor = trainer.kl.anchor
    refreshed = {}
    after_step = trainer.kl.after_optimizer_step

    def record(model, optimizer_steps, step_kl):
        after_step(model, optimizer_steps, step_kl)
        policy = model.trainable_state_dict()
        refreshed[optimizer_steps] = all(torch.equal(anchor.weights[n], policy[n]) for n in policy)

    replays = []
    replay = trust_region.replay
    monkeypatch.setattr(trainer.kl, "after_optimizer_step", record)
    monkeypatch.setattr(
        trust_region, "replay", lambda *a, **k: replays.append(1) or replay(*a, **k)
    )
    trainer.step()
    assert refreshed == {1: False, 2: True, 3: False, 4: True}
    assert anchor.refreshed_at == 4 and len(replays) == 4
