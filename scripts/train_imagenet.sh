#!/usr/bin/env bash
# ResMLP on ImageNet-1k with the paper's recipe (vision/configs/imagenet_<model>.yaml), on GPUs.
#
#   scripts/train_imagenet.sh MODEL [IMAGENET_DIR] [extra vision.train flags...]
#
#   MODEL         s12 | s24 | s36 | b24 | s12_p8 | b24_p8
#   IMAGENET_DIR  ImageFolder root with train/ and val/ (default: $IMAGENET_DIR)
#
# Environment: NPROC (processes per node, default: the number of GPUs), NNODES (1), NODE_RANK (0),
# MASTER_ADDR (localhost), MASTER_PORT (29500), OUT (runs/imagenet_MODEL), PYTHON (.venv/bin/python).
# The per-process batch is 2048 / (NPROC * NNODES), so the global batch stays the paper's 2048.
# Re-running the same command resumes from OUT/last.pth.
# Distillation as in the paper (RegNetY-16GF teacher, hard):
#   scripts/train_imagenet.sh s24 /data/imagenet --distillation-type hard --teacher-model regnety_160 --teacher-pretrained
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:?usage: scripts/train_imagenet.sh MODEL [IMAGENET_DIR] [flags...]}
shift
DATA=${IMAGENET_DIR:-}
if [[ $# -gt 0 && $1 != --* ]]; then DATA=$1; shift; fi
[[ -n $DATA ]] || { echo "give the ImageNet folder as the second argument or in IMAGENET_DIR" >&2; exit 2; }
[[ -d $DATA/train && -d $DATA/val ]] || { echo "$DATA must hold train/ and val/ (ImageFolder layout)" >&2; exit 2; }
PYTHON=${PYTHON:-.venv/bin/python}
NPROC=${NPROC:-$($PYTHON -c 'import torch; print(max(1, torch.cuda.device_count()))')}
NNODES=${NNODES:-1}
WORLD=$((NPROC * NNODES))
if (( 2048 % WORLD )); then echo "2048 is not divisible by $WORLD processes: set --batch-size yourself" >&2; fi
OUT=${OUT:-runs/imagenet_$MODEL}
exec $PYTHON -m torch.distributed.run --nproc_per_node "$NPROC" --nnodes "$NNODES" --node_rank "${NODE_RANK:-0}" \
  --master_addr "${MASTER_ADDR:-localhost}" --master_port "${MASTER_PORT:-29500}" \
  -m vision.train --config "imagenet_$MODEL" --data-dir "$DATA" --output "$OUT" --resume auto \
  --batch-size $((2048 / WORLD)) "$@"
