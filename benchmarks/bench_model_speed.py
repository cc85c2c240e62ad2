"""Forward+backward time of the tiny Wan per patch size, to choose the default architecture.

Run: .venv/bin/python benchmarks/bench_model_speed.py [--repeats 5]
Prints one table per question: how patch size changes speed at fixed width/depth (ratios relative
to (1, 4, 4)), and what the default config costs per pretraining batch of 32 clips.
"""

import argparse
import dataclasses
import statistics
import time

import torch

from videogrpo.embedded.tiny_wan import TinyWan, TinyWanConfig

PATCH_SIZES = ((1, 4, 4), (1, 8, 8), (2, 4, 4), (2, 8, 8))
PATCH_BATCH = 8  # clips per timed step in the patch-size comparison
DEFAULT_BATCH = 32  # clips per pretraining step
BENCH_VOCABULARY = ["a", "red", "blue", "circle", "square", "moves", "left", "right", "slowly"]
PROMPT = "a red circle moves left slowly"


def time_forward_backward(model: TinyWan, batch: int, repeats: int) -> float:
    """Median seconds of one flow-matching loss forward + backward (after one warm-up step)."""
    torch.manual_seed(0)
    clean = torch.rand(batch, *model.latent_shape) * 2 - 1
    noise = torch.randn_like(clean)
    sigma = torch.rand(batch)
    noisy = (1 - sigma.view(-1, 1, 1, 1, 1)) * clean + sigma.view(-1, 1, 1, 1, 1) * noise
    with torch.no_grad():
        embeddings = model.encode([PROMPT] * batch)
    seconds = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        velocity = model.velocity(noisy, sigma, embeddings, guidance_scale=1.0)
        loss = (velocity - (noise - clean)).pow(2).mean()
        loss.backward()
        seconds.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return statistics.median(seconds[1:])


def build(config: TinyWanConfig) -> TinyWan:
    model = TinyWan(config, BENCH_VOCABULARY)
    model.text_encoder.requires_grad_(False)  # RL and the timing both treat text as given
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per setting")
    args = parser.parse_args()
    default = TinyWanConfig()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        f"width {default.inner_dim}, {default.num_layers} layers, ffn {default.ffn_dim}, "
        f"batch {PATCH_BATCH} clips of {default.num_frames}x{default.height}x{default.width} RGB"
    )
    print(f"{'patch':>10} {'tokens/clip':>11} {'params':>9} {'fwd+bwd s':>10} {'speed-up':>9}")
    baseline = None
    for patch in PATCH_SIZES:
        model = build(dataclasses.replace(default, patch_size=patch))
        seconds = time_forward_backward(model, PATCH_BATCH, args.repeats)
        baseline = baseline or seconds
        params = sum(p.numel() for p in model.transformer.parameters())
        print(
            f"{str(patch):>10} {model.config.tokens_per_clip:>11} {params:>9,} "
            f"{seconds:>10.3f} {baseline / seconds:>8.2f}x"
        )
    model = build(default)
    seconds = time_forward_backward(model, DEFAULT_BATCH, args.repeats)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"default config: {params:,} params (transformer + text encoder), "
        f"{4 * params / 2**20:.1f} MiB as fp32, forward+backward of {DEFAULT_BATCH} clips "
        f"{seconds:.3f} s"
    )


if __name__ == "__main__":
    main()
