"""`videogrpo pretrain`: make the embedded default by flow matching on the synthetic world."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys

HELP = "Pretrain the tiny Wan on the synthetic video world (how the embedded default is made)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from videogrpo.embedded.pretrain import PretrainConfig

    defaults = PretrainConfig()
    for field in dataclasses.fields(PretrainConfig):
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            type=type(getattr(defaults, field.name)),
            default=getattr(defaults, field.name),
            help=f"(default: {getattr(defaults, field.name)})",
        )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --output from its checkpoint"
    )


def run(args: argparse.Namespace) -> int:
    from videogrpo.embedded.pretrain import PretrainConfig, pretrain

    names = [field.name for field in dataclasses.fields(PretrainConfig)]
    config = PretrainConfig(**{name: getattr(args, name) for name in names})
    command = shlex.join(["videogrpo", *sys.argv[1:]])
    model_dir = pretrain(config, resume=args.resume, command=command)
    print(f"pretrained model written to {model_dir}")
    return 0
