#!/usr/bin/env bash
# The main job: prepare Multi30k En-De, train the small ResMLP on the CPU for MINUTES (default
# 25), then print test BLEU and a few translations.
#
#   make multi30k                      # same as scripts/run_multi30k.sh
#   PAIR=en-fr MINUTES=10 scripts/run_multi30k.sh
#
# Raw data: $MULTI30K_DIR, else ../shared/data/multi30k if present, else the official files
# are downloaded. Re-running resumes from the checkpoints in SAVE_DIR (training stops at once
# when its budget is spent, then evaluation runs); delete SAVE_DIR to train again from scratch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PAIR=${PAIR:-en-de}
export MINUTES=${MINUTES:-25}
export SAVE_DIR=${SAVE_DIR:-checkpoints/multi30k.$PAIR.resmlp}
if [ -z "${MULTI30K_DIR:-}" ] && [ -d ../shared/data/multi30k ]; then
  export MULTI30K_DIR=../shared/data/multi30k
fi

echo "== 1/3 preparing Multi30k $PAIR"
"$PY" scripts/prepare_multi30k.py --pairs "$PAIR"
echo "== 2/3 training resmlp_mt_small for $MINUTES minutes (checkpoints in $SAVE_DIR)"
MODEL=resmlp scripts/train_multi30k.sh "$PAIR"
echo "== 3/3 translating test_2016_flickr (beam 4)"
"$PY" scripts/evaluate_mt.py "data-bin/multi30k.$PAIR" --checkpoint-dir "$SAVE_DIR" --split test \
  --samples 5 --output "$SAVE_DIR/eval_test.json"
