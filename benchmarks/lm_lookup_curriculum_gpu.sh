#!/usr/bin/env bash
# The lookup curriculum (benchmarks/lm_lookup_probe.py --curriculum) at GPU step counts, three fresh toy Llamas of the
# cpu preset's size (128x4) side by side on one GPU: label first (Groma's <r_j> before its region), label last, and
# label last through PIN's boxes. Each run's JSON is rewritten at every evaluation, so a run stopped at the deadline
# keeps its curve.
#
#   bash benchmarks/lm_lookup_curriculum_gpu.sh <results dir> [deadline seconds, default 270]
set -uo pipefail
OUT=${1:?usage: lm_lookup_curriculum_gpu.sh <results dir> [deadline s]}; DEADLINE=${2:-270}
mkdir -p "$OUT"
common=(--lm recipes/toy_checkpoints/lm-llama --random-init --queries 4 --max-items 4 --warmup 100 --eval-every 500
        --eval-n 200 --batch-size 64)
timeout "$DEADLINE" python benchmarks/lm_lookup_probe.py "${common[@]}" \
  --curriculum one-token-free:500 one-token:1000 names:30000 --out "$OUT/label_first.json" > "$OUT/label_first.log" 2>&1 &
timeout "$DEADLINE" python benchmarks/lm_lookup_probe.py "${common[@]}" --label-last \
  --curriculum one-token-free:500 one-token:1000 names:30000 --out "$OUT/label_last.json" > "$OUT/label_last.log" 2>&1 &
timeout "$DEADLINE" python benchmarks/lm_lookup_probe.py "${common[@]}" --label-last \
  --curriculum one-token-free:500 one-token:1000 names:4000 boxes:30000 --out "$OUT/boxes.json" > "$OUT/boxes.log" 2>&1 &
wait
for f in label_first label_last boxes; do echo "== $f"; grep "stage" "$OUT/$f.log" | tail -4; done
