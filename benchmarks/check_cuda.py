"""The checks only a CUDA GPU can make, on every family's tiny folder (tests/tiny_pipelines.py).

For each of Wan 2.1, Wan 2.2 A14B, Wan 2.2 TI2V, HunyuanVideo 1.5 and LTX-Video:

1. bfloat16 against float32: the same 4-step ODE rollout from the same noise, both finite; the
   largest difference is printed (bfloat16 keeps 8 bits of mantissa, so it is not zero).
2. Two SAGE iterations in bfloat16 with gradient checkpointing, one optimizer step per rollout:
   every replayed log-probability finite, ratio exactly 1.0 (mean and max) in both iterations.
3. Offloading: while the transformer runs with gradients (the update), the text encoder(s) and
   the VAE are on the CPU and the transformer on the GPU — the placement itself, which the
   CPU-only test suite can only check as requested moves.

    python benchmarks/check_cuda.py                 # exit status 1 if any check fails
    python benchmarks/check_cuda.py --device cpu    # smoke-test the script itself
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

from backbone_cases import CASES  # noqa: E402
from conftest import PRESETS_DIR, TINY_PIPELINE_VIDEO, build_tiny_wan_pipeline  # noqa: E402
from tiny_pipelines import PROMPTS  # noqa: E402

from videogrpo.core import schedule  # noqa: E402
from videogrpo.runs.train import train  # noqa: E402
from videogrpo.training.rollout import sample_final  # noqa: E402
from videogrpo.training.step import StepSettings  # noqa: E402

NUM_STEPS = 4


class Redness:
    components = ("redness",)

    def __call__(self, videos, prompts):
        return {"redness": videos[..., 0].mean(dim=(1, 2, 3)) - videos[..., 2].mean(dim=(1, 2, 3))}


def families(root: Path) -> dict[str, tuple[str, Path, dict, float]]:
    """name → (model.type, folder, video size, scheduler shift)."""
    wan21 = root / "wan21"
    wan21.mkdir()
    found = {"wan21": ("wan", build_tiny_wan_pipeline(wan21), TINY_PIPELINE_VIDEO, 3.0)}
    for name, case in CASES.items():
        folder = root / name
        folder.mkdir()
        found[name] = (case.model_type, case.build(folder), case.video, case.shift)
    return found


def ode_difference(model_type: str, folder: Path, shift: float, device: str) -> tuple[bool, float]:
    from videogrpo.config import TrainConfig
    from videogrpo.models.registry import build_model

    finals = []
    for dtype in ("float32", "bfloat16"):
        config = TrainConfig()
        config.model.type, config.model.path, config.model.device = model_type, str(folder), device
        config.model.dtype = dtype
        model = build_model(config.model, config.sampling, config.memory)
        settings = StepSettings("ode", 0.0, schedule.sigmas(NUM_STEPS, shift), 3.0)
        finals.append(
            sample_final(
                model,
                settings,
                model.encode(PROMPTS, "a square"),
                [1, 2],
                sde_mask=torch.zeros(NUM_STEPS, dtype=torch.bool),
            )  # fmt: skip
        )
    finite = all(bool(torch.isfinite(final).all()) for final in finals)
    return finite, float((finals[0] - finals[1]).abs().max())


def bf16_training(
    model_type: str, folder: Path, video: dict, shift: float, out: Path, device: str
) -> dict:
    """Two SAGE iterations in bfloat16; records where the components sat during the update."""
    from videogrpo.models import pipeline as pipeline_module

    placements = []
    original_velocity = pipeline_module.PipelineGenerator.velocity

    def recording_velocity(self, latents, sigma, conditioning, guidance_scale):
        result = original_velocity(self, latents, sigma, conditioning, guidance_scale)
        if torch.is_grad_enabled():
            placements.append(
                {
                    "transformer": str(self.device),
                    **{
                        name: str(next(module.parameters()).device)
                        for name, module in self.offloadable().items()
                    },
                }
            )
        return result

    pipeline_module.PipelineGenerator.velocity = recording_velocity
    prompts = out / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    settings = [
        f"model.type={model_type}", f"model.path={folder}", f"model.device={device}",
        "model.dtype=bfloat16", "model.lora_rank=4", "model.lora_alpha=8",
        "memory.gradient_checkpointing=true", "memory.offload=true",
        f"reward.type={__name__}:Redness", f"run.output_dir={out}", "run.name=run",
        "run.iterations=2", "run.videos_every=0", f"sampling.num_steps={NUM_STEPS}",
        f"sampling.shift={shift}", "sampling.guidance_scale=3.0",
        *(f"sampling.{key}={video[key]}" for key in ("num_frames", "height", "width")),
        f"data.prompts={prompts}", "data.prompts_per_iteration=2", "data.group_size=2",
        f"eval.prompts={prompts}", "eval.samples_per_prompt=1", "eval.num_steps=2",
        "eval.videos=0", "optim.minibatches=1",
    ]  # fmt: skip
    try:
        result = train(PRESETS_DIR / "sage.yaml", settings, progress=False)
    finally:
        pipeline_module.PipelineGenerator.velocity = original_velocity
    metrics = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()]
    return {"metrics": metrics, "placements": placements}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N; cpu only smoke-tests")
    device = parser.parse_args().device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("check_cuda.py needs a CUDA GPU (or --device cpu to smoke-test the script)")
        return 2
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, (model_type, folder, video, shift) in families(root).items():
            finite, difference = ode_difference(model_type, folder, shift, device)
            out = root / f"run_{name}"
            out.mkdir()
            run = bf16_training(model_type, folder, video, shift, out, device)
            ratios_one = all(
                m["policy/ratio_mean"] == 1.0 and m["policy/ratio_max"] == 1.0
                for m in run["metrics"]
            )
            kl_finite = all(
                torch.isfinite(torch.tensor(v)).item()
                for m in run["metrics"]
                for k, v in m.items()
                if k.startswith(("kl/", "policy/"))
            )
            placed = bool(run["placements"]) and all(
                place["transformer"].startswith(device.split(":")[0])
                and all(d == "cpu" for k, d in place.items() if k != "transformer")
                for place in run["placements"]
            )
            checks = {
                "ode finite (fp32, bf16)": finite,
                "bf16 ratio exactly 1": ratios_one,
                "bf16 log-probs and KL finite": kl_finite,
                "text encoders and VAE on the CPU during the update": placed,
            }
            for check, ok in checks.items():
                failures += not ok
                print(f"{'PASS' if ok else 'FAIL'}  {name:18s} {check}")
            print(f"      {name:18s} max |ODE bf16 − fp32| = {difference:.3e}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
