"""Thin command-line front end: each subcommand lives in `videogrpo.commands.<name>`.

A command module exposes `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`, and
imports torch, diffusers and the rest of the library inside `run`, so the parser is built in
milliseconds and a usage or config error is reported at once.

Exit status (docs/reliability.md): 0 done; 2 bad input (a one-line error naming the problem and
the fix); 3 the training diverged, 4 the reward scored nothing (both after a checkpoint); 128 + N
stopped by signal N after saving a checkpoint (130 Ctrl-C, 143 SIGTERM); 1 a bug (a traceback).
`serve-reward` lives in `serve_reward`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import NoReturn

from videogrpo import __version__
from videogrpo.errors import RunStopped, UserError

COMMANDS: tuple[str, ...] = ("train", "sample", "eval", "pretrain", "report", "serve-reward")

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (like every other error) instead of the usage
    text and then the error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the subcommand named in `argv` gets its arguments (built lazily, as
    some read a config dataclass of a heavy module)."""
    parser = OneLineParser(
        prog="videogrpo",
        description="Post-train text-to-video generators with GRPO "
        "(SAGE-GRPO, Self-Paced GRPO, FlowGRPO, DanceGRPO, CPS, MixGRPO).",
    )
    parser.add_argument("--version", action="version", version=f"videogrpo {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((arg for arg in argv or [] if not arg.startswith("-")), None)
    for name in COMMANDS:
        module = importlib.import_module(f"videogrpo.commands.{name.replace('-', '_')}")
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        if name == chosen:
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
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version or a usage error, already printed
        return done.code if isinstance(done.code, int) else EXIT_USAGE
    if not hasattr(args, "handler"):
        parser.print_help()
        return 0
    try:
        return int(args.handler(args) or 0)
    except UserError as error:
        message = str(error).replace("\n", " ")  # the contract is one line, whoever raised it
        print(f"videogrpo {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except RunStopped as stopped:
        print(f"videogrpo {args.command}: {stopped}", file=sys.stderr)
        return stopped.exit_code
    except KeyboardInterrupt:
        print(f"videogrpo {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
