#!/usr/bin/env bash
# GPU check (issue 7): DP training of both models on CUDA, compared with the CPU path,
# and samples/s with and without DP. Installs nothing; without CUDA it runs on CPU and
# says so. Arguments go to bench/gpu_check.py (--quick, --device cuda:1, --json FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export FLWR_TELEMETRY_ENABLED=0 PYTHONUNBUFFERED=1
exec "$PYTHON" bench/gpu_check.py "$@"
