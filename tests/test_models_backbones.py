"""Every backbone family on a tiny random folder — Wan 2.2 A14B (two experts), Wan 2.2 TI2V,
HunyuanVideo 1.5, LTX-Video — samples and decodes what its stock diffusers pipeline does."""

from __future__ import annotations

import pytest
import torch
from backbone_cases import CASES, load_stock_pipeline, stock_sample
from tiny_pipelines import PROMPTS

from videogrpo.core import schedule
from videogrpo.models.base import VideoGenerator
from videogrpo.training.rollout import initial_noise, sample_final
from videogrpo.training.step import StepSettings

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_STEPS = 4


@pytest.mark.parametrize("guidance", [1.0, 3.0])
@pytest.mark.parametrize("name", list(CASES))
def test_ode_rollout_and_decode_equal_the_stock_pipeline(family_dirs, name, guidance):
    """Same noise, prompts and negative prompt, videogrpo's σ grid. Latents: 1e-4 abs, as the Wan
    2.1 check (diffusers keeps σ in float32 where we derive it from a float64 grid, runs CFG as
    two forwards where we batch one, and its padding rows hold what the text encoder put there
    where ours hold masked zeros; measured ≤ 1.1e-6). Video decoded from the pipeline's own
    latents: the same float32 ops on the same numbers, 1e-6."""
    case = CASES[name]
    folder = family_dirs(name)
    model = case.load(folder)
    assert isinstance(model, VideoGenerator)
    seeds, negative = [11, 12], "a square"
    settings = StepSettings("ode", 0.0, schedule.sigmas(NUM_STEPS, case.shift), guidance)
    ours = sample_final(
        model, settings, model.encode(PROMPTS, negative), seeds,
        sde_mask=torch.zeros(NUM_STEPS, dtype=torch.bool),
    )  # fmt: skip
    pipe = load_stock_pipeline(case, folder)
    noise = initial_noise(model, seeds)
    theirs = stock_sample(
        case, pipe, noise, PROMPTS, num_steps=NUM_STEPS, guidance=guidance, negative=negative
    )
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
    assert (ours - noise).abs().max() > 0.1  # the model really moved it
    video = stock_sample(
        case, pipe, noise[:1], PROMPTS[:1], num_steps=NUM_STEPS, guidance=guidance,
        negative=negative, decode=True,
    )  # fmt: skip
    pipe_latents = stock_sample(
        case, pipe, noise[:1], PROMPTS[:1], num_steps=NUM_STEPS, guidance=guidance,
        negative=negative,
    )  # fmt: skip
    torch.testing.assert_close(model.decode(pipe_latents), video, atol=1e-6, rtol=0)


def test_ltx_dynamic_shift_is_the_shift_ltxpipeline_applies_at_that_size(family_dirs):
    """With use_dynamic_shifting (the released LTX scheduler), LTXPipeline's σ grid at this video
    size is videogrpo's grid at sampling.shift = dynamic_shift() (1e-6: float32 scheduler)."""
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift

    model = CASES["ltx"].load(family_dirs("ltx"))
    config = dict(use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05)
    scheduler = FlowMatchEulerDiscreteScheduler(**config)
    model.pipeline.scheduler = scheduler
    _, frames, height, width = model.latent_shape
    mu = calculate_shift(frames * height * width, 256, 4096, 0.95, 2.05)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / NUM_STEPS, NUM_STEPS), mu=mu)
    expected = schedule.sigmas(NUM_STEPS, model.dynamic_shift()).float()
    torch.testing.assert_close(scheduler.sigmas, expected, atol=1e-6, rtol=0)
    assert model.dynamic_shift() > 1.0


def test_vae_slicing_and_tiling_switch_on_diffusers_own_modes(family_dirs):
    plain = CASES["wan22_ti2v"].load(family_dirs("wan22_ti2v"))
    both = CASES["wan22_ti2v"].load(
        family_dirs("wan22_ti2v"), memory={"vae_slicing": True, "vae_tiling": True}
    )
    assert not plain.vae.use_slicing and not plain.vae.use_tiling
    assert both.vae.use_slicing and both.vae.use_tiling
