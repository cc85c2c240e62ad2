"""The clean-prediction head: a velocity model outside, an x̂₀ predictor inside."""

import dataclasses
import json

import pytest
import torch
from conftest import MICRO_CONFIG, MICRO_WORDS
from diffusers import WanTransformer3DModel

from videogrpo.embedded.clean_prediction import MIN_CONVERSION_SIGMA
from videogrpo.embedded.tiny_wan import TinyWan, TinyWanConfig
from videogrpo.errors import UserError
from videogrpo.training.rollout import initial_noise

# Float32 round-off of one conversion (x − x̂₀)/σ on values of order 1.
TOLERANCE = 1e-5


def models() -> tuple[TinyWan, TinyWan]:
    """The same weights with a clean-prediction head and with the plain velocity head."""
    clean = TinyWan(dataclasses.replace(MICRO_CONFIG, prediction="clean"), MICRO_WORDS).eval()
    plain = TinyWan(dataclasses.replace(MICRO_CONFIG, prediction="velocity"), MICRO_WORDS).eval()
    plain.load_state_dict(clean.state_dict())
    return clean, plain


def raw_and_velocity(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    clean, plain = models()
    latents = initial_noise(clean, list(range(len(sigma))))
    embeddings = clean.encode(["a red circle moves left"] * len(sigma))
    with torch.no_grad():
        velocity = clean.velocity(latents, sigma, embeddings, guidance_scale=1.0)
        network_output = plain.velocity(latents, sigma, embeddings, guidance_scale=1.0)
    return latents, network_output, velocity


def test_velocity_is_the_flow_conversion_of_the_networks_clean_estimate():
    sigma = torch.tensor([0.2, 0.7, 1.0])
    latents, x0_hat, velocity = raw_and_velocity(sigma)
    expected = (latents - x0_hat) / sigma.reshape(-1, 1, 1, 1, 1)
    torch.testing.assert_close(velocity, expected, rtol=TOLERANCE, atol=TOLERANCE)


def test_an_euler_step_to_sigma_zero_lands_on_the_clean_estimate():
    # x₀ = x_σ − σ·v must return exactly the network's x̂₀: no residual noise in the last step.
    sigma = torch.tensor([0.25, 0.6])
    latents, x0_hat, velocity = raw_and_velocity(sigma)
    landed = latents - sigma.reshape(-1, 1, 1, 1, 1) * velocity
    torch.testing.assert_close(landed, x0_hat, rtol=TOLERANCE, atol=TOLERANCE)


def test_sigma_is_floored_so_the_velocity_stays_finite_at_zero_noise():
    sigma = torch.tensor([0.0, MIN_CONVERSION_SIGMA / 2])
    latents, x0_hat, velocity = raw_and_velocity(sigma)
    assert torch.isfinite(velocity).all()
    torch.testing.assert_close(velocity[0], (latents[0] - x0_hat[0]) / MIN_CONVERSION_SIGMA)


def test_the_head_is_a_wan_transformer_with_the_same_parameters():
    clean, plain = models()
    assert isinstance(clean.transformer, WanTransformer3DModel)
    assert clean.transformer.state_dict().keys() == plain.transformer.state_dict().keys()


def test_an_unknown_prediction_is_a_user_error_listing_the_choices():
    with pytest.raises(UserError, match="clean.*velocity"):
        TinyWanConfig(prediction="epsilon")


def test_a_model_folder_saved_before_the_head_existed_loads_as_velocity(tmp_path):
    # Its config.json has no "prediction" key and its weights were trained to output velocity.
    clean, _ = models()
    clean.save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    fields = json.loads(config_file.read_text())
    del fields["prediction"]
    config_file.write_text(json.dumps(fields))
    assert TinyWan.from_pretrained(tmp_path).config.prediction == "velocity"
