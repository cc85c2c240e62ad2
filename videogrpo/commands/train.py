"""`videogrpo train`: GRPO on a preset, with `--set key=value` overrides and `--resume`."""

from __future__ import annotations

import argparse

HELP = "Post-train a video generator with GRPO (SAGE-GRPO, Self-Paced GRPO or a baseline preset)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="preset YAML, e.g. configs/sage.yaml")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set optim.lr=1e-4 (repeatable)",
    )
    parser.add_argument(
        "--resume", metavar="RUN_DIR", help="continue a stopped run where it stopped"
    )
    parser.add_argument(
        "--list-settings", action="store_true", help="print every setting with its default and help"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from videogrpo.config import TrainConfig, config_to_yaml, load_config
    from videogrpo.config.schema import describe
    from videogrpo.distributed.world import launched_rank
    from videogrpo.errors import UserError
    from videogrpo.runs.train import train

    if args.list_settings:
        for key, default, help_text in describe(TrainConfig):
            print(f"{key} = {default!r}\n    {help_text}")
        return 0
    if args.resume and args.config:
        raise UserError("give either a config to start a run or --resume RUN_DIR, not both")
    main = launched_rank() == 0  # under torchrun, rank 0 alone prints
    if not args.resume and main:
        print(config_to_yaml(load_config(args.config, args.overrides)), end="")
    result = train(args.config, args.overrides, resume=args.resume, progress=not args.quiet)
    if not main:
        return 0
    before, after = result.summary["eval_before"], result.summary["eval_after"]
    print("held-out reward (ODE, fixed seeds)   before -> after")
    for key in before:
        print(
            f"  {key:<10} {before[key]:.3f} -> {after[key]:.3f}  ({after[key] - before[key]:+.3f})"
        )
    print(f"report: {result.run_dir / 'report.html'}")
    return 0
