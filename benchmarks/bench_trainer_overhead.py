"""Trainer overhead: one GRPO iteration vs the bare model compute of the same work, in one run.

The bare compute is the same forwards (rollout, reference) and forward+backwards (update) of the
same model at the same batch shapes with nothing else: no step math, rewards, KL, optimizer,
bookkeeping. The ratio is what the trainer's own code costs; target ≤ 1.15 on the default.
Timings alternate trainer and bare runs so machine noise hits both alike.

    python benchmarks/bench_trainer_overhead.py [configs/sage.yaml] [--iterations 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from videogrpo.config import load_config
from videogrpo.runs.loading import load_model, load_reward
from videogrpo.training.prompts import load_prompts
from videogrpo.training.rollout import initial_noise
from videogrpo.training.trainer import GRPOTrainer


def bare_iteration(trainer: GRPOTrainer) -> float:
    """Time the model calls one iteration makes, at the same shapes, and nothing else."""
    config, model = trainer.config, trainer.model
    num_samples = config.data.prompts_per_iteration * config.data.group_size
    num_steps = config.sampling.num_steps
    prompts, seeds = trainer.next_prompts()
    embeddings = model.encode(prompts, config.sampling.negative_prompt)
    sigmas = trainer.settings.sigmas
    selection = trainer.selector.select(
        num_steps,
        num_samples,
        generator=torch.Generator().manual_seed(0),
        stochastic=trainer.settings.stochastic,
    )
    trained = torch.zeros(num_samples, num_steps, dtype=torch.bool)
    trained.scatter_(1, selection.trained_steps, True)
    chunks = trainer.minibatches(num_samples)
    x = initial_noise(model, seeds)
    guidance = config.sampling.guidance_scale

    def rows_of(chunk: torch.Tensor, k: int) -> torch.Tensor:
        return chunk[trained[chunk, k]]

    start = time.perf_counter()
    with torch.no_grad():
        for k in range(num_steps):
            sigma = torch.full((num_samples,), sigmas[k].item())
            for chunk in chunks:
                for rows in (rows_of(chunk, k), chunk[~trained[chunk, k]]):
                    if rows.numel():
                        model.velocity(x[rows], sigma[rows], embeddings.select(rows), guidance)
        if trainer.kl.compares_to_reference:
            for k in range(num_steps):
                sigma = torch.full((num_samples,), sigmas[k].item())
                for chunk in chunks:
                    rows = rows_of(chunk, k)
                    if rows.numel():
                        model.velocity(x[rows], sigma[rows], embeddings.select(rows), guidance)
    model.train()
    for _ in range(config.optim.inner_epochs):
        for chunk in chunks:
            for k in range(num_steps):
                rows = rows_of(chunk, k)
                if rows.numel():
                    sigma = torch.full((rows.numel(),), sigmas[k].item())
                    velocity = model.velocity(x[rows], sigma, embeddings.select(rows), guidance)
                    velocity.square().mean().backward()
    model.eval()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/sage.yaml")
    parser.add_argument("--iterations", type=int, default=3)
    args = parser.parse_args()
    config = load_config(args.config)
    trainer = GRPOTrainer(
        config, load_model(config), load_reward(config), load_prompts(config.data.prompts)
    )
    trainer.step()  # warm-up: allocator, kernels, prompt cache
    bare_iteration(trainer)
    trainer_times, bare_times = [], []
    for _ in range(args.iterations):
        start = time.perf_counter()
        trainer.step()
        trainer_times.append(time.perf_counter() - start)
        bare_times.append(bare_iteration(trainer))
    ratio = statistics.median(t / b for t, b in zip(trainer_times, bare_times, strict=True))
    print(f"config: {args.config}, {args.iterations} iterations after one warm-up")
    print(f"trainer iteration: median {statistics.median(trainer_times):.2f} s")
    print(f"bare compute:      median {statistics.median(bare_times):.2f} s")
    print(f"overhead ratio (trainer / bare, median of paired runs): {ratio:.3f}")


if __name__ == "__main__":
    main()
