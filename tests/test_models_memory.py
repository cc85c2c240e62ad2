"""Real-size memory features on the tiny folders: offloading text encoders and VAE between
phases, prompt embeddings cached (in memory and on disk) bitwise equal to fresh ones, gradient
checkpointing, the attention backend and torch.compile switches."""

from __future__ import annotations

import pytest
import torch
from backbone_cases import CASES
from tiny_pipelines import PROMPTS

from videogrpo.errors import UserError
from videogrpo.models.text_cache import TextCache

pytestmark = pytest.mark.usefixtures("one_thread")


def record_moves(module: torch.nn.Module, name: str, log: list) -> None:
    """Log every `.to(device)` the adapter asks of `module` (instance attribute: others are
    untouched)."""
    original = module.to

    def to(*args, **kwargs):
        device = args[0] if args else kwargs.get("device")
        log.append((name, torch.device(device)))
        return original(*args, **kwargs)

    module.to = to


@pytest.mark.parametrize("name", ["hunyuan_video_15", "wan22_ti2v"])
def test_offload_keeps_text_encoders_and_vae_off_the_device_while_the_transformer_runs(
    family_dirs, name
):
    """Encode brings the text encoder(s) onto the training device, decode the VAE; the next
    transformer call sends them back first, so no velocity — rollout or update — runs with them
    resident. On this CPU-only machine the training and offload devices are both the CPU, so what
    is checked is the moves the adapter asks for and when; a GPU run checks the placement
    itself (benchmarks/check_cuda.py)."""
    model = CASES[name].load(family_dirs(name), memory={"offload": True})
    moves: list = []
    offloadable = model.offloadable()
    for component, module in offloadable.items():
        record_moves(module, component, moves)
    resident_at_forward = []
    model.transformer.register_forward_pre_hook(
        lambda *_: resident_at_forward.append(model.resident_components())
    )
    conditioning = model.encode(PROMPTS)
    text = set(model.text_encoder_names)
    assert model.resident_components() == text
    assert {(c, model.training_device) for c in text} <= set(moves)
    latents = torch.randn(2, *model.latent_shape)
    model.velocity(latents, torch.tensor([0.5]), conditioning, 1.0)
    model.decode(latents)
    assert model.resident_components() == {"vae"}
    with torch.enable_grad():
        model.velocity(latents, torch.tensor([0.5]), conditioning, 1.0)
    assert resident_at_forward == [set(), set()]
    last_move = {component: device for component, device in moves}
    assert last_move == dict.fromkeys(offloadable, torch.device("cpu"))


def test_without_offload_nothing_moves(family_dirs):
    model = CASES["wan22_ti2v"].load(family_dirs("wan22_ti2v"), memory={"offload": False})
    moves: list = []
    for component, module in model.offloadable().items():
        record_moves(module, component, moves)
    conditioning = model.encode(PROMPTS)
    latents = torch.randn(2, *model.latent_shape)
    model.decode(model.velocity(latents, torch.tensor([0.5]), conditioning, 1.0))
    assert moves == [] and model.resident_components() == set(model.offloadable())


@pytest.mark.parametrize("name", ["hunyuan_video_15", "ltx", "wan22_a14b"])
def test_cached_embeddings_equal_fresh_ones_in_memory_and_from_disk(
    family_dirs, tmp_path, monkeypatch, name
):
    """Bitwise: a second encode (memory), and another model instance reading the disk cache
    without running its text encoder, give the conditioning a fresh encode gives; the files hold
    only the rows up to each prompt's last real token."""
    case, folder = CASES[name], family_dirs(name)
    prompts, negative = [PROMPTS[0], PROMPTS[1], PROMPTS[0]], "a square"
    fresh = case.load(folder).encode(prompts, negative)

    cached = case.load(folder, memory={"text_cache_dir": str(tmp_path)})
    first = cached.encode(prompts, negative)
    again = cached.encode(prompts, negative)
    reader = case.load(folder, memory={"text_cache_dir": str(tmp_path)})

    def no_text_encoder(_prompts):
        raise AssertionError("the disk cache should have answered")

    monkeypatch.setattr(reader, "encode_fields", no_text_encoder)
    from_disk = reader.encode(prompts, negative)
    for conditioning in (first, again, from_disk):
        assert conditioning.fields.keys() == fresh.fields.keys()
        for field, value in fresh.fields.items():
            assert torch.equal(conditioning[field], value), field
    (entry_file, *_) = sorted(tmp_path.rglob("*.safetensors"))
    stored = TextCache(tmp_path, entry_file.parent.parent.name)
    entry = stored.get(PROMPTS[0])
    assert entry is not None
    for field, full_length in entry.lengths.items():
        assert entry.fields[field].shape[0] < full_length  # padding was not stored


