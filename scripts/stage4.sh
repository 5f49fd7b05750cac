#!/usr/bin/env bash
# Stage 4 on the offline default, after scripts/smoke.sh: train the abstention itself from the merged stage-2 model.
#   bash scripts/stage4.sh [OUT_DIR] [SEED]     (defaults: outputs/offline, 0)
# Each step is the command of a real run (Hub ids and real data instead of the offline folders).
set -euo pipefail
source "$(dirname "$0")/setup_env.sh"
OUT="$(cd "${1:-outputs/offline}" && pwd)"
SEED="${2:-0}"
test -d "$OUT/stage2/merged" || { echo "No $OUT/stage2/merged: run scripts/smoke.sh first." >&2; exit 1; }
# 1. The contrastive evaluation set: each question asked of two images, the field present in one, absent in its twin.
test -d "$OUT/data/contrastive" || python -m data_scripts.make_synthetic --out "$OUT/data/contrastive" \
  --n 1000 --seed 7 --variant contrastive --num_proc 2
# 2. Stage 2's own answers on the train split (greedy, no threshold): what the preference pairs are made of.
test -f "$OUT/eval/stage2-train/predictions.jsonl" || python run_eval.py --model "$OUT/stage2/merged" \
  --dataset "$OUT/data/synthetic" --split train --threshold 0 --output_dir "$OUT/eval/stage2-train"
python -m data_scripts.make_preferences --dataset "$OUT/data/synthetic" --split train --seed "$SEED" \
  --predictions "$OUT/eval/stage2-train/predictions.jsonl" --out "$OUT/data/preferences"
# 3. DPO (sigmoid + SFT anchor) and GRPO (exact match / abstention reward), LoRA, from the same stage-2 model.
for kind in dpo grpo; do
  sed "s#OUT_DIR#$OUT#g" "recipes/smoke/stage4_$kind.yaml" > "$OUT/recipes/stage4_$kind.yaml"
  test -d "$OUT/stage4_$kind-seed$SEED/merged" || python run_sft.py "$OUT/recipes/stage4_$kind.yaml" \
    --seed "$SEED" --output_dir "$OUT/stage4_$kind-seed$SEED"
done
# 4. Stage 2 and both stage-4 models on the test split (threshold refitted on validation) and the contrastive one.
for model in "stage2/merged" "stage4_dpo-seed$SEED/merged" "stage4_grpo-seed$SEED/merged"; do
  name="$(dirname "$model")"
  test -f "$OUT/eval/$name/eval_results.json" || python run_eval.py --model "$OUT/$model" \
    --dataset "$OUT/data/synthetic" --split test --threshold_split validation --output_dir "$OUT/eval/$name"
  test -f "$OUT/eval/$name-contrastive/eval_results.json" || python run_eval.py --model "$OUT/$model" \
    --dataset "$OUT/data/contrastive" --split test --threshold_split validation \
    --output_dir "$OUT/eval/$name-contrastive"
done
python scripts/stage4_summary.py --out "$OUT" --seeds "$SEED"   # several: --seeds 0 1 2, once each has run
