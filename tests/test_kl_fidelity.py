"""The KL terms as each reference implementation computes them (ALGORITHMS §7).

Hand-computed from the reference formulas, not from our code: FlowGRPO's normaliser, SAGE's
adaptive-λ clock, and when the moving anchor is refreshed.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import PRESETS_DIR

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
