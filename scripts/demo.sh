#!/usr/bin/env bash
# Quick start, command 1: set up the environment if needed and run the main job.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
videogrpo --help
