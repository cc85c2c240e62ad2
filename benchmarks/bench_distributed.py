"""Throughput of torchrun ranks against one process: GRPO samples per second, ratio in one run.

Times `GRPOTrainer.step` (rollout, reward, update; no eval, no disk) on the embedded default:
one process, then `--ranks` gloo ranks, each with `--threads` threads, on the same config and
global batch: the speed-up of adding ranks (on a 2-core machine, 2 ranks of 1 thread use both
cores; one process of 2 threads is no fair baseline there, as torch's threads on tiny matmuls
lose far more to a busy machine than separate processes do). The first iteration of each is a
warm-up and is not timed; the ranks' time is rank 0's (ranks wait for each other every step).

    python benchmarks/bench_distributed.py [configs/sage.yaml] [--ranks 2] [--threads 1]
        [--iterations 3] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from videogrpo.config import load_config
from videogrpo.distributed.spawn import run_local
from videogrpo.distributed.world import World
from videogrpo.runs.train import load_reward, load_shared_model
from videogrpo.training.prompts import load_prompts
from videogrpo.training.trainer import GRPOTrainer


def samples_per_second(world: World, config_path: str, overrides: list[str], out: str) -> None:
    """Run `iterations` trainer steps; rank 0 writes the timed steps' samples per second."""
    config = load_config(config_path, overrides)
    torch.manual_seed(config.run.seed)
    model, parallel = load_shared_model(config, world)
    trainer = GRPOTrainer(
        config, model, load_reward(config), load_prompts(config.data.prompts), parallel=parallel
    )
    trainer.step()  # warm-up: allocations, FSDP2's lazy initialisation
    world.barrier()
    start = time.perf_counter()
    for _ in range(config.run.iterations - 1):
        trainer.step()
    seconds = time.perf_counter() - start
    samples = (
        (config.run.iterations - 1) * config.data.prompts_per_iteration * config.data.group_size
    )
    if world.is_main:
        Path(out).write_text(json.dumps({"samples_per_second": samples / seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/sage.yaml")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--iterations", type=int, default=3, help="including one warm-up")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    if args.iterations < 2:
        parser.error("need --iterations >= 2 (the first is a warm-up)")
    overrides = [*args.overrides, f"run.iterations={args.iterations}"]
    with tempfile.TemporaryDirectory() as folder:
        one, many = Path(folder) / "one.json", Path(folder) / "many.json"
        torch.set_num_threads(args.threads)
        samples_per_second(World(), args.config, overrides, str(one))
        run_local(
            args.ranks,
            samples_per_second,
            args.config,
            overrides,
            str(many),
            threads=args.threads,
        )
        single = json.loads(one.read_text())["samples_per_second"]
        ranks = json.loads(many.read_text())["samples_per_second"]
    print(f"{args.config}, {args.iterations - 1} timed iterations, {args.threads} thread(s) each")
    print(f"  1 process  {single:7.3f} samples/s")
    print(f"  {args.ranks} ranks    {ranks:7.3f} samples/s")
    print(f"  ratio      {ranks / single:7.2f}")


if __name__ == "__main__":
    main()
