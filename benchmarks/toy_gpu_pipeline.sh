#!/usr/bin/env bash
# The toy world's GPU runs, in dependency order, each stage skipped when its marker exists (so a relaunch on a
# warm machine resumes). Produces: the gpu-small toy assets, the caption-only toy VL-LLM (committed under
# recipes/toy_checkpoints/vlm-caption), PIN's Table-1 analogue, and the VPGTrans transfer experiment.
#
#   bash benchmarks/toy_gpu_pipeline.sh [stage ...]     # stages: assets captioner pin vpgtrans (default: all)
#
# Run from the repo root on a CUDA machine; logs and results under runs/gpu_pipeline/.
set -uo pipefail
export GROUNDVLM_CACHE=${GROUNDVLM_CACHE:-$PWD/runs/cache}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_EVALUATE_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
LOG=runs/gpu_pipeline
mkdir -p "$LOG"
stages=("$@"); [ ${#stages[@]} -eq 0 ] && stages=(assets captioner pin vpgtrans)
CAPTIONER=runs/vpgtrans/captioner_gpu-small

TAG=pipeline
source "$(dirname "$0")/_run_stage.sh"

for stage in "${stages[@]}"; do
  case $stage in
    assets)
      run_stage assets python -m groundvlm.recipes.toyworld build --preset gpu-small \
        --only tokenizer-opt lm-opt-small vision-blip2 || exit 1 ;;
    captioner)
      run_stage captioner python -m groundvlm.recipes.systems.vpgtrans.captioner --preset gpu-small --out "$CAPTIONER" || exit 1 ;;
    pin)
      run_stage pin accelerate launch --config_file recipes/accelerate_configs/single_gpu.yaml recipes/pin.py \
        --preset gpu --base_model "$CAPTIONER/model" --output_dir runs/pin/toy_gpu ${PIN_ARGS:-} || exit 1 ;;
    vpgtrans)
      run_stage vpgtrans_assets python -m groundvlm.recipes.toyworld build --preset gpu --only lm-opt-base lm-t5 || exit 1
      run_stage vpgtrans_size python benchmarks/vpgtrans_transfer.py --preset gpu --part size --source "$CAPTIONER/model" ${VPG_ARGS:-} || exit 1
      run_stage vpgtrans_type python benchmarks/vpgtrans_transfer.py --preset gpu --part type --source "$CAPTIONER/model" ${VPG_ARGS:-} || exit 1
      run_stage vpgtrans_report python benchmarks/vpgtrans_transfer.py --preset gpu --part report --source "$CAPTIONER/model" || exit 1 ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
echo "[pipeline] all requested stages done"
