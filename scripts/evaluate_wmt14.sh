#!/usr/bin/env bash
# Evaluate a WMT14 run as in the paper's Table 5 (tokenized BLEU on newstest2014, beam 4), plus
# sacreBLEU: average the last 10 checkpoints, length penalty 0.6 (Ott et al.).
#
#   scripts/evaluate_wmt14.sh en-de checkpoints/wmt14.en-de.resmlp_mt
set -euo pipefail
cd "$(dirname "$0")/.."
PAIR=${1:?usage: scripts/evaluate_wmt14.sh en-de|en-fr CHECKPOINT_DIR}
CKPT_DIR=${2:?usage: scripts/evaluate_wmt14.sh en-de|en-fr CHECKPOINT_DIR}
DATA=${DATA:-data-bin/wmt14.$PAIR}
PY=${PY:-.venv/bin/python}
exec "$PY" scripts/evaluate_mt.py "$DATA" --checkpoint-dir "$CKPT_DIR" \
  --average-last "${AVERAGE_LAST:-10}" --beam 4 --lenpen "${LENPEN:-0.6}" --split test \
  --output "$CKPT_DIR/eval_test.json"
