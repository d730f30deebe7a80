#!/usr/bin/env bash
# Speed of our ResMLP S12/S24 (unfolded and folded) against timm's resmlp_12_224 / resmlp_24_224,
# in one process with the same weights; writes results/bench_vision.{json,md}.
# fp32 on the CPU; bf16 autocast on CUDA when a GPU is present. Flags go to python -m vision.bench
# (--quick: a smoke test in seconds; --compile: add torch.compile'd variants).
# On a shared machine, hold the CPU lock: flock /tmp/resmlp-cpu.lock scripts/bench_vision.sh
set -euo pipefail
cd "$(dirname "$0")/.."
exec ${PYTHON:-.venv/bin/python} -m vision.bench "$@"
