"""`videogrpo report RUN_DIR`: write the run's self-contained HTML report and print its path."""

from __future__ import annotations

import argparse

HELP = "Write RUN_DIR/report.html: curves, diagnostics and before/after eval videos of a run."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="A run directory written by `train`.")


def run(args: argparse.Namespace) -> int:
    from videogrpo.runs.report import write_report

    print(write_report(args.run_dir))
    return 0
