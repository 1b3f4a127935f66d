#!/usr/bin/env bash
# The in-context lookup probe (benchmarks/lm_lookup_probe.py) at GPU budget: seven variants side by side on one GPU
# (one also saves its fine-tuned LM as <dir>/lm-llama-lookup.tgz),
# each for at most LIMIT seconds (default 545, one device call), batch 256, 500 warm-up steps; every variant's JSON
# (rewritten at each evaluation, so a run cut by the limit still leaves its curve) and the logs' tails under <dir>.
#
#   bash benchmarks/lm_lookup_probe_gpu.sh <dir>
#   device call (returns at most 8 files): bash benchmarks/lm_lookup_probe_gpu.sh /tmp/p/probe; tar czf $OUT/probes.tgz -C /tmp/p probe
set -uo pipefail
OUT=${1:?usage: lm_lookup_probe_gpu.sh <results dir>}
mkdir -p "$OUT"
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
P=(python "$(dirname "$0")/lm_lookup_probe.py" --steps 200000 --eval-every 1000 --eval-n 400 --warmup 500 --batch-size 256)
L=recipes/toy_checkpoints/lm-llama
LOGS=$(mktemp -d)
run() { name=$1; shift; timeout "${LIMIT:-545}" "${P[@]}" "$@" --out "$OUT/probe_$name.json" > "$LOGS/$name.txt" 2>&1 & }
# loss on the whole text (on the CPU only the whole-text loss learned any lookup form; the label-only loss none)
run llama_q4 --lm $L --queries 4
run llama_label_last_q4 --lm $L --label-last --queries 4
# the toy Llama taught the lookup while replaying its own corpus (a quarter of each batch); saved, packed into <dir>
run llama_q4_mix25 --lm $L --queries 4 --corpus-mix 0.25 --save "$LOGS/lm-llama-lookup"
run llama_q4_answer_only --lm $L --queries 4 --answer-only
run fresh_q4 --lm $L --random-init --queries 4
run fresh_256x6_q4 --lm $L --random-init --hidden-size 256 --num-hidden-layers 6 --queries 4
run fresh2l_single_token_label_last_q4 --lm $L --random-init --num-hidden-layers 2 --single-token --label-last --queries 4
wait
[ -d "$LOGS/lm-llama-lookup" ] && tar czf "$OUT/lm-llama-lookup.tgz" -C "$LOGS" lm-llama-lookup
for f in "$LOGS"/*.txt; do echo "== $(basename "$f" .txt)"; tail -4 "$f"; done | tee "$OUT/probe_logs.txt"
