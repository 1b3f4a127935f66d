#!/usr/bin/env bash
# PIN's toy Table-1 analogue and the position probes in ONE device call (<= 10 min) on one GPU:
# every method / PIN variant (a second seed, lr 1e-4, fresh scenes per sample) is its own `recipes/pin.py --preset gpu` process (benchmarks/pin_table.py), all
# concurrent with benchmarks/pin_probe.py; the tiny toy models leave the GPU launch-bound, so they share it well.
#
#   GIT_COMMIT=<sha> bash benchmarks/pin_gpu.sh [OUT_DIR]      # from the repo root on a CUDA machine
#
# Environment knobs: BASE (default: the committed caption VL-LLM), IMAGES x EPOCHS (training budget per method),
# BUDGET_S (wall seconds before unfinished runs are left out of the merge), COMPARE_BASE (another base VLM: its
# constant baselines, PIN and PIN on fresh scenes run in the same call, as rows `cmp_main` / `cmp_fresh`).
set -uo pipefail
export GROUNDVLM_CACHE=${GROUNDVLM_CACHE:-$PWD/runs/cache}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_EVALUATE_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
# Six processes share 16 cores: without a thread cap each torch process spawns 16 threads and the scene
# composition / feature caching slows ~10x (a first call on an H200 did not get past caching in 500 s).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} MKL_NUM_THREADS=${OMP_NUM_THREADS:-2}
OUT=${1:-runs/pin/gpu}
BASE=${BASE:-recipes/toy_checkpoints/vlm-caption}
IMAGES=${IMAGES:-8000}
EPOCHS=${EPOCHS:-40}
BUDGET_S=${BUDGET_S:-500}
mkdir -p "$OUT"
COMMON="--train_images $IMAGES --epochs $EPOCHS --dataloader_num_workers 1 --save_steps 100000"

timeout "$BUDGET_S" python benchmarks/pin_probe.py --base_model "$BASE" --out "$OUT/probe" > "$OUT/probe.log" 2>&1 &
probe=$!
VARIANTS=(
  main:"--methods raw random full_image pin"
  pin_seed1:"--method pin --seed 1"
  pin_lr1e-4:"--method pin --learning_rate 1e-4"
  pin_fresh:"--method pin --fresh_scenes true --dataloader_num_workers 4"
  prompts:"--methods coop vpt_f"
  vision:"--methods vpt_phi lora_phi"
)
if [ -n "${COMPARE_BASE:-}" ]; then
  # A later --base_model overrides the common one (the recipe's parser keeps the last).
  VARIANTS+=(
    cmp_main:"--base_model $COMPARE_BASE --methods raw random full_image pin"
    cmp_fresh:"--base_model $COMPARE_BASE --method pin --fresh_scenes true --dataloader_num_workers 4"
  )
fi
timeout "$BUDGET_S" python benchmarks/pin_table.py --out "$OUT/table" --base_model "$BASE" --common "$COMMON" \
  --variants "${VARIANTS[@]}" > "$OUT/table.log" 2>&1
wait $probe
# Runs cut by the budget are listed as "did not finish"; the merge reads whatever comparison.json files exist.
python benchmarks/pin_table.py --out "$OUT/table" --merge-only --variants "${VARIANTS[@]/:*/:}" >> "$OUT/table.log" 2>&1
cat "$OUT/table/table.md" "$OUT/probe/probe.json" 2>/dev/null
