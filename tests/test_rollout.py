"""The sampler: ODE = diffusers' WanPipeline, exact log-prob replay, per-sample seeds.

Guards DESIGN.md invariants: "η = 0 (or `ode`) rollout equals ... the diffusers pipeline's own
output for the same noise and prompt" and "Replaying a stored step with unchanged weights gives
ratio exactly 1 (same batch composition, float32 step math, stored latents round-tripped)".
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from videogrpo.core import schedule, sde
from videogrpo.embedded.tiny_wan import TinyWan, load_default
from videogrpo.embedded.world.grammar import HELDOUT_PROMPTS, TRAIN_PROMPTS
from videogrpo.training.rollout import (
    initial_noise,
    row_batches,
    sample_trajectories,
    shared_noise_seeds,
)
from videogrpo.training.step import StepSettings

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_STEPS, SHIFT = 4, 3.0
SIGMAS = schedule.sigmas(NUM_STEPS, SHIFT)
ODE_MASK = torch.zeros(NUM_STEPS, dtype=torch.bool)


def frozen(model_dir) -> TinyWan:
    return TinyWan.from_pretrained(model_dir)


def moved_lora_model(model_dir, seed: int = 0) -> TinyWan:
    """LoRA enabled and moved off zero, so replay runs through the adapter like in training."""
    model = frozen(model_dir)
    model.enable_lora(rank=4, alpha=8.0)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.trainable_parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return model


def rollout(model, prompts, seeds, rule="sage", guidance=1.0, **kwargs):
    settings = StepSettings(rule, 0.0 if rule == "ode" else 0.5, SIGMAS, guidance)
    return sample_trajectories(model, settings, model.encode(prompts), seeds, **kwargs)


def ode_final(model, prompts, seeds, guidance=1.0) -> torch.Tensor:
    return rollout(model, prompts, seeds, "ode", guidance, sde_mask=ODE_MASK).final


@pytest.mark.parametrize(
    ("which", "guidance"), [("random", 1.0), ("random", 3.0), ("shipped default", 1.0)]
)
def test_ode_rollout_equals_the_diffusers_wan_pipeline(tiny_model_dir, which, guidance):
    """Our Euler loop on our σ grid = WanPipeline + FlowMatchEulerDiscreteScheduler, same noise.

    The scheduler shifts the σ it is given (σ ← sσ/(1 + (s−1)σ)), so it gets the UNshifted
    linspace(1, 0, T+1)[:-1]; WanPipeline.__call__ does not forward `sigmas=`, so set_timesteps is
    wrapped to pass them. Tolerance 1e-4 abs: diffusers keeps σ and timesteps in float32, we
    derive them from a float64 grid.
    """
    model = frozen(tiny_model_dir) if which == "random" else load_default()
    prompts, seeds = [HELDOUT_PROMPTS[0], TRAIN_PROMPTS[5]], [11, 12]
    ours = ode_final(model, prompts, seeds, guidance)

    pipe = model.to_diffusers_pipeline(shift=SHIFT)
    pipe.set_progress_bar_config(disable=True)
    set_timesteps = pipe.scheduler.set_timesteps
    unshifted = np.linspace(1.0, 0.0, NUM_STEPS + 1)[:-1]

    def set_our_sigmas(num_inference_steps, device=None, **_):
        set_timesteps(num_inference_steps, device=device, sigmas=unshifted)

    pipe.scheduler.set_timesteps = set_our_sigmas
    theirs = pipe(
        prompt=prompts,
        latents=initial_noise(model, seeds),
        num_inference_steps=NUM_STEPS,
        guidance_scale=guidance,  # 1.0: WanPipeline skips the unconditional pass, as we do
        output_type="latent",
        max_sequence_length=model.config.max_text_len,  # same zero-padding length as ours
        # Unused when latents are given; chosen only to pass the pipeline's shape checks.
        height=64,
        width=64,
        num_frames=1,
    ).frames
    torch.testing.assert_close(pipe.scheduler.sigmas.double(), SIGMAS, atol=1e-6, rtol=0)
    assert theirs.shape == ours.shape == (2, *model.latent_shape)
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
    # Not trivially equal: the model moved the noise a lot in 4 steps.
    assert (ours - initial_noise(model, seeds)).abs().max() > 0.1


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_sage_log_probs_replay_exactly_with_the_rollout_batches(tiny_model_dir, guidance):
    """Replaying every stored step in the rollout's batches (trained rows, then the others, per
    chunk) in training mode with autograd on gives the stored log π_old bitwise: ratio = 1."""
    model = moved_lora_model(tiny_model_dir)
    prompts = [TRAIN_PROMPTS[i] for i in (0, 0, 7, 7, 3, 3)]
    seeds = [1, 2, 3, 4, 5, 6]
    sde_mask = torch.tensor([True, True, True, False])  # the last step stays ODE
    generator = torch.Generator().manual_seed(0)
    trained = (torch.rand(len(prompts), NUM_STEPS, generator=generator) < 0.6) & sde_mask
    chunks = [torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])]
    model.eval()
    stored = rollout(
        model, prompts, seeds, guidance=guidance, sde_mask=sde_mask, trained=trained, chunks=chunks
    )
    assert stored.log_probs[:3].isfinite().all() and stored.log_probs[3].isnan().all()
    assert stored.states.dtype == torch.float32

    model.train()
    embeddings = model.encode(prompts)
    replayed = 0
    for k in range(NUM_STEPS - 1):
        for chunk in chunks:
            for rows in row_batches(chunk, trained[:, k]):
                velocity = model.velocity(
                    stored.states[k, rows],
                    torch.full((rows.numel(),), SIGMAS[k].item()),
                    embeddings.select(rows),
                    guidance,
                )
                assert velocity.requires_grad  # the update's path, with autograd on
                out = sde.step(
                    "sage", velocity, stored.states[k, rows], SIGMAS[k].item(),
                    SIGMAS[k + 1].item(), eta=0.5, prev_sample=stored.states[k + 1, rows],
                )  # fmt: skip
                assert torch.equal(out.log_prob.detach(), stored.log_probs[k, rows]), (k, rows)
                replayed += rows.numel()
    assert replayed == 3 * len(prompts)


def test_initial_noise_depends_only_on_each_samples_seed(tiny_model_dir):
    model = frozen(tiny_model_dir)
    alone = initial_noise(model, [5])
    assert torch.equal(initial_noise(model, [9, 5, 7])[1], alone[0])
    assert not torch.equal(initial_noise(model, [6])[0], alone[0])


def test_exploration_noise_is_independent_of_the_initial_noise(tiny_model_dir):
    """Regression: step 0 drew its noise from a twin of the sample's initial-noise generator, so
    ξ₀ equalled x at σ = 1 and the first SDE step added √Σ₀ more of x itself. Independent draws
    of n elements have |cosine| ≈ 1/√n (≈ 0.01 here); the bug gave exactly 1.
    """
    model = frozen(tiny_model_dir)
    trajectories = rollout(
        model, [TRAIN_PROMPTS[0]], [11], sde_mask=torch.ones(NUM_STEPS, dtype=torch.bool),
        keep_means=True,
    )  # fmt: skip
    step_std = sde.std("sage", SIGMAS[0], SIGMAS[1], 0.5)
    step_noise = ((trajectories.states[1] - trajectories.means[0]) / step_std).flatten()
    start = trajectories.states[0].flatten()
    assert torch.equal(trajectories.states[0], initial_noise(model, [11]))
    assert abs(float(torch.nn.functional.cosine_similarity(step_noise, start, dim=0))) < 0.05


def test_shared_initial_noise_starts_a_group_together_and_explores_apart(tiny_model_dir):
    """DanceGRPO's shared noise: one x at σ = 1 per group of G, every sample its own SDE path."""
    model = frozen(tiny_model_dir)
    prompts = [TRAIN_PROMPTS[0]] * 2 + [TRAIN_PROMPTS[1]] * 2
    trajectories = rollout(
        model, prompts, [3, 4, 5, 6], sde_mask=torch.ones(NUM_STEPS, dtype=torch.bool),
        initial_seeds=shared_noise_seeds([3, 4, 5, 6], 2),
    )  # fmt: skip
    start = trajectories.states[0]
    assert torch.equal(start[0], start[1]) and torch.equal(start[2], start[3])
    assert torch.equal(start[0], initial_noise(model, [3])[0])
    assert torch.equal(start[2], initial_noise(model, [5])[0])
    assert not torch.equal(start[0], start[2])
    final = trajectories.final
    assert (final[0] - final[1]).abs().max() > 0.1 and (final[2] - final[3]).abs().max() > 0.1
    with pytest.raises(ValueError, match="groups of 3"):
        shared_noise_seeds([3, 4, 5, 6], 3)


