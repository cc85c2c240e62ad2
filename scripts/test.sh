#!/usr/bin/env bash
# Quick start, command 2: set up the environment if needed, lint, and run the test suite.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
ruff check videogrpo tests benchmarks
ruff format --check videogrpo tests benchmarks
python -m pytest -q "$@"
