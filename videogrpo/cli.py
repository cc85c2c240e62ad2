"""Thin command-line front end: each subcommand lives in `videogrpo.commands.<name>`.

A command module exposes `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`;
`serve-reward` lives in `serve_reward`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from videogrpo import __version__
from videogrpo.errors import UserError

COMMANDS: tuple[str, ...] = ("train", "sample", "eval", "pretrain", "report", "serve-reward")

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="videogrpo",
        description="Post-train text-to-video generators with GRPO "
        "(SAGE-GRPO, Self-Paced GRPO, FlowGRPO, DanceGRPO, CPS, MixGRPO).",
    )
    parser.add_argument("--version", action="version", version=f"videogrpo {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"videogrpo.commands.{name.replace('-', '_')}")
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each record (tests swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure_logging() -> None:
    """Notices from the library (e.g. a setting it had to interpret) as one stderr line each."""
    logger = logging.getLogger("videogrpo")
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("videogrpo: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 0
    try:
        return int(args.handler(args) or 0)
    except UserError as error:
        print(f"videogrpo {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"videogrpo {args.command}: interrupted", file=sys.stderr)
        return 130