def test_a_samples_video_does_not_depend_on_its_batch_neighbours(tiny_model_dir):
    """ODE: sample 0 alone vs in a batch of 3 (other prompts and seeds). A matmul over a
    different batch may round differently, nothing more: |x| ≤ 3 here (a float32 ulp is
    ≤ 2.4e-7) and 4 steps ended 1.1e-6 apart on one Intel CPU, so 1e-5 abs leaves ~10× for
    other CPU makes; a sample that saw its neighbours would be off by O(0.1)."""
    model = frozen(tiny_model_dir)
    prompt = HELDOUT_PROMPTS[1]
    alone = ode_final(model, [prompt], [5])
    in_batch = ode_final(model, [prompt, TRAIN_PROMPTS[0], TRAIN_PROMPTS[9]], [5, 6, 7])
    torch.testing.assert_close(in_batch[0], alone[0], atol=1e-5, rtol=0)
    assert not torch.allclose(in_batch[1], alone[0], atol=1e-2)


def test_sde_noise_is_per_sample_too(tiny_model_dir):
    """sage: each sample's step noise comes from its own seed, so neighbours do not change it
    (1e-4 abs over 3 stochastic steps) and the same seeds give bitwise the same rollout."""
    model = frozen(tiny_model_dir)
    sde_mask = torch.tensor([True, True, True, False])

    def run(prompts, seeds):
        return rollout(model, prompts, seeds, sde_mask=sde_mask)

    prompt = HELDOUT_PROMPTS[2]
    alone = run([prompt], [8])
    batch = run([prompt, TRAIN_PROMPTS[1], prompt], [8, 9, 10])
    again = run([prompt, TRAIN_PROMPTS[1], prompt], [8, 9, 10])
    torch.testing.assert_close(batch.final[0], alone.final[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(batch.log_probs[:3, 0], alone.log_probs[:3, 0], atol=1e-4, rtol=0)
    assert torch.equal(again.states, batch.states)
    assert torch.equal(again.log_probs.nan_to_num(), batch.log_probs.nan_to_num())
    # Same prompt, other seed: another sample (the SDE noise really is per seed).
    assert not torch.allclose(batch.final[2], batch.final[0], atol=1e-2)
