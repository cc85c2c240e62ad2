#!/usr/bin/env bash
# Quick start, command 1: set up the environment if needed, then run the main job — SAGE-GRPO on
# the embedded default. It prints the held-out reward before and after and the report's path.
# Extra arguments go to `videogrpo train`, e.g. `bash scripts/demo.sh --set run.seed=1`.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
videogrpo train configs/sage.yaml "$@"
