"""One real-size SAGE iteration on one GPU: time per phase, peak memory, MFU of the update.

The transformer is Wan2.1-T2V-1.3B's (its diffusers config, random weights: nothing is
downloaded), in bfloat16 with a rank-64 LoRA and gradient checkpointing, at 480 × 832 × 33
frames (latents 16 × 9 × 60 × 104, 14,040 tokens), with the rest of configs/wan21_1.3b_sage.yaml:
20 `sage` steps at shift 3, CFG 5 (cond and uncond in one forward), 2 prompts × 4 samples, all
19 stochastic steps trained, one optimizer step, the dual trust region. The VAE is Wan 2.1's
(its default config, random weights, float32) and decodes every sample; the reward is the mean
pixel, so the reward phase is the decode (a real reward model adds its own time). Text
embeddings are computed once before timing, by a one-layer stand-in of UMT5's width: a real run
caches them (memory.text_cache_dir) and keeps UMT5 off the GPU.

    python benchmarks/bench_gpu_iteration.py                 # on a CUDA GPU
    python benchmarks/bench_gpu_iteration.py --tiny          # the same code path, CPU-sized

MFU: the model FLOPs of the update phase — the policy's forward and backward for every trained
(sample, step) and the reference forward the KL needs — counted by torch.utils.flop_counter on
the same shapes without checkpointing (the recomputed forward is not model work), divided by
the phase's wall time and by the GPU's dense bfloat16 peak (--peak-tflops, or from the device
name: H100 SXM / H200 989 TFLOPS, H100 PCIe 756, A100 312, NVIDIA data sheets).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from contextlib import contextmanager

import torch
from diffusers import (
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
    WanPipeline,
    WanTransformer3DModel,
)
from torch.utils.flop_counter import FlopCounterMode

from videogrpo.config import load_config
from videogrpo.embedded.text import build_tiny_umt5, build_word_tokenizer
from videogrpo.models.base import MemorySpec, ModelSpec
from videogrpo.models.registry import enable_training
from videogrpo.models.wan import WanGenerator
from videogrpo.training import trainer as trainer_module
from videogrpo.training.trainer import GRPOTrainer

PRESET = "configs/wan21_1.3b_sage.yaml"
# Wan2.1-T2V-1.3B-Diffusers transformer/config.json.
WAN21_13B = dict(
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
    out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30,
    cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
)  # fmt: skip
# --tiny: the same code path at a size a CPU runs in seconds.
TINY = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16,
    out_channels=16, text_dim=64, freq_dim=32, ffn_dim=64, num_layers=2,
    cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
)  # fmt: skip
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "A100": 312.0}
PROMPTS = ["a red fox running through snow at dawn", "a paper boat drifting down a rainy street"]


class MeanPixel:
    """The cheapest reward: the decode is the whole reward phase."""

    components = ("mean_pixel",)

    def __call__(self, videos, prompts):
        return {"mean_pixel": videos.mean(dim=(1, 2, 3, 4))}


def build_model(tiny: bool, device: torch.device, dtype: torch.dtype) -> WanGenerator:
    config = TINY if tiny else WAN21_13B
    text_width = config["text_dim"]
    tokenizer = build_word_tokenizer(sorted({w for p in PROMPTS for w in p.split()}), 512)
    text_encoder = build_tiny_umt5(len(tokenizer), text_width, 1, 2, 64, seed=0)
    vae = AutoencoderKLWan(base_dim=8) if tiny else AutoencoderKLWan()
    transformer = keep_fp32_modules(WanTransformer3DModel(**config).to(dtype))
    pipeline = WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    )  # fmt: skip
    size = dict(num_frames=9, height=64, width=64) if tiny else {}
    spec = ModelSpec(
        dtype=dtype, device=device, memory=MemorySpec(offload=True, gradient_checkpointing=True),
        **size,
    )  # fmt: skip
    return WanGenerator.from_pipeline(pipeline, spec)


def keep_fp32_modules(model: torch.nn.Module) -> torch.nn.Module:
    """Back to float32 what diffusers' from_pretrained keeps in float32 (Wan's norms, time
    embedding, RoPE), so the random model computes as a loaded one would."""
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for name, param in model.named_parameters():
        if any(key in name.split(".") for key in keep):
            param.data = param.data.float()
    return model


def peak_tflops(requested: float | None) -> float | None:
    if requested is not None:
        return requested
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


class PhaseLog:
    """Wall time and peak GPU memory of the trainer's three phases, and every velocity call
    (rows, with or without gradients) made in each."""

    NAMES = {
        "sample_trajectories": "rollout",
        "decode_and_score": "reward",
        "policy_update": "update",
    }

    def __init__(self, model: WanGenerator) -> None:
        self.phase: str | None = None
        self.record: dict[str, dict[str, float]] = {}
        self.calls: list[tuple[str | None, bool, int]] = []
        velocity = model.velocity

        def logged_velocity(latents, *args, **kwargs):
            self.calls.append((self.phase, torch.is_grad_enabled(), latents.shape[0]))
            return velocity(latents, *args, **kwargs)

        model.velocity = logged_velocity

    def new_iteration(self) -> None:
        self.record, self.calls = {}, []

    @contextmanager
    def installed(self):
        originals = {name: getattr(trainer_module, name) for name in self.NAMES}
        for name, function in originals.items():
            setattr(trainer_module, name, self._timed(self.NAMES[name], function))
        try:
            yield
        finally:
            for name, function in originals.items():
                setattr(trainer_module, name, function)

    def _timed(self, phase: str, function: Callable) -> Callable:
        def timed(*args, **kwargs):
            synchronize()
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            self.phase, start = phase, time.perf_counter()
            result = function(*args, **kwargs)
            synchronize()
            self.phase = None
            peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
            self.record[phase] = {"seconds": time.perf_counter() - start, "peak_gib": peak}
            return result

        return timed

    def update_rows(self) -> tuple[int, int]:
        """Rows the update ran with gradients (policy) and without (reference)."""
        policy = sum(rows for phase, grad, rows in self.calls if phase == "update" and grad)
        reference = sum(rows for phase, grad, rows in self.calls if phase == "update" and not grad)
        return policy, reference


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def flops_per_row(trainer: GRPOTrainer, rows: int) -> tuple[float, float]:
    """Model FLOPs per sample of one velocity call: forward + backward, and forward alone,
    counted without checkpointing (its recomputed forward is not model work)."""
    model = trainer.model
    for module in model.denoisers().values():
        module.disable_gradient_checkpointing()
    conditioning = model.encode([PROMPTS[0]] * rows, trainer.config.sampling.negative_prompt)
    latents = torch.randn(rows, *model.latent_shape, device=model.device)
    sigma = torch.full((rows,), 0.5, device=model.device)
    guidance = trainer.config.sampling.guidance_scale
    counts = []
    for grad in (True, False):
        counter = FlopCounterMode(display=False)
        with counter, torch.set_grad_enabled(grad):
            velocity = model.velocity(latents, sigma, conditioning, guidance)
            if grad:
                velocity.square().mean().backward()
        counts.append(counter.get_total_flops() / rows)
    model.zero_grad(set_to_none=True)
    for module in model.denoisers().values():
        module.enable_gradient_checkpointing()
    return counts[0], counts[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CPU-sized smoke run of the script")
    parser.add_argument("--iterations", type=int, default=2, help="measured after 1 warm-up")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bfloat16 peak")
    parser.add_argument("--output", help="also write the results as JSON here")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16
    config = load_config(PRESET, ["run.seed=0", "reward.weights={mean_pixel: 1.0}"])
    torch.manual_seed(0)
    model = enable_training(build_model(args.tiny, device, dtype), config.model)
    trainer = GRPOTrainer(config, model, MeanPixel(), PROMPTS)
    model.encode(PROMPTS, config.sampling.negative_prompt)  # cached before timing, as in a run
    log = PhaseLog(model)
    records, update_flops = [], []
    per_row_backward, per_row_forward = flops_per_row(trainer, config.data.group_size)
    with log.installed():
        for _ in range(1 + args.iterations):
            log.new_iteration()
            trainer.step()
            policy_rows, reference_rows = log.update_rows()
            records.append(log.record)
            update_flops.append(policy_rows * per_row_backward + reference_rows * per_row_forward)
    measured, flops = records[1:], update_flops[1:]
    rows = config.data.prompts_per_iteration * config.data.group_size
    mfu_inputs = [(f, r["update"]["seconds"]) for f, r in zip(flops, measured, strict=True)]
    peak = peak_tflops(args.peak_tflops)
    achieved = max(f / seconds / 1e12 for f, seconds in mfu_inputs)
    results = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "tiny": args.tiny,
        "latent_shape": list(model.latent_shape),
        "samples": rows,
        "steps": config.sampling.num_steps,
        "phases": {
            phase: {
                "seconds": min(r[phase]["seconds"] for r in measured),
                "peak_gib": max(r[phase]["peak_gib"] for r in measured),
            }
            for phase in ("rollout", "reward", "update")
        },
        "update_model_tflop": max(flops) / 1e12,
        "update_achieved_tflops": achieved,
        "peak_tflops": peak,
        "update_mfu": None if peak is None else achieved / peak,
    }
    print(f"device {results['device']}, latents {results['latent_shape']}, {rows} samples")
    for phase, values in results["phases"].items():
        print(f"  {phase:8s} {values['seconds']:8.2f} s   peak {values['peak_gib']:6.2f} GiB")
    print(
        f"  update: {results['update_model_tflop']:.1f} TFLOP of model work, "
        f"{results['update_achieved_tflops']:.1f} TFLOP/s"
        + ("" if peak is None else f", MFU {results['update_mfu']:.1%} of {peak:.0f}")
    )
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
