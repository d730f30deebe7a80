#!/usr/bin/env bash
# CPU recipe for Multi30k: a small model trained for a fixed wall-clock budget.
#
#   scripts/train_multi30k.sh en-de                       # ResMLP (resmlp_mt_small), 25 minutes
#   MODEL=transformer MINUTES=20 scripts/train_multi30k.sh en-fr   # the Transformer peer
#
# MODEL=resmlp: resmlp_mt_small (3+3 layers, d=256, MLP 1024, 4 cross-attention heads,
#   LayerScale init 0.5, Affine pre-norms).
# MODEL=transformer: fairseq's Transformer of the same depth, width, MLP size and heads,
#   pre-norm by default (TRANSFORMER_NORM=pre) or post-norm (TRANSFORMER_NORM=post, fairseq's
#   default), for comparisons.
# Both: shared embeddings over the joint SentencePiece vocabulary, Adam (0.9, 0.98), lr 2e-3,
# inverse-sqrt schedule after 400 warmup updates, label smoothing 0.1, dropout 0.1, weight
# decay 1e-4, 2048 tokens per update, checkpoints every 200 updates (last 5 kept), validation
# at each; training stops after MINUTES of training time (fairseq --stop-time-hours).
# The paper's WMT recipe is scripts/train_wmt14.sh (Adagrad lr 0.2, 32k warmup); on a budget
# of ~1000 updates Adam converges much faster, hence Adam here.
# Extra arguments after the pair go to fairseq-train (and override the defaults above).
set -euo pipefail
cd "$(dirname "$0")/.."
PAIR=${1:?usage: scripts/train_multi30k.sh en-de|en-fr [extra fairseq-train flags]}
shift
MODEL=${MODEL:-resmlp}
MINUTES=${MINUTES:-25}
DATA=${DATA:-data-bin/multi30k.$PAIR}
SAVE_DIR=${SAVE_DIR:-checkpoints/multi30k.$PAIR.$MODEL}
FAIRSEQ_TRAIN=${FAIRSEQ_TRAIN:-.venv/bin/fairseq-train}
[ -x "$FAIRSEQ_TRAIN" ] || FAIRSEQ_TRAIN=fairseq-train
[ -f "$DATA/dict.en.txt" ] || { echo "$DATA not found: run scripts/prepare_multi30k.py --pairs $PAIR first" >&2; exit 2; }
case "$MODEL" in
  resmlp) MODEL_FLAGS=(--user-dir resmlp_mt --arch resmlp_mt_small) ;;
  transformer) MODEL_FLAGS=(--user-dir resmlp_mt --arch transformer --encoder-embed-dim 256 --encoder-ffn-embed-dim 1024
      --encoder-layers 3 --decoder-layers 3 --encoder-attention-heads 4 --decoder-attention-heads 4)
    case "${TRANSFORMER_NORM:-pre}" in
      pre) MODEL_FLAGS+=(--encoder-normalize-before --decoder-normalize-before) ;;
      post) ;;
      *) echo "TRANSFORMER_NORM must be pre or post, got '$TRANSFORMER_NORM'" >&2; exit 2 ;;
    esac ;;
  *) echo "MODEL must be resmlp or transformer, got '$MODEL'" >&2; exit 2 ;;
esac
HOURS=$(awk -v m="$MINUTES" 'BEGIN { printf "%.6f", m / 60 }')

exec "$FAIRSEQ_TRAIN" "$DATA" "${MODEL_FLAGS[@]}" \
  --share-all-embeddings --max-source-positions 128 --max-target-positions 128 \
  --optimizer adam --adam-betas '(0.9, 0.98)' --lr 2e-3 --lr-scheduler inverse_sqrt --warmup-updates 400 \
  --criterion label_smoothed_cross_entropy --label-smoothing 0.1 --dropout 0.1 --weight-decay 0.0001 \
  --max-tokens 2048 --stop-time-hours "$HOURS" \
  --save-dir "$SAVE_DIR" --save-interval-updates 200 --keep-interval-updates 5 --no-epoch-checkpoints \
  --log-format "${LOG_FORMAT:-tqdm}" --log-interval 50 --seed "${SEED:-1}" \
  "$@"
