"""Self-paced reward curriculum (ALGORITHMS §8): hand-computed weights, sparsity, state, errors.

Expected numbers are written out (derived with the math module, derivation in comments), never
produced by the code under test. Tolerance: 1e-6 absolute for float32 results.
"""

import json
import math
import re

import pytest
import torch

from videogrpo.core.curriculum import (
    STRATEGIES,
    build_curriculum,
    group_centred_sparsity,
    hoyer_sparsity,
    staged_weights,
    utility_weights,
)

ATOL = 1e-6
COMPONENTS = ("vq", "mq", "ta")


def rewards_of(vq, mq, ta, requires_grad=False):
    return {
        name: torch.tensor(values, dtype=torch.float32, requires_grad=requires_grad)
        for name, values in (("vq", vq), ("mq", mq), ("ta", ta))
    }


def close(actual, expected, atol=ATOL):
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


# ---- Hoyer sparsity ---------------------------------------------------------------------------


def test_hoyer_known_vectors():
    # one-hot → 1; constant → 0 (‖x‖₁/‖x‖₂ = √G); (3, 4, 0, 0): L1 = 7, L2 = 5, H = (2 − 1.4)/1.
    x = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.7, 0.7, 0.7, 0.7], [3.0, 4.0, 0.0, 0.0]])
    close(hoyer_sparsity(x), [1.0, 0.0, 0.6])


def test_hoyer_degenerate_cases_are_zero_and_nan_is_left_out():
    # all zeros (tie) → 0; a single entry (√n − 1 = 0) → 0; (1, NaN, 0) is the one-hot (1, 0) → 1.
    x = torch.tensor([[0.0, 0.0, 0.0], [float("nan"), 2.0, float("nan")], [1.0, float("nan"), 0.0]])
    close(hoyer_sparsity(x), [0.0, 0.0, 1.0])


def test_group_centred_sparsity_and_float32_ties():
    # Group (1, 0, 0, 0) centred = (.75, −.25, −.25, −.25): L1 = 1.5, L2 = √.75, ratio √3,
    # H = 2 − √3. A group that differs only by one float32 ulp is a tie (H = 0), not the 2 − √3
    # of its one-hot rounding pattern.
    ulp_above = torch.nextafter(torch.tensor(0.7), torch.tensor(1.0)).item()
    grouped = torch.tensor([[[1.0], [0.0], [0.0], [0.0]], [[ulp_above], [0.7], [0.7], [0.7]]])
    h = group_centred_sparsity(grouped)
    assert h.shape == (2, 1)
    close(h[:, 0], [0.2679491924311228, 0.0])


# ---- staged ------------------------------------------------------------------------------------


def test_staged_weights_hand_computed():
    # c = (0.8, 0.6), τ = 0.75, T = 0.05: σ_I = sigmoid(1) = 0.7310585786, σ_II = sigmoid(−3)
    # = 0.0474258732; w = (1 − σ_I, σ_I(1 − σ_II), σ_Iσ_II).
    w = staged_weights(torch.tensor([[0.8, 0.6, 0.1]]), (0.75, 0.75), 0.05)
    close(w, [[0.2689414213699949, 0.6963874871945263, 0.03467109143547885]])


def test_staged_generalises_to_k_components():
    # K = 4, T = 1, τ = 0.5 everywhere, c = 0.5 → every gate 1/2: w = (1/2, 1/4, 1/8, 1/8).
    w = staged_weights(torch.full((1, 4), 0.5), (0.5, 0.5, 0.5), 1.0)
    close(w, [[0.5, 0.25, 0.125, 0.125]])


def test_staged_stage_moves_visual_then_motion_then_alignment():
    curriculum = build_curriculum("staged", COMPONENTS, thresholds=(0.75, 0.75), temperature=0.05)
    path = [(0.5, 0.5), (0.7, 0.5), (0.8, 0.5), (0.9, 0.6), (0.95, 0.7), (0.95, 0.8), (1.0, 0.95)]
    stages, weights = [], []
    for c_visual, c_motion in path:
        # Group of 2 whose means are exactly the competences.
        out = curriculum(
            rewards_of([c_visual + 0.05, c_visual - 0.05], [c_motion, c_motion], [0.2, 0.4]), 2
        )
        stages.append(int(out.stage[0]))
        weights.append(out.weights[0])
    assert stages == [0, 0, 1, 1, 1, 2, 2]
    visual = [float(w[0]) for w in weights]
    alignment = [float(w[2]) for w in weights]
    assert visual == sorted(visual, reverse=True)
    assert alignment == sorted(alignment)


# ---- utility -----------------------------------------------------------------------------------


