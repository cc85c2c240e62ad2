#!/usr/bin/env bash
# The 2-rank equality, resume and run tests of tests/test_distributed.py on GPUs with NCCL instead of
# gloo (one GPU per rank, so at least 2), on a CUDA build of torch:
#     bash scripts/check_nccl.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
gpus=$(python -c "import torch; print(torch.cuda.device_count())")
if (( gpus < 2 )); then
    echo "check_nccl: needs 2 CUDA GPUs (one per rank), this machine has ${gpus}" >&2
    exit 2
fi
nvidia-smi --query-gpu=name --format=csv,noheader | head -2
NCCL_CHECK=1 python -m pytest -q tests/test_distributed.py -k "two_ranks or resumes or moves" "$@"
