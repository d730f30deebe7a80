#!/usr/bin/env bash
# The paper's WMT14 recipe (Touvron et al. 2021, §3.6), for a GPU cluster.
#
#   scripts/train_wmt14.sh en-de        # ResMLP-6 on WMT14 En-De (dropout 0.15)
#   LAYERS=12 scripts/train_wmt14.sh en-fr   # ResMLP-12 on WMT14 En-Fr (dropout 0.1)
#
# From the paper: d=512, MLP 2048, 6 or 12 layers, Adagrad lr 0.2, 32k updates of linear warmup,
# label smoothing 0.1, dropout 0.15 (En-De) / 0.1 (En-Fr), LayerScale init 0.2, beam 4.
# Not given in the paper, our choices (override with the variables below or extra fairseq
# flags after the pair): the learning rate stays at 0.2 after warmup (fairseq's "fixed"
# scheduler; Adagrad decays step sizes itself; LR_SCHEDULER=inverse_sqrt is the alternative),
# 4096 tokens per GPU per step, 200k updates, shared embeddings (joined dictionary), A sized
# for 256 positions (the data keeps sentences of up to 250 words), checkpoints every 2000
# updates, the last 10 kept for averaging.
# Run `scripts/prepare_wmt14.py --pair <pair>` first; evaluate with scripts/evaluate_wmt14.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PAIR=${1:?usage: scripts/train_wmt14.sh en-de|en-fr [extra fairseq-train flags]}
shift
case "$PAIR" in
  en-de) DROPOUT=${DROPOUT:-0.15} ;;
  en-fr) DROPOUT=${DROPOUT:-0.1} ;;
  *) echo "unknown pair '$PAIR': use en-de or en-fr" >&2; exit 2 ;;
esac
LAYERS=${LAYERS:-6}
case "$LAYERS" in
  6) ARCH=resmlp_mt ;;
  12) ARCH=resmlp_mt_12 ;;
  *) echo "LAYERS must be 6 or 12, got '$LAYERS'" >&2; exit 2 ;;
esac
DATA=${DATA:-data-bin/wmt14.$PAIR}
SAVE_DIR=${SAVE_DIR:-checkpoints/wmt14.$PAIR.$ARCH}
MAX_TOKENS=${MAX_TOKENS:-4096}
UPDATE_FREQ=${UPDATE_FREQ:-1}
MAX_UPDATE=${MAX_UPDATE:-200000}
LR_SCHEDULER=${LR_SCHEDULER:-fixed}
FAIRSEQ_TRAIN=${FAIRSEQ_TRAIN:-.venv/bin/fairseq-train}
[ -x "$FAIRSEQ_TRAIN" ] || FAIRSEQ_TRAIN=fairseq-train  # an environment other than make install's
[ -f "$DATA/dict.en.txt" ] || { echo "$DATA not found: run scripts/prepare_wmt14.py --pair $PAIR first" >&2; exit 2; }

exec "$FAIRSEQ_TRAIN" "$DATA" \
  --user-dir resmlp_mt --arch "$ARCH" --share-all-embeddings \
  --max-source-positions 256 --max-target-positions 256 \
  --optimizer adagrad --lr 0.2 --lr-scheduler "$LR_SCHEDULER" --warmup-updates 32000 \
  --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
  --dropout "$DROPOUT" --layerscale-init 0.2 \
  --max-tokens "$MAX_TOKENS" --update-freq "$UPDATE_FREQ" --max-update "$MAX_UPDATE" \
  --save-dir "$SAVE_DIR" --save-interval-updates 2000 --keep-interval-updates 10 --no-epoch-checkpoints \
  --skip-invalid-size-inputs-valid-test --log-format simple --log-interval 100 \
  "$@"