def test_utility_weights_pure_function_hand_computed():
    # m = (.9, .4, .7), H = (.2, .1, .3), τ = (.5, .6, .7), k = 4, β = 0.1, T = 0.5:
    # g_j = sigmoid(4(m_j − τ_j)) + 0.1(H_j − H_{j+1}), H_4 = 0; w = softmax(g / 0.5).
    w = utility_weights(
        torch.tensor([[0.9, 0.4, 0.7]]),
        torch.tensor([[0.2, 0.1, 0.3]]),
        (0.5, 0.6, 0.7),
        sharpness=4.0,
        beta=0.1,
        temperature=0.5,
    )
    close(w, [[0.5355256336926422, 0.17755191143139096, 0.286922454875967]])


def test_utility_curriculum_hand_computed_with_ungated_last_component():
    # One group of 4, paper τ = (.75, .75) → τ_ta = 0, k = T = 1, β = 0.5.
    # vq (1,0,0,0): m = .25, H = 2 − √3; mq all .5: m = .5, H = 0; ta (1,.5,.5,0): m = .5,
    # centred (.5,0,0,−.5), H = 2 − √2.
    # g = (sig(−.5) + .5H_vq, sig(−.25) − .5H_ta, sig(.5) + .5H_ta)
    # = (0.5115152650, 0.1449302803, 0.9153525500); w = softmax(g).
    curriculum = build_curriculum("utility", COMPONENTS, thresholds=(0.75, 0.75), beta=0.5)
    out = curriculum(rewards_of([1, 0, 0, 0], [0.5] * 4, [1, 0.5, 0.5, 0]), 4)
    close(out.competence, [[0.25, 0.5, 0.5]])
    close(out.sparsity, [[2 - math.sqrt(3), 0.0, 2 - math.sqrt(2)]])
    close(out.weights, [[0.31341502663649484, 0.2172270872128036, 0.4693578861507015]])
    # R̃_i = Σ_j w_j r̂_ij.
    close(
        out.composite,
        [0.8913864563935981, 0.34329248668175255, 0.34329248668175255, 0.1086135436064018],
    )
    assert int(out.stage[0]) == 2


def test_utility_accepts_one_threshold_per_component():
    # τ_ta = 0.5 instead of 0: only g_ta changes, by sig(0) − sig(.5) = −0.1224593312.
    # g = (0.5115152650, 0.1449302803, 0.7928932188), softmax by hand below.
    curriculum = build_curriculum("utility", COMPONENTS, thresholds=(0.75, 0.75, 0.5), beta=0.5)
    out = curriculum(rewards_of([1, 0, 0, 0], [0.5] * 4, [1, 0.5, 0.5, 0]), 4)
    g = [0.5115152650137068, 0.1449302803007495, 0.5 + 0.5 * (2 - math.sqrt(2))]
    total = sum(math.exp(x) for x in g)
    close(out.weights, [[math.exp(x) / total for x in g]])


# ---- static ------------------------------------------------------------------------------------


def test_static_weights_normalised_or_as_given():
    rewards = rewards_of([0.2, 0.4], [0.6, 0.8], [1.0, 0.0])
    normalised = build_curriculum("static", COMPONENTS, static_weights=(0.5, 0.5, 1.0))
    out = normalised(rewards, 2)
    close(out.weights, [[0.25, 0.25, 0.5]])
    close(out.composite, [0.25 * 0.2 + 0.25 * 0.6 + 0.5, 0.25 * 0.4 + 0.25 * 0.8])
    raw = build_curriculum(
        "static",
        COMPONENTS,
        static_weights={"ta": 1.0, "vq": 0.5, "mq": 0.5},
        normalize_weights=False,
        normalization="none",
    )
    out = raw(rewards_of([2.0, -1.0], [0.0, 0.0], [3.0, 1.0]), 2)
    close(out.weights, [[0.5, 0.5, 1.0]])
    close(out.composite, [4.0, 0.5])


# ---- invariants --------------------------------------------------------------------------------


def all_curricula():
    yield build_curriculum("static")
    yield build_curriculum("staged")
    yield build_curriculum("staged", competence="ema", normalization="calibrate")
    yield build_curriculum("utility", beta=0.5)
    yield build_curriculum("utility", competence="ema", ema_decay=0.5, normalization="calibrate")


