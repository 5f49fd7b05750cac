#!/usr/bin/env bash
# The offline default: the whole Mini-LLaVA pipeline on this machine, no network, tiny random backbones.
#   bash scripts/smoke.sh [OUT_DIR]        (default OUT_DIR: outputs/offline)
# Each step is the command you would run for real (with Hub ids and real data instead of local folders).
set -euo pipefail
source "$(dirname "$0")/setup_env.sh"   # .venv + torch 2.13 CPU + project[dev], idempotent
OUT="${1:-outputs/offline}"
mkdir -p "$OUT/recipes"
OUT="$(cd "$OUT" && pwd)"
START=$(date +%s)
export MLFLOW_TRACKING_URI="sqlite:///$OUT/mlflow.db" MLFLOW_EXPERIMENT_NAME=minillava-offline  # offline tracking

# 1. Backbones: tiny SigLIP/CLIP towers + tiny Qwen2/Llama LLMs with locally trained tokenizers (stand-ins for the Hub).
python -m data_scripts.make_tiny_backbones --out "$OUT/backbones"
# 2. Data: the synthetic document/UI set (train/validation/test, ~25% unanswerable) with its manifest.
python -m data_scripts.make_synthetic --out "$OUT/data/synthetic" --n 2000 --seed 0 --num_proc 2
# 3. Recipes: the smoke recipes with their OUT_DIR placeholder filled in.
for stage in stage1 stage2; do sed "s#OUT_DIR#$OUT#g" "recipes/smoke/$stage.yaml" > "$OUT/recipes/$stage.yaml"; done
# 4. Stage 1: projector warm-up (on random tiny backbones the tower and LLM train too; see the recipe).
python run_sft.py "$OUT/recipes/stage1.yaml"
python run_eval.py --model "$OUT/stage1" --dataset "$OUT/data/synthetic" --split test --threshold_split validation \
  --save_threshold --output_dir "$OUT/eval/stage1"
# 5. Stage 2: projector + LoRA from stage 1; the merged whole model goes to stage2/merged.
python run_sft.py "$OUT/recipes/stage2.yaml"
python run_eval.py --model "$OUT/stage2/merged" --dataset "$OUT/data/synthetic" --split test \
  --threshold_split validation --save_threshold --output_dir "$OUT/eval/stage2"
# 6. The final model (with its fitted abstention threshold) where the demo looks for it, its card re-pointed at the
#    copy (`--model_id your-org/name` instead before pushing it to the Hub), and the summary.
rm -rf "$OUT/final" && cp -r "$OUT/stage2/merged" "$OUT/final"
python -m recipes.provenance "$OUT/final"
python scripts/smoke_summary.py --out "$OUT" --seconds $(( $(date +%s) - START ))
