#!/usr/bin/env bash
# A PIN base whose LLM is also taught in-context lookups, on one GPU in one <= 10-min device call: the captioner's
# `gpu-bind-lookup` preset -- `gpu-bind` (the Q-Former trained to bind colour to shape, then captions + binding
# questions with the LM's text replayed behind unrelated images) with a share of every replay batch an in-context
# lookup (`--text_replay_lookup_fraction`: a question about the caption in front, or PIN's prompt about objects
# listed with their boxes; answer-only). The captioner gates the result; the model comes back as OUT/base.tgz.
#
#   bash benchmarks/pin_lookup_base_gpu.sh OUT_DIR
#
# Knobs (each overrides the preset's `captioner_bind_lookup_gpu.yaml` only when set): LOOKUP_FRACTION, REPLAY_BATCH,
# MAX_STEPS, LOOKUP_LISTED (PIN's lookups list up to this many objects, distractors included). Then on any machine:
# python recipes/pin.py --base_model <OUT/base.tgz unpacked>/model.
set -uo pipefail
OUT=${1:?output folder}
WORK=runs/pin_lookup_base
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_EVALUATE_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$WORK"
extra=()
[ -n "${LOOKUP_FRACTION:-}" ] && extra+=(--text_replay_lookup_fraction "$LOOKUP_FRACTION")
[ -n "${REPLAY_BATCH:-}" ] && extra+=(--text_replay_batch_size "$REPLAY_BATCH")
[ -n "${MAX_STEPS:-}" ] && extra+=(--max_steps "$MAX_STEPS")
[ -n "${LOOKUP_LISTED:-}" ] && extra+=(--text_replay_lookup_listed "$LOOKUP_LISTED")
python -m groundvlm.recipes.systems.vpgtrans.captioner --preset gpu-bind-lookup --out "$WORK" "${extra[@]}" \
  > "$OUT/captioner.log" 2>&1
rc=$?
tail -20 "$OUT/captioner.log"
[ -f "$WORK/captioner.json" ] && cp "$WORK/captioner.json" "$OUT/" && tar czf "$OUT/base.tgz" -C "$WORK" model captioner.json
last=$(ls -d "$WORK"/tfs/checkpoint-* 2>/dev/null | sort -V | tail -1)  # the training curve of the latest checkpoint
[ -n "$last" ] && cp "$last/trainer_state.json" "$OUT/"
exit $rc
