#!/usr/bin/env bash
# The CIFAR-10 distillation experiment on a CPU: a RegNetY-400MF teacher trained with vision.train,
# then the same small ResMLP student for the same number of epochs without a teacher and with
# hard distillation (DeiT's loss, single head). The two students train side by side, one thread
# each. Prints the three top-1 figures.
#
#   scripts/distill_cifar10.sh [--data DIR] [--output DIR]     (defaults: $CIFAR10_DIR or
#                                                                ../shared/data/cifar10; runs/c10_distill)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${CIFAR10_DIR:-../shared/data/cifar10}
OUT=runs/c10_distill
while [[ $# -gt 0 ]]; do
  case $1 in
    --data) DATA=$2; shift 2 ;;
    --output) OUT=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-.venv/bin/python}
COMMON=(--data-dir "$DATA" --val-split test --resume auto)
$PY -m vision.train --config cifar10_teacher "${COMMON[@]}" --output "$OUT/teacher"
$PY -m vision.train --config cifar10_student "${COMMON[@]}" --output "$OUT/student_none" --threads 1 > "$OUT/student_none.out" 2>&1 &
$PY -m vision.train --config cifar10_student "${COMMON[@]}" --output "$OUT/student_hard" --threads 1 \
  --distillation-type hard --teacher-path "$OUT/teacher/best.pth" > "$OUT/student_hard.out" 2>&1 &
wait
$PY -m benchmarks.vision_report --name "${REPORT:-vision_distill_cifar10}" --run teacher="$OUT/teacher" --run student_none="$OUT/student_none" \
  --run student_hard="$OUT/student_hard" --command "scripts/distill_cifar10.sh --data $DATA --output $OUT" \
  --note "Teacher: RegNetY-400MF trained by vision.train; students: the same ResMLP for the same epochs, without a teacher and with hard distillation."
cat "results/${REPORT:-vision_distill_cifar10}.md"