@pytest.mark.parametrize("index", range(5))
def test_weights_sum_to_one_and_carry_no_grad(index):
    curriculum = list(all_curricula())[index]
    generator = torch.Generator().manual_seed(index)
    for _ in range(3):
        values = torch.rand(3, 12, generator=generator).tolist()
        out = curriculum(rewards_of(*values, requires_grad=True), 4)
        assert out.weights.shape == (3, 3)
        close(out.weights.sum(dim=-1), torch.ones(3))
        for tensor in (out.weights, out.composite, out.normalized, out.competence):
            assert not tensor.requires_grad and tensor.grad_fn is None


@pytest.mark.parametrize("index", range(5))
def test_ties_give_finite_weights_and_the_tied_composite(index):
    curriculum = list(all_curricula())[index]
    out = curriculum(rewards_of([0.3] * 8, [0.3] * 8, [0.3] * 8), 4)
    assert torch.isfinite(out.weights).all() and torch.isfinite(out.composite).all()
    assert (out.sparsity == 0).all()
    close(out.weights.sum(dim=-1), torch.ones(2))
    # Weights sum to 1 and every r̂ is equal, so R̃ is that value (0.3; calibration on a tied
    # first batch has zero span and maps it to 0).
    tied = 0.0 if curriculum.normalizer.mode == "calibrate" else 0.3
    close(out.composite, torch.full((8,), tied))


def test_nan_reward_gives_nan_composite_only_for_that_sample():
    curriculum = build_curriculum("utility")
    out = curriculum(rewards_of([0.2, float("nan"), 0.6, 0.8], [0.5] * 4, [0.1, 0.2, 0.3, 0.4]), 2)
    assert torch.isfinite(out.weights).all()
    assert torch.isnan(out.composite[1]) and torch.isfinite(out.composite[[0, 2, 3]]).all()
    close(out.competence[0, 0], 0.2)  # nanmean of (0.2, NaN)


def test_diagnostics_report_weight_mean_std_over_groups():
    curriculum = build_curriculum("static", static_weights=(1.0, 1.0, 2.0))
    out = curriculum(rewards_of([0.0, 1.0] * 2, [0.5] * 4, [0.25] * 4), 2)
    d = out.diagnostics
    assert d["weight_mean/ta"] == pytest.approx(0.5, abs=ATOL)
    assert d["weight_std/ta"] == pytest.approx(0.0, abs=ATOL)
    assert d["competence/vq"] == pytest.approx(0.5, abs=ATOL)
    assert d["stage_mean"] == 2.0


# ---- state: EMA, calibration, checkpoint -------------------------------------------------------


def test_ema_competence_matches_hand_computation_and_is_shared():
    # d = 0.5; batch means of vq: 0.2, 0.6, 1.0 → EMA 0.2 (first batch), 0.4, 0.7.
    curriculum = build_curriculum("staged", competence="ema", ema_decay=0.5)
    batches = [[0.0, 0.4, 0.2, 0.2], [0.6, 0.6, 1.0, 0.2], [1.0, 1.0, 1.0, 1.0]]
    expected = [0.2, 0.4, 0.7]
    for vq, c in zip(batches, expected, strict=True):
        out = curriculum(rewards_of(vq, [0.5] * 4, [0.0] * 4), 2)
        # Used after including this batch, identical for both groups.
        close(out.competence, [[c, 0.5, 0.0], [c, 0.5, 0.0]])
    assert curriculum.state_dict()["competence"]["updates"] == 3


def test_calibration_window_sets_lo_hi_then_freezes():
    curriculum = build_curriculum(
        "static", ("vq", "mq"), normalization="calibrate", calibration_steps=2
    )
    # Call 1: vq in [2, 6] → r̂ = (r − 2)/4. mq in [10, 20].
    out = curriculum({"vq": torch.tensor([2.0, 6.0]), "mq": torch.tensor([10.0, 20.0])}, 2)
    close(out.normalized, [[0.0, 0.0], [1.0, 1.0]])
    # Call 2: vq min drops to 1 → bounds [1, 6]; r̂(4) = 3/5. mq max rises to 30 → [10, 30].
    out = curriculum({"vq": torch.tensor([1.0, 4.0]), "mq": torch.tensor([15.0, 30.0])}, 2)
    close(out.normalized, [[0.0, 0.25], [0.6, 1.0]])
    # Call 3: frozen at vq [1, 6], mq [10, 30]; outside values clip to [0, 1].
    out = curriculum(
        {"vq": torch.tensor([0.0, 3.5, 10.0]), "mq": torch.tensor([5.0, 20.0, 40.0])}, 3
    )
    close(out.normalized, [[0.0, 0.0], [0.5, 0.5], [1.0, 1.0]])
    state = curriculum.state_dict()["normalizer"]
    assert (state["lo"], state["hi"], state["calls"]) == ([1.0, 10.0], [6.0, 30.0], 3)


