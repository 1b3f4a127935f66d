#!/usr/bin/env bash
# The candidate next base VLM for PIN (`captioner --preset gpu-small-located`: a ViT whose tokens keep their
# position, half of the captions saying where objects are, behind-image text replay) in two <= 10-min device calls:
# one 10-min call does not hold the toy assets *and* the caption stage (tried 2026-12-06: the assets alone took
# ~7 of its 8 minutes).
#
#   bash benchmarks/pin_base_gpu.sh assets  OUT_DIR   # call 1: builds the gpu-small toy assets -> OUT_DIR/toy_cache.tgz
#   bash benchmarks/pin_base_gpu.sh caption OUT_DIR   # call 2: with toy_cache.tgz carried at $TOY_CACHE_TGZ, trains the
#                                                      # base -> OUT_DIR/base.tgz + captioner.json, then a short PIN run
#
# Environment knobs: TOY_CACHE_TGZ (call 2's input; default runs/toy_cache.tgz), PIN_BUDGET_S (the short PIN run's wall
# limit after the base is built; 0 skips it), PRESET (the toy-asset preset, default gpu-small).
set -uo pipefail
step=${1:?"assets or caption"}
OUT=${2:?"output folder"}
PRESET=${PRESET:-gpu-small}
export GROUNDVLM_CACHE=${GROUNDVLM_CACHE:-/tmp/groundvlm_cache}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_EVALUATE_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$GROUNDVLM_CACHE"
case "$step" in
  assets)
    python -m groundvlm.recipes.toyworld build --preset "$PRESET" \
      --only data tokenizer-opt lm-opt-small vision-blip2-pos || exit
    tar czf "$OUT/toy_cache.tgz" -C "$GROUNDVLM_CACHE" toyworld
    ;;
  caption)
    tar xzf "${TOY_CACHE_TGZ:-runs/toy_cache.tgz}" -C "$GROUNDVLM_CACHE" || exit
    python -m groundvlm.recipes.systems.vpgtrans.captioner --preset gpu-small-located --out "$OUT/captioner" || exit
    tar czf "$OUT/base.tgz" -C "$OUT/captioner" model captioner.json
    cp "$OUT/captioner/captioner.json" "$OUT/"
    if [ "${PIN_BUDGET_S:-0}" -gt 0 ]; then
      timeout "$PIN_BUDGET_S" python recipes/pin.py --preset gpu --base_model "$OUT/captioner/model" \
        --output_dir "$OUT/pin" --methods raw full_image pin --train_images 8000 --epochs 10 \
        --test_images 200 --val_images 100 > "$OUT/pin.log" 2>&1
      cp "$OUT/pin/comparison.md" "$OUT/" 2>/dev/null
    fi
    ;;
  *)
    echo "unknown step $step: assets or caption" >&2
    exit 2
    ;;
esac
