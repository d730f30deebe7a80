#!/usr/bin/env bash
# Does ResMLP survive the paper's optimiser? Adagrad lr 0.2 with a linear warm-up of WARMUP
# updates (default 1000, so the lr passes 0.02 at update 100 and 0.06 at update 300), on a
# prepared Multi30k pair, one thread per run, four runs side by side in pairs:
#   resmlp        resmlp_mt_small, the paper's recipe otherwise (label smoothing 0.1, dropout 0.1)
#   resmlp_frozen the same with every token-mixing matrix frozen (--freeze-token-mixers)
#   resmlp_clip   the same with --clip-norm 0.1
#   transformer   a pre-norm Transformer of the same size, the same recipe
# Logs (fairseq JSON, every 25 updates: loss, gnorm, lr) go to OUT (default runs/adagrad_stability).
#
#   scripts/adagrad_stability.sh [DATA_DIR]       # default data-bin/multi30k.en-de; UPDATES=450 WARMUP=1000
#
# Observed (2026-11-26, this machine, one seed each; README "GPU acceptance"): resmlp blew up
# between update 100 (lr 0.020, loss 8.05) and 125 (loss 26,000); resmlp_frozen and resmlp_clip
# trained on to update 225 (lr 0.045); the Transformer to 325 (lr 0.065), where the runs were stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-data-bin/multi30k.en-de}
OUT=${OUT:-runs/adagrad_stability}
UPDATES=${UPDATES:-450}
WARMUP=${WARMUP:-1000}
[ -d "$DATA" ] || { echo "error: $DATA is not a prepared data folder (make multi30k, or give DATA_DIR)" >&2; exit 2; }
mkdir -p "$OUT"
TRAIN=${FAIRSEQ_TRAIN:-.venv/bin/fairseq-train}
run() {  # NAME ARCH [FLAGS...]
    local name=$1 arch=$2; shift 2
    echo "[adagrad_stability] $name: $OUT/$name.log"
    OMP_NUM_THREADS=1 "$TRAIN" "$DATA" --user-dir resmlp_mt --arch "$arch" --share-all-embeddings \
        --max-source-positions 128 --max-target-positions 128 \
        --optimizer adagrad --lr 0.2 --lr-scheduler fixed --warmup-updates "$WARMUP" \
        --criterion label_smoothed_cross_entropy --label-smoothing 0.1 --dropout 0.1 --max-tokens 2048 \
        --max-update "$UPDATES" --log-format json --log-interval 25 --no-save --disable-validation --seed 1 \
        --num-workers 0 --required-batch-size-multiple 1 "$@" > "$OUT/$name.log" 2>&1
}
run resmlp resmlp_mt_small & run resmlp_frozen resmlp_mt_small --freeze-token-mixers & wait
run resmlp_clip resmlp_mt_small --clip-norm 0.1 & run transformer transformer --encoder-embed-dim 256 \
    --encoder-ffn-embed-dim 1024 --encoder-layers 3 --decoder-layers 3 --encoder-attention-heads 4 \
    --decoder-attention-heads 4 --encoder-normalize-before --decoder-normalize-before & wait
for f in "$OUT"/*.log; do
    echo "== $(basename "$f" .log)"
    grep -o '"num_updates": "[0-9]*"\|"loss": "[^"]*"\|"lr": "[^"]*"' "$f" | paste - - - | tail -4 || true
done
