#!/usr/bin/env bash
# Groma's toy recipe on one GPU, in stages that each fit a <= 10-min device call; a stage whose marker exists is
# skipped (a relaunch on a warm machine resumes), and the results are copied to <results dir>.
#
#   bash benchmarks/groma_gpu.sh <results dir> stage ...
#
# Stages:
#   assets     the gpu preset's toy DINOv2 and Llama (python -m groundvlm.recipes.toyworld build --preset gpu)
#   cpu        `recipes/groma.py --preset cpu` (the CPU default's configs and models) run on the GPU: det, align,
#              instruct, eval and the frozen-LLM ablation
#   sweep      from the cpu run's align/final: instruct for INSTRUCT_EPOCHS (default "3 8") epochs, each evaluated
#   gpu        `recipes/groma.py --preset gpu` (toy_gpu_* configs; needs `assets`)
# Run from the repo root on a CUDA machine; logs under runs/groma_gpu/.
set -uo pipefail
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_EVALUATE_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
OUT=${1:?usage: groma_gpu.sh <results dir> stage ...}; shift
LOG=runs/groma_gpu
mkdir -p "$LOG" "$OUT"
LAUNCH=(accelerate launch --config_file recipes/accelerate_configs/single_gpu.yaml recipes/groma.py)

TAG=groma_gpu
STAGE_LOG_COPY=$OUT
source "$(dirname "$0")/_run_stage.sh"

collect() {  # run dir, name: every metrics json of a run, one file
  python - "$1" "$OUT/$2.json" <<'PY'
import json, pathlib, sys
run = pathlib.Path(sys.argv[1])
found = {str(p.relative_to(run)): json.loads(p.read_text()) for p in sorted(run.rglob("metrics*.json"))}
pathlib.Path(sys.argv[2]).write_text(json.dumps(found, indent=1))
PY
}

for stage in "$@"; do
  case $stage in
    assets)
      run_stage assets python -m groundvlm.recipes.toyworld build --preset gpu --only tokenizer-llama lm-llama vision-dinov2 ;;
    cpu)
      run_stage cpu "${LAUNCH[@]}" --preset cpu --use_cpu false --ablation_frozen_llm true --output_dir runs/groma/cpu_on_gpu
      collect runs/groma/cpu_on_gpu groma_cpu_on_gpu ;;
    sweep)
      for epochs in ${INSTRUCT_EPOCHS:-3 8}; do
        dir=runs/groma/cpu_on_gpu_instruct${epochs}
        run_stage "sweep$epochs" bash -c "${LAUNCH[*]} --config toy_cpu_instruct --stage instruct --use_cpu false \
          --model_name_or_path runs/groma/cpu_on_gpu/align/final --num_train_epochs $epochs --output_dir $dir && \
          ${LAUNCH[*]} --config toy_cpu_eval --stage eval --use_cpu false --output_dir $dir" &
      done
      wait
      for epochs in ${INSTRUCT_EPOCHS:-3 8}; do collect "runs/groma/cpu_on_gpu_instruct${epochs}" "groma_cpu_on_gpu_instruct${epochs}"; done ;;
    gpu)
      run_stage gpu "${LAUNCH[@]}" --preset gpu --output_dir runs/groma/toy_gpu
      collect runs/groma/toy_gpu groma_toy_gpu ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
echo "[groma_gpu] requested stages done"
