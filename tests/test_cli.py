"""The command-line front end: help works and user errors become one line with exit status 2."""

import subprocess
import sys

from videogrpo.cli import main


def test_help_lists_every_command(capsys):
    from videogrpo.cli import COMMANDS

    assert main([]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_python_dash_m_runs_the_same_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "videogrpo", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert result.stdout.startswith("videogrpo ")
