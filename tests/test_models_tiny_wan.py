"""The tiny Wan as a VideoGenerator: CFG, prompt cache, files, autoencoder, what trains."""

import socket

import pytest
import torch
from conftest import MICRO_CONFIG, MICRO_WORDS

from videogrpo.embedded import tiny_wan
from videogrpo.embedded.tiny_wan import WEIGHTS_FILE, TinyWan, TinyWanConfig
from videogrpo.embedded.world import grammar
from videogrpo.errors import UserError
from videogrpo.models.base import Conditioning, VideoGenerator
from videogrpo.rewards.world import WorldReward
from videogrpo.runs.evaluation import evaluate
from videogrpo.training.build import eval_step_settings
from videogrpo.training.rollout import initial_noise

PROMPTS = ["a red circle moves left", "a blue square moves right slowly on black"]


def frozen_model() -> TinyWan:
    model = TinyWan(MICRO_CONFIG, MICRO_WORDS)
    model.requires_grad_(False)
    return model.eval()


def noisy_batch(model: TinyWan, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    latents = initial_noise(model, list(range(batch)))
    sigma = torch.linspace(0.3, 0.9, batch)
    return latents, sigma


def count_forwards(module: torch.nn.Module) -> list[int]:
    """Batch sizes of every forward call of `module`, appended as they happen."""
    calls: list[int] = []
    module.register_forward_hook(
        lambda _m, args, kwargs, _out: calls.append(len(kwargs["hidden_states"])), with_kwargs=True
    )
    return calls


def test_tiny_wan_satisfies_the_generator_protocol():
    assert isinstance(frozen_model(), VideoGenerator)


def test_cfg_is_one_batched_forward_equal_to_two_separate_ones():
    """Tolerance: the batched forward (4 rows) and the separate ones (2 rows) round their matmuls
    differently. |v| reaches ~15 here, where a float32 ulp is ~1e-6, and the two batch shapes
    land a few ulps apart (2e-6 measured on one Intel CPU): allow 1e-5 per half, which
    v_u + w·(v_c − v_u) amplifies by at most 1 + 2w = 10 at w = 4.5. A wrong guidance formula or
    swapped halves is off by O(0.1)."""
    guidance = 4.5
    model = frozen_model()
    latents, sigma = noisy_batch(model)
    conditioning = model.encode(PROMPTS)
    calls = count_forwards(model.transformer)
    guided = model.velocity(latents, sigma, conditioning, guidance_scale=guidance)
    assert calls == [4]  # cond and uncond of 2 samples in ONE forward
    conditional = model.velocity(latents, sigma, conditioning, guidance_scale=1.0)
    negative = conditioning["negative_text"]
    unconditional_only = Conditioning({"text": negative, "negative_text": negative})
    unconditional = model.velocity(latents, sigma, unconditional_only, guidance_scale=1.0)
    assert calls == [4, 2, 2]  # guidance 1 runs only the conditional half
    expected = unconditional + guidance * (conditional - unconditional)
    torch.testing.assert_close(guided, expected, atol=(1 + 2 * guidance) * 1e-5, rtol=0)
    assert guided.dtype == conditional.dtype == torch.float32
    assert not torch.allclose(conditional, unconditional, atol=1e-3)  # the prompt matters


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
def test_velocity_is_float32_under_bf16_autocast():
    model = frozen_model()
    latents, sigma = noisy_batch(model)
    embeddings = model.encode(PROMPTS)
    full_precision = model.velocity(latents, sigma, embeddings, guidance_scale=2.0)
    model.autocast_dtype = torch.bfloat16
    low_precision = model.velocity(latents, sigma, embeddings, guidance_scale=2.0)
    assert low_precision.dtype == torch.float32
    torch.testing.assert_close(low_precision, full_precision, atol=0.1, rtol=0.05)


def test_one_sigma_for_the_batch_equals_one_per_sample():
    model = frozen_model()
    latents, _ = noisy_batch(model)
    embeddings = model.encode(PROMPTS)
    shared = model.velocity(latents, torch.tensor(0.4), embeddings, guidance_scale=1.0)
    per_sample = model.velocity(latents, torch.full((2,), 0.4), embeddings, guidance_scale=1.0)
    assert torch.equal(shared, per_sample)


def test_prompt_embeddings_are_cached_and_deterministic():
    model = frozen_model()
    encoder_calls = []
    model.text_encoder.register_forward_hook(lambda *_: encoder_calls.append(1))
    first = model.encode(PROMPTS)
    second = model.encode([PROMPTS[1], PROMPTS[0], PROMPTS[1]])
    assert len(encoder_calls) == 1  # prompts and negative prompt encoded once, in one batch
    assert torch.equal(second["text"][1], first["text"][0])
    assert torch.equal(second["text"][0], second["text"][2])
    assert torch.equal(second["negative_text"][0], first["negative_text"][1])
    rebuilt = frozen_model().encode(PROMPTS)  # same seed, another instance
    assert torch.equal(rebuilt["text"], first["text"])
    assert not torch.allclose(first["text"][0], first["text"][1])
    other_negative = model.encode(PROMPTS, negative_prompt="a red circle")
    assert len(encoder_calls) == 2 and torch.equal(other_negative["text"], first["text"])
    assert not torch.equal(other_negative["negative_text"], first["negative_text"])


def test_padding_is_zero_like_wan_pipeline_and_eos_survives_truncation():
    model = frozen_model()
    short = model.encode(["a red circle"])["text"][0]  # 3 words + </s> = 4 tokens
    assert short[4:].abs().sum() == 0 and short[:4].abs().sum(dim=1).min() > 0
    tokens = model.tokenizer("a red circle moves left right slowly on black", truncation=True)
    assert len(tokens.input_ids) == MICRO_CONFIG.max_text_len
    assert tokens.input_ids[-1] == model.tokenizer.eos_token_id
    assert model.tokenizer("a zebra").input_ids[1] == model.tokenizer.unk_token_id


def test_a_trainable_text_encoder_is_not_cached_and_gets_gradients():
    model = TinyWan(MICRO_CONFIG, MICRO_WORDS)  # fresh = pretraining: everything trains
    embeddings = model.encode(PROMPTS)
    assert embeddings["text"].requires_grad and not model._prompt_cache


def test_save_and_load_round_trip_gives_identical_velocities(tmp_path):
    model = frozen_model()
    with torch.no_grad():  # move away from the seeded init so loading must really read the file
        for param in model.parameters():
            param.add_(0.01 * torch.randn_like(param))
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json",
        "model.safetensors",
        "vocabulary.json",
    ]
    loaded = TinyWan.from_pretrained(tmp_path)
    assert loaded.config == model.config and not loaded.trainable_parameters()
    latents, sigma = noisy_batch(model)
    before = model.velocity(latents, sigma, model.encode(PROMPTS), guidance_scale=3.0)
    after = loaded.velocity(latents, sigma, loaded.encode(PROMPTS), guidance_scale=3.0)
    assert torch.equal(before, after)


