"""`videogrpo` CLI runs in child processes that a test may kill, started in milliseconds.

A fresh `python -m videogrpo` spends seconds importing torch before it trains a tiny model for
two; the kill tests need dozens of runs. So children are forked from multiprocessing's fork
server, which imports videogrpo once and never computes (forking a process whose OpenMP pool
has run is unsafe; forking this one is not). Each child is a real process: its own pid, signal
handlers, file locks and exit status, killed for real by SIGKILL.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from dataclasses import dataclass
from pathlib import Path

PRELOADED = ["torch", "videogrpo.cli", "videogrpo.runs.train", "videogrpo.embedded.tiny_wan"]
_context = None


def _fork_server():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOADED)
    return _context


def _child(args: list[str], fault: str | None, out: str, err: str) -> None:
    """The child's body: the CLI with one torch thread, its output in files, its exit status."""
    os.environ.pop("VIDEOGRPO_FAULT", None)
    if fault:
        os.environ["VIDEOGRPO_FAULT"] = fault
    sys.stdout = open(out, "w", buffering=1)  # noqa: SIM115 (lives as long as the process)
    sys.stderr = open(err, "w", buffering=1)  # noqa: SIM115
    import torch

    torch.set_num_threads(1)
    from videogrpo.cli import main

    code = main(args)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


@dataclass
class Child:
    """A running or finished CLI child process."""

    process: multiprocessing.Process
    out: Path
    err: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait(self, timeout: float = 300.0) -> int:
        """The exit status: the CLI's code, or −N when signal N ended it."""
        self.process.join(timeout)
        assert self.process.exitcode is not None, f"child {self.pid} still runs after {timeout} s"
        return self.process.exitcode

    def stderr(self) -> str:
        return self.err.read_text()

    def stdout(self) -> str:
        return self.out.read_text()


def start(args: list[str], logs: Path, fault: str | None = None) -> Child:
    """Start `videogrpo ARGS` (with VIDEOGRPO_FAULT=`fault`); output goes to files in `logs`."""
    logs.mkdir(parents=True, exist_ok=True)
    number = len(list(logs.glob("*.err")))
    out, err = logs / f"{number:03d}.out", logs / f"{number:03d}.err"
    process = _fork_server().Process(
        target=_child, args=([str(a) for a in args], fault, str(out), str(err))
    )
    process.start()
    return Child(process, out, err)


def run(args: list[str], logs: Path, fault: str | None = None) -> tuple[int, str]:
    """Run to the end: (exit status, stderr)."""
    child = start(args, logs, fault)
    code = child.wait()
    return code, child.stderr()
