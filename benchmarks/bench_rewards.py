"""Throughput of the synthetic world's reward (clips/s) at the default clip size.

Usage: python benchmarks/bench_rewards.py [--batch 256] [--repeats 10] [--threads N]

Prints the median over repeats, so one slow repeat on a shared machine does not skew it. Try
--threads 1 on a busy CPU: for tensors this small, waiting on a descheduled thread costs more
than a second thread saves.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from videogrpo.embedded.world.grammar import sample_prompts
from videogrpo.embedded.world.render import FRAMES, HEIGHT, WIDTH, render_prompts
from videogrpo.rewards.world import WorldReward


def measure(batch: int, repeats: int) -> float:
    """Median clips per second of WorldReward on `batch` rendered clips, after one warm-up."""
    prompts = sample_prompts(batch, "all", 0)
    clips = render_prompts(prompts, 0)
    reward = WorldReward()
    reward(clips, prompts)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        reward(clips, prompts)
        seconds.append(time.perf_counter() - start)
    return batch / statistics.median(seconds)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256, help="clips per reward call")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls; the median counts")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    throughput = measure(args.batch, args.repeats)
    print(
        f"WorldReward: {throughput:,.0f} clips/s "
        f"(batch {args.batch} of {FRAMES}x{HEIGHT}x{WIDTH}, {torch.get_num_threads()} threads)"
    )
    return throughput


if __name__ == "__main__":
    main()