def test_a_disk_cache_of_other_settings_is_not_reused(family_dirs, tmp_path):
    """The cache folder is keyed by what produced the embeddings: another max_sequence_length
    writes a second folder instead of reading the first."""
    case, folder = CASES["ltx"], family_dirs("ltx")
    case.load(folder, memory={"text_cache_dir": str(tmp_path)}).encode(PROMPTS)
    other = case.load(
        folder, memory={"text_cache_dir": str(tmp_path)}, options={"max_sequence_length": 6}
    )
    assert other.encode(PROMPTS)["text"].shape[1] == 6
    assert len([path for path in tmp_path.iterdir() if path.is_dir()]) == 2


@pytest.mark.parametrize("name", list(CASES))
def test_gradient_checkpointing_keeps_velocity_and_gradients(family_dirs, name):
    """Recomputing the blocks in backward changes neither the forward nor the LoRA gradient
    (1e-6: the same float32 ops run again; only the order of gradient accumulation may
    differ)."""
    case, folder = CASES[name], family_dirs(name)
    results = []
    for checkpointing in (False, True):
        model = case.load(folder, memory={"gradient_checkpointing": checkpointing})
        model.enable_lora(4, 8)
        with torch.no_grad():  # a non-zero B, so the LoRA has a gradient path to its A too
            for param in model.trainable_parameters():
                param.copy_(torch.randn_like(param, generator=torch.Generator().manual_seed(0)))
        assert all(m.gradient_checkpointing == checkpointing for m in model.denoisers().values())
        latents = torch.randn(2, *model.latent_shape, generator=torch.Generator().manual_seed(1))
        sigma = torch.tensor([0.95])  # the high-noise expert of Wan 2.2 A14B
        model.train()
        velocity = model.velocity(latents, sigma, model.encode(PROMPTS), 1.0)
        velocity.square().mean().backward()
        grads = [p.grad.clone() for p in model.trainable_parameters() if p.grad is not None]
        assert grads
        results.append((velocity.detach(), grads))
    (plain, plain_grads), (checkpointed, checkpointed_grads) = results
    torch.testing.assert_close(checkpointed, plain, atol=1e-6, rtol=0)
    for a, b in zip(checkpointed_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_compile_wraps_each_repeated_block_and_an_unknown_attention_backend_is_refused(
    family_dirs,
):
    """model.compile compiles the transformer blocks lazily (nothing is compiled until a forward,
    so this test stays fast); a backend diffusers does not know is a one-line error."""
    from videogrpo.config import TrainConfig
    from videogrpo.models.registry import build_model

    config = TrainConfig()
    config.model.type, config.model.path = "wan", str(family_dirs("wan22_ti2v"))
    config.model.compile = True
    model = build_model(config.model, config.sampling, config.memory)
    blocks = model.transformer.blocks
    assert all(block._compiled_call_impl is not None for block in blocks)
    config.model.compile, config.model.attention_backend = False, "not_a_backend"
    with pytest.raises(UserError, match=r"model.attention_backend: 'not_a_backend' is not a") as e:
        build_model(config.model, config.sampling, config.memory)
    assert "\n" not in str(e.value)
    config.model.attention_backend = "native"
    model = build_model(config.model, config.sampling, config.memory)
    processor = model.transformer.blocks[0].attn1.processor
    assert getattr(processor, "_attention_backend", None) == "native"


def test_with_a_text_cache_dir_every_prompt_is_encoded_before_the_first_iteration(
    family_dirs, tmp_path, monkeypatch
):
    """memory.text_cache_dir: the run encodes its train and eval prompts (and the negative one)
    up front, in batches; no iteration or eval after that runs the text encoder again."""
    from conftest import PRESETS_DIR

    from videogrpo.models.wan import WanGenerator
    from videogrpo.runs.train import train
    from videogrpo.training import trainer as trainer_module

    events = []
    encode_fields, step = WanGenerator.encode_fields, trainer_module.GRPOTrainer.step

    def counted_encode(self, prompts):
        events.append(("encode", tuple(prompts)))
        return encode_fields(self, prompts)

    def counted_step(self, *args, **kwargs):
        events.append(("step", ()))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(WanGenerator, "encode_fields", counted_encode)
    monkeypatch.setattr(trainer_module.GRPOTrainer, "step", counted_step)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    settings = [
        "model.type=wan", f"model.path={family_dirs('wan22_ti2v')}", "model.lora_rank=4",
        f"reward.type={__name__}:Redness", f"run.output_dir={tmp_path}", "run.iterations=2",
        "run.videos_every=0", "sampling.num_steps=3", f"data.prompts={prompts}",
        "data.prompts_per_iteration=2", "data.group_size=2", f"eval.prompts={prompts}",
        "eval.num_steps=2", "eval.samples_per_prompt=1", "eval.videos=0",
        f"memory.text_cache_dir={tmp_path / 'cache'}", "sampling.negative_prompt=a square",
    ]  # fmt: skip
    train(PRESETS_DIR / "sage.yaml", settings, progress=False)
    encodes = [prompts for kind, prompts in events if kind == "encode"]
    assert [kind for kind, _ in events] == ["encode", "step", "step"]
    assert sorted(encodes[0]) == sorted([*PROMPTS, "a square"])


class Redness:
    components = ("redness",)

    def __call__(self, videos, prompts):
        return {"redness": videos[..., 0].mean(dim=(1, 2, 3)) - videos[..., 2].mean(dim=(1, 2, 3))}


@pytest.mark.parametrize("name", ["ltx", "wan22_ti2v"])
def test_a_prompt_longer_than_the_encoder_takes_is_truncated_as_diffusers_does(
    family_dirs, name, caplog
):
    """The conditioning of a too-long prompt is the pipeline's own truncated embedding (trimmed
    and re-padded with zeros where the pipeline leaves masked rows), and the run says so."""
    model = CASES[name].load(family_dirs(name))
    limit = model.settings["max_sequence_length"]
    long_prompt = " ".join(["a red circle moving left slowly"] * limit)
    with caplog.at_level("WARNING", logger="videogrpo.models.pipeline"):
        ours = model.encode([long_prompt])
    assert f"1 prompt(s) exceed the text encoder's {limit} tokens" in caplog.text
    theirs = model.encode_fields([long_prompt])  # the pipeline's encode_prompt, uncached
    assert ours["text"].shape[1] == limit
    torch.testing.assert_close(ours["text"], theirs["text"], atol=0, rtol=0)


def test_full_finetuning_of_a_bfloat16_transformer_keeps_float32_weights_under_autocast(
    family_dirs,
):
    """AdamW steps of 1e-5 vanish below bfloat16's resolution, so the trained weights are float32
    and the forward runs under bfloat16 autocast: close to the float32 model (bfloat16's 8-bit
    mantissa: ~1e-2 relative), and the reference is the initial weights exactly."""
    case, folder = CASES["wan22_ti2v"], family_dirs("wan22_ti2v")
    float32 = case.load(folder)
    model = case.load(folder, dtype="bfloat16")
    model.enable_full_finetuning()
    assert model.autocast_dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.trainable_parameters())
    latents = torch.randn(2, *model.latent_shape, generator=torch.Generator().manual_seed(0))
    conditioning = model.encode(PROMPTS)
    sigma = torch.tensor([0.7])
    mixed = model.velocity(latents, sigma, conditioning, 1.0)
    exact = float32.velocity(latents, sigma, float32.encode(PROMPTS), 1.0)
    assert mixed.dtype == torch.float32 and torch.isfinite(mixed).all()
    assert (mixed - exact).abs().max() < 0.05 * exact.abs().max()
    with torch.no_grad():
        for param in model.trainable_parameters():
            param.add_(0.01)
    with model.reference_policy():
        reference = model.velocity(latents, sigma, conditioning, 1.0)
    torch.testing.assert_close(reference, mixed, atol=0, rtol=0)
