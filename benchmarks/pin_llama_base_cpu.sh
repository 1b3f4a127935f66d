#!/usr/bin/env bash
# A PIN base on a Llama-style LLM, on 2 CPU cores (about an hour), in four steps:
#   1. the committed toy Llama (recipes/toy_checkpoints/lm-llama, RoPE) taught PIN's in-context lookup in text --
#      "a red star [14,28,70,112] a blue moon [0,7,35,56]. In the image is a blue moon located at" -> its box, 2-6
#      objects listed, up to 5 asked, the loss on the asked boxes, a fifth of each batch its own pretraining text
#      (benchmarks/lm_lookup_probe.py --save): the toy OPT of the committed base never learnt this pick by name;
#   2. VPGTrans's word converter: the committed caption VL-LLM's VPG (recipes/toy_checkpoints/vlm-caption, OPT)
#      onto that Llama, the projector initialised through the converter (recipes/vpgtrans.py --stage converter);
#   3. the captioner's `cpu-llama` preset (recipes/vpgtrans/captioner_llama_cpu.yaml) from the converter's model:
#      VPG + LLM trained on captions and binding questions, the LLM's text with lookups replayed behind unrelated
#      images; then its gates (captioner.json);
#   4. PIN's CPU default on it (recipes/pin.py --base_model ...), the table and verdict in WORK/pin.
#
#   bash benchmarks/pin_llama_base_cpu.sh [WORK]      (default runs/pin_llama_base; a finished step is skipped)
#
# Knobs: LOOKUP_STEPS (step 1, default 3000), PRESET (step 3: cpu-llama, cpu-llama-bind to train the Q-Former to
# bind colour to shape first, gpu-llama[-bind] at the GPU budget), MAX_STEPS (step 3, default the preset's), PIN_ARGS
# (extra flags for step 4; `--preset gpu` on a GPU). Every step writes its log into WORK.
set -euo pipefail
WORK=${1:-runs/pin_llama_base}
HERE=$(dirname "$0")
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_EVALUATE_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
mkdir -p "$WORK"
LM=$WORK/lm-llama-lookup
if [ ! -f "$LM/model.safetensors" ]; then
  python "$HERE/lm_lookup_probe.py" --lm recipes/toy_checkpoints/lm-llama --box-labels --label-last --answer-only \
    --corpus-mix 0.2 --max-items 6 --queries 5 --steps "${LOOKUP_STEPS:-3000}" --batch-size 40 --eval-every 500 \
    --eval-n 200 --warmup 100 --save "$LM" --out "$WORK/lm_lookup.json" > "$WORK/lm_lookup.log" 2>&1
fi
if [ ! -d "$WORK/converter/model" ]; then
  python recipes/vpgtrans.py --stage converter --config converter --source_model recipes/toy_checkpoints/vlm-caption \
    --language_model "$LM" --output_dir "$WORK/converter" > "$WORK/converter.log" 2>&1
fi
if [ ! -f "$WORK/captioner/captioner.json" ]; then
  extra=()
  [ -n "${MAX_STEPS:-}" ] && extra+=(--max_steps "$MAX_STEPS")
  python -m groundvlm.recipes.systems.vpgtrans.captioner --preset "${PRESET:-cpu-llama}" --out "$WORK/captioner" \
    --init_model "$WORK/converter/model" "${extra[@]}" > "$WORK/captioner.log" 2>&1
fi
# shellcheck disable=SC2086
python recipes/pin.py --base_model "$WORK/captioner/model" --output_dir "$WORK/pin" ${PIN_ARGS:-} \
  > "$WORK/pin.log" 2>&1
tail -25 "$WORK/pin.log"
