"""Throughput of torchrun ranks against one process: GRPO samples per second, ratio in one run.

Times `GRPOTrainer.step` (rollout, reward, update; no eval, no disk) on the embedded default:
one process, then `--ranks` gloo ranks, each with `--threads` threads, on the same config and
global batch: the speed-up of adding ranks (on a 2-core machine, 2 ranks of 1 thread use both
cores; one process of 2 threads is no fair baseline there, as torch's threads on tiny matmuls
lose far more to a busy machine than separate processes do). The first iteration of each is a
warm-up and is not timed; the ranks' time is rank 0's (ranks wait for each other every step).
On a shared machine other jobs take cores too, so the run first times a fixed matmul load in one
process and in as many processes as ranks at once: the most the ranks could gain right now.

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
from videogrpo.runs.loading import load_reward, load_shared_model
from videogrpo.training.prompts import load_prompts
from videogrpo.training.trainer import GRPOTrainer

PHASES = ("rollout", "reward", "reference", "update")  # the trainer's time/… metrics
CALIBRATION_MATMULS = 300  # 512×512 float32 matmuls: about 2 s on one free core


def matmul_seconds(world: World, out: str) -> None:
    """A fixed CPU load, run by every rank at once: what the machine gives that many processes."""
    matrix = torch.randn(512, 512)
    world.barrier()
    start = time.perf_counter()
    for _ in range(CALIBRATION_MATMULS):
        matrix @ matrix
    seconds = time.perf_counter() - start
    Path(out).with_suffix(f".{world.rank}").write_text(str(seconds))


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
    phases = dict.fromkeys(PHASES, 0.0)
    start = time.perf_counter()
    for _ in range(config.run.iterations - 1):
        metrics = trainer.step().metrics
        for phase in PHASES:
            phases[phase] += metrics.get(f"time/{phase}", 0.0)
    seconds = time.perf_counter() - start
    timed = config.run.iterations - 1
    samples = timed * config.data.prompts_per_iteration * config.data.group_size
    if world.is_main:
        Path(out).write_text(json.dumps({"samples_per_second": samples / seconds, **phases}))


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
        matmul_seconds(World(), str(one))
        run_local(args.ranks, matmul_seconds, str(many), threads=args.threads)
        alone = float(one.with_suffix(".0").read_text())
        together = max(float(many.with_suffix(f".{r}").read_text()) for r in range(args.ranks))
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
        single, ranks = json.loads(one.read_text()), json.loads(many.read_text())
    print(f"{args.config}, {args.iterations - 1} timed iterations, {args.threads} thread(s) each")
    for name, result in (("1 process", single), (f"{args.ranks} ranks", ranks)):
        seconds = ", ".join(f"{phase} {result[phase]:.1f}" for phase in PHASES)
        print(f"  {name:<10} {result['samples_per_second']:7.3f} samples/s  (seconds: {seconds})")
    ratio = ranks["samples_per_second"] / single["samples_per_second"]
    ideal = args.ranks * alone / together
    print(f"  ratio      {ratio:7.2f}")
    print(
        f"  the machine now: {args.ranks} processes at once run a fixed matmul load "
        f"{together / alone:.2f}× slower each than one alone, so {ideal:.2f} is the most "
        f"{args.ranks} ranks can give; they reach {ratio / ideal:.0%} of it"
    )


if __name__ == "__main__":
    main()
