#!/usr/bin/env bash
# GPU acceptance: the paper-scale paths (translation and vision) on one NVIDIA GPU in at most
# 8 minutes, with one table and results/gpu_acceptance.{json,md}. See scripts/gpu_acceptance.py.
#
#   scripts/gpu_acceptance.sh                 # on the GPU machine, after `make install`
#   scripts/gpu_acceptance.sh --dry-run       # the same code on the CPU at tiny sizes (< 2 minutes)
#
# Exit status: 0 when every check passes, 1 when one fails or was skipped, 2 on a usage error.
set -euo pipefail
cd "$(dirname "$0")/.."
# The repo's own packages (resmlp_core, mt_tools, vision, resmlp_mt) without `make install`, as
# on a GPU machine with no package index (fairseq and timm carried as wheels there).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec "$PY" scripts/gpu_acceptance.py "$@"
