"""`videogrpo train`: GRPO on a preset, with `--set key=value` overrides and `--resume`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

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
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a stopped run from its newest complete checkpoint (from the start if it "
        "stopped before its first)",
    )
    start.add_argument(
        "--restart",
        metavar="RUN_DIR",
        help="empty RUN_DIR and start it over with its saved config (and any --set)",
    )
    parser.add_argument(
        "--list-settings", action="store_true", help="print every setting with its default and help"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    # The config is checked before torch and diffusers are imported, so a misspelt key is
    # reported at once rather than after seconds of imports.
    from videogrpo.config import TrainConfig, config_to_yaml, load_config
    from videogrpo.config.schema import describe
    from videogrpo.errors import UserError

    if args.list_settings:
        for key, default, help_text in describe(TrainConfig):
            print(f"{key} = {default!r}\n    {help_text}")
        return 0
    existing = args.resume or args.restart
    if existing and args.config:
        flag = "--resume" if args.resume else "--restart"
        raise UserError(f"give either a config to start a run or {flag} RUN_DIR, not both")
    main = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 alone prints
    if not existing:
        config_text = config_to_yaml(load_config(args.config, args.overrides))
        if main:
            print(config_text, end="")
    elif (Path(existing) / "config.yaml").is_file():  # train() says what else is wrong
        load_config(Path(existing) / "config.yaml", args.overrides)

    from videogrpo.runs.train import train

    result = train(
        args.config,
        args.overrides,
        resume=args.resume,
        restart=args.restart,
        progress=not args.quiet,
    )
    if not main:
        return 0
    before, after = result.summary["eval_before"], result.summary["eval_after"]
    print("held-out reward (ODE, fixed seeds)   before -> after")
    for key in before:
        change = _change(before[key], after[key])
        print(f"  {key:<10} {_number(before[key])} -> {_number(after[key])}  {change}")
    print(f"report: {result.run_dir / 'report.html'}")
    return 0


def _number(value: float | None) -> str:
    """summary.json holds null where a held-out mean was not finite."""
    return "  n/a" if value is None else f"{value:.3f}"


def _change(before: float | None, after: float | None) -> str:
    return "" if before is None or after is None else f"({after - before:+.3f})"
