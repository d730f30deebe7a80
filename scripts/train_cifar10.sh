#!/usr/bin/env bash
# ResMLP on CIFAR-10 from scratch on a CPU (vision/configs/cifar10_cpu.yaml).
#
#   scripts/train_cifar10.sh [--data DIR] [--output DIR] [extra vision.train flags...]
#
# DIR defaults to $CIFAR10_DIR, else ../shared/data/cifar10 (train/ and test/ in ImageFolder
# layout); the output to runs/cifar10_resmlp. Re-running resumes from OUTPUT/last.pth.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${CIFAR10_DIR:-../shared/data/cifar10}
OUT=runs/cifar10_resmlp
ARGS=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --data) DATA=$2; shift 2 ;;
    --output) OUT=$2; shift 2 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
exec ${PYTHON:-.venv/bin/python} -m vision.train --config cifar10_cpu --data-dir "$DATA" --val-split test \
  --output "$OUT" --resume auto "${ARGS[@]}"