@pytest.mark.parametrize("damage", ["truncate", "delete", "garbage"])
def test_broken_weights_raise_a_one_line_user_error(tmp_path, damage):
    frozen_model().save_pretrained(tmp_path)
    weights = tmp_path / WEIGHTS_FILE
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "delete":
        weights.unlink()
    else:
        weights.write_bytes(b"not a safetensors file at all")
    with pytest.raises(UserError) as error:
        TinyWan.from_pretrained(tmp_path)
    message = str(error.value)
    assert str(weights) in message and "\n" not in message and "pretrain" in message


def test_load_default_names_the_fix_when_weights_are_absent(tmp_path, monkeypatch):
    monkeypatch.setattr(tiny_wan, "DEFAULT_WEIGHTS_DIR", tmp_path / "tiny_wan")
    with pytest.raises(UserError, match="reinstall videogrpo.*videogrpo pretrain"):
        tiny_wan.load_default()


def test_load_default_works_offline_without_any_network(tmp_path, monkeypatch):
    frozen_model().save_pretrained(tmp_path / "tiny_wan")
    monkeypatch.setattr(tiny_wan, "DEFAULT_WEIGHTS_DIR", tmp_path / "tiny_wan")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*_args, **_kwargs):
        raise AssertionError("loading the tiny model tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    model = tiny_wan.load_default()
    latents, sigma = noisy_batch(model)
    assert model.velocity(latents, sigma, model.encode(PROMPTS), 2.0).isfinite().all()


def test_the_shipped_default_loads_offline_and_draws_the_world(monkeypatch):
    """The weights in the package, not a stand-in: no network, and ODE samples of held-out
    prompts score well above noise (≈0.01) on the world's rewards (the shipped model averages
    0.58 over all 40 held-out prompts; 0.35 leaves room for float differences across machines)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*_args, **_kwargs):
        raise AssertionError("loading the default model tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    model = tiny_wan.load_default()
    prompts = list(grammar.prompts("heldout"))[:4]
    result = evaluate(model, WorldReward(), prompts, eval_step_settings(10, 3.0, 1.0), seed=0)
    assert result.summary["composite"] > 0.35
    assert result.summary["coherent_fraction"] >= 0.5


def test_identity_autoencoder_round_trips_videos():
    model = frozen_model()
    videos = torch.rand(3, MICRO_CONFIG.num_frames, MICRO_CONFIG.height, MICRO_CONFIG.width, 3)
    latents = model.encode_videos(videos)
    assert latents.shape == (3, *model.latent_shape)
    assert latents.min() >= -1 and latents.max() <= 1
    torch.testing.assert_close(model.decode(latents), videos, atol=1e-6, rtol=0)
    assert model.decode(torch.full_like(latents, 5.0)).max() == 1.0  # out of range is clamped


def test_full_finetuning_trains_the_transformer_against_its_initial_weights():
    model = frozen_model()
    model.enable_full_finetuning()
    trainable = {id(p) for p in model.trainable_parameters()}
    assert trainable == {id(p) for p in model.transformer.parameters()}
    latents, sigma = noisy_batch(model)
    embeddings = model.encode(PROMPTS)
    initial = model.velocity(latents, sigma, embeddings, 1.0)
    with torch.no_grad():
        model.transformer.proj_out.weight.add_(0.5)
    moved = model.velocity(latents, sigma, embeddings, 1.0)
    assert not torch.allclose(moved, initial)
    with model.reference_policy(), model.reference_policy():  # nesting is harmless
        assert torch.equal(model.velocity(latents, sigma, embeddings, 1.0), initial)
    assert torch.equal(model.velocity(latents, sigma, embeddings, 1.0), moved)
    with pytest.raises(ValueError, match="once"):
        model.enable_lora(rank=2, alpha=2)


def test_config_rejects_sizes_that_do_not_patchify():
    with pytest.raises(UserError, match="height=20"):
        TinyWanConfig(height=20, patch_size=(1, 8, 8))
