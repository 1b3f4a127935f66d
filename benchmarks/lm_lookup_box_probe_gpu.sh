#!/usr/bin/env bash
# PIN's own in-context lookup in text -- "a red star [14,28,70,112] a blue moon [0,7,35,56]. In the image is a blue
# moon located at" -> " [0,7,35,56]" (benchmarks/lm_lookup_probe.py --box-labels --label-last --answer-only) -- at
# GPU budget: five box variants side by side on one GPU, each for at most LIMIT seconds (default 540, one device call),
# batch 256, the loss on the asked boxes' tokens. Does the two-step lookup (carry the asked name to "[", match it
# against the token before each listed "[") form at ~10x the CPU's questions at 128x4, or only in a wider/deeper LM?
# Two more runs ask Groma's REC-shaped lookup (fused-names) at the same budget. Every run's JSON (rewritten at each
# evaluation, so a run cut by the limit still leaves its curve, with per-answer-token accuracy and, for boxes, the
# random-pick baseline per token) and the logs' tails land in <dir>: eight files.
#
#   bash benchmarks/lm_lookup_box_probe_gpu.sh <dir>
#   ONLY="box_opt_k6q5 box_fresh256x6_k6q5" DATA_WORKERS=4 bash benchmarks/lm_lookup_box_probe_gpu.sh <dir>
#
# The texts are drawn and tokenized on the CPU, which bounds a small LM on a GPU: on an H100 (2026-12-07) all seven
# side by side ran the box forms at ~2 steps/s, and three of them (ONLY=..., one thread each drawing) at 3-6 steps/s.
# ONLY names the runs to start; DATA_WORKERS (default 0: one thread per run) gives each run that many processes
# drawing batches (`lm_lookup_probe.py --data-workers`; keep runs x workers within the host's cores). On 2 CPU cores
# (2026-12-08, `benchmarks/lookup_drawing_rate.py` on the v2 base's tokenizer) one thread draws 12.3 batches/s of 256
# texts of 2-6 boxes, two worker processes 23.8/s.
set -uo pipefail
OUT=${1:?usage: lm_lookup_box_probe_gpu.sh <results dir>}
mkdir -p "$OUT"
# the CPU-side tensor work of a step is small: few threads per run, so that runs x threads fit the host's cores
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
HERE=$(dirname "$0")
WORK=$(mktemp -d)
OPT=$WORK/lm-opt  # the committed PIN base's toy OPT, taken out of the VLM
python "$HERE/lookup_base.py" extract --vlm recipes/toy_checkpoints/vlm-caption --out "$OPT" || exit 1
P=(python "$HERE/lm_lookup_probe.py" --box-labels --label-last --answer-only --steps 400000 --eval-every 1000
  --eval-n 200 --warmup 500 --batch-size 256 --data-workers "${DATA_WORKERS:-0}")
# run FORM NAME COMMAND...: in the background, for at most LIMIT seconds, its JSON as <dir>/FORM_NAME.json
run() {
  form=$1 name=$2; shift 2
  [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" ${form}_$name "* ]] && return
  timeout "${LIMIT:-540}" "$@" --out "$OUT/${form}_$name.json" > "$WORK/${form}_$name.txt" 2>&1 &
}
# 2-3 listed objects (PIN's scenes) leave a good shortcut -- copy any listed box (x1 right ~0.46 by a random pick);
# 2-6 objects with up to 5 asked per text make picking the named one pay more, with a denser signal
K6=(--max-items 6 --queries 5)
run box opt_k3q2 "${P[@]}" --lm "$OPT" --max-items 3 --queries 2
run box opt_k6q5 "${P[@]}" --lm "$OPT" "${K6[@]}"
run box fresh128x4_k6q5 "${P[@]}" --lm "$OPT" --random-init "${K6[@]}"
run box fresh256x6_k6q5 "${P[@]}" --lm "$OPT" --random-init --hidden-size 256 --num-hidden-layers 6 "${K6[@]}"
run box fresh384x8_k6q5 "${P[@]}" --lm "$OPT" --random-init --hidden-size 384 --num-hidden-layers 8 "${K6[@]}" --lr 5e-4
# Groma's REC lookup (a two-word phrase against one key position right after its one-token label, as
# `<r_j><region>`), after the two one-token stages that small LMs do learn: the committed toy Llama and a wider fresh one
F=(python "$HERE/lm_lookup_probe.py" --queries 3 --max-items 4 --eval-every 1000 --eval-n 200 --warmup 500
  --batch-size 256 --data-workers "${DATA_WORKERS:-0}" --curriculum one-token-free:500 one-token:1000 fused-names:400000)
L=recipes/toy_checkpoints/lm-llama
run fused llama "${F[@]}" --lm $L
run fused fresh256x6 "${F[@]}" --lm $L --random-init --hidden-size 256 --num-hidden-layers 6
wait
for f in "$WORK"/*.txt; do echo "== $(basename "$f" .txt)"; tail -4 "$f"; done | tee "$OUT/box_probe_logs.txt"
