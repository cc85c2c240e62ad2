"""Every backbone family on a tiny random folder: equal to its stock diffusers pipeline."""

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


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory):
    """Each family's tiny folder, built once per session on first use."""
    built = {}

    def folder(name):
        if name not in built:
            built[name] = CASES[name].build(tmp_path_factory.mktemp(name))
        return built[name]

    return folder


@pytest.mark.parametrize("guidance", [1.0, 3.0])
@pytest.mark.parametrize("name", list(CASES))
def test_ode_rollout_and_decode_equal_the_stock_pipeline(family_dirs, name, guidance):
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