def test_fixed_bounds_per_component():
    curriculum = build_curriculum(
        "static", normalization="fixed", lo={"vq": -2.0, "mq": 0.0, "ta": 0.0}, hi=(2.0, 4.0, 1.0)
    )
    out = curriculum(rewards_of([-3.0, 1.0], [1.0, 5.0], [0.5, 0.5]), 2)
    close(out.normalized, [[0.0, 0.25, 0.5], [0.75, 1.0, 0.5]])


def test_state_dict_round_trip_continues_identically():
    def make():
        return build_curriculum(
            "utility",
            competence="ema",
            ema_decay=0.8,
            normalization="calibrate",
            calibration_steps=4,
        )

    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(3, 8, generator=generator) * 2 + 1).tolist() for _ in range(6)]
    reference, interrupted = make(), make()
    expected = [reference(rewards_of(*b), 4) for b in batches]
    for b in batches[:3]:
        interrupted(rewards_of(*b), 4)
    state = json.loads(json.dumps(interrupted.state_dict(), allow_nan=False))
    resumed = make()
    resumed.load_state_dict(state)
    assert resumed.state_dict() == interrupted.state_dict()
    for b, want in zip(batches[3:], expected[3:], strict=True):
        got = resumed(rewards_of(*b), 4)
        assert torch.equal(got.composite, want.composite)
        assert torch.equal(got.weights, want.weights)
    # Without the state the calibration restarts and the outputs differ.
    fresh = make()
    assert not torch.equal(fresh(rewards_of(*batches[3]), 4).composite, expected[3].composite)


def test_load_state_dict_refuses_other_components():
    state = build_curriculum("staged").state_dict()
    other = build_curriculum("staged", ("VQ", "MQ", "TA"))
    with pytest.raises(ValueError, match="VQ"):
        other.load_state_dict(state)


# ---- bad input ---------------------------------------------------------------------------------

BAD_CONFIGS = [
    (dict(strategy="staged", thresholds=(0.75, 1.2)), "1.2"),
    (dict(strategy="utility", thresholds=(-0.1, 0.75)), "-0.1"),
    (dict(strategy="staged", thresholds=(0.75,)), "[0.75]"),
    (dict(strategy="staged", temperature=0.0), "temperature = 0.0"),
    (dict(strategy="utility", temperature=-1.0), "temperature = -1.0"),
    (dict(strategy="utility", sharpness=0.0), "sharpness = 0.0"),
    (dict(strategy="static", lo=1.0, hi=1.0), "lo = 1.0, hi = 1.0"),
    (dict(strategy="cosine"), "cosine"),
    (dict(strategy="utility", beta=-0.1), "beta = -0.1"),
    (dict(strategy="staged", competence="ema", ema_decay=1.0), "ema_decay = 1.0"),
    (dict(strategy="staged", competence="ema", ema_decay=-0.5), "ema_decay = -0.5"),
    (dict(strategy="staged", competence="window"), "window"),
    (dict(strategy="static", normalization="zscore"), "zscore"),
    (dict(strategy="static", normalization="calibrate", calibration_steps=0), "0"),
    (dict(strategy="staged", normalization="none"), "none"),
    (dict(strategy="static", static_weights=(1.0, -1.0, 1.0)), "-1.0"),
    (dict(strategy="static", static_weights=(1.0, 1.0)), "[1.0, 1.0]"),
    (dict(strategy="static", components=("vq", "vq")), "['vq', 'vq']"),
]


@pytest.mark.parametrize(("config", "offending"), BAD_CONFIGS)
def test_bad_config_raises_value_error_naming_the_value(config, offending):
    with pytest.raises(ValueError, match=re.escape(offending)):
        build_curriculum(**config)


def test_unknown_strategy_lists_the_allowed_ones():
    with pytest.raises(ValueError) as info:
        build_curriculum("cosine")
    assert all(name in str(info.value) for name in STRATEGIES)


def test_component_missing_from_reward_lists_available_ones():
    curriculum = build_curriculum("static", ("vq", "mq", "xx"))
    with pytest.raises(ValueError, match=r"\['xx'\].*\['mq', 'ta', 'vq'\]"):
        curriculum(rewards_of([0.1] * 4, [0.1] * 4, [0.1] * 4), 2)


def test_batch_not_divisible_by_group_size():
    curriculum = build_curriculum("staged")
    with pytest.raises(ValueError, match=r"B = 6 .* G = 4"):
        curriculum(rewards_of([0.1] * 6, [0.1] * 6, [0.1] * 6), 4)
    # A rejected batch must not advance the state.
    assert curriculum.state_dict()["normalizer"]["calls"] == 0
