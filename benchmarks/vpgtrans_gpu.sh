#!/usr/bin/env bash
# The toy VPGTrans experiment (benchmarks/vpgtrans_transfer.py) in ONE device call on one H200 (<= 600 s
# wall, a fresh machine): transfer across size (OPT-small -> OPT-base) and across type (OPT-small -> T5), each with
# TFS, VPGInherit and VPGTrans, all six as parallel processes (the tiny models leave the GPU launch-bound; the CPU
# cores render the toy images), then the report (Table 3 form + Fig. 7).
#
# Source: the committed caption VL-LLM recipes/toy_checkpoints/vlm-caption (built on gpu-small toy assets). Targets:
# the gpu-small toy LMs lm-opt-base (256x4, same tokenizer as the source) and lm-t5 (128, 2+2 layers, T5 tokenizer),
# built here by the first run process of each transfer (the others wait on the build lock). tokenizer-opt comes with
# a carried cache or is built here first (the same corpus as the source's); tokenizer-t5 is built here (~10 s).
#
#   device call, repo root, carry [".whl"] (and "runs/cache/toyworld/gpu-small" if it exists):
#     GIT_COMMIT=<sha> bash benchmarks/vpgtrans_gpu.sh
#   results -> $OUT (else runs/vpgtrans/gpu_results): results.json results.md fig7_size.png fig7_type.png logs.tar.gz
#
# Plan of one call (estimates, not measurements: gpu-small opt-small LM build 82 s, ViT 177 s on an H200):
#   0-20 s pip install of .whl, imports | 20-150 s lm-opt-base (~100 s) and tokenizer-t5 + lm-t5 (~130 s) in
#   parallel, runs of a transfer waiting on its LM | then per process 6 epochs x 16000 images (~96k, CPU-bound at
#   ~2.5 ms/image over 2 loader workers per run, 12 workers + 6 mains on 16 cores) + 6 evaluations (128 captions +
#   128 questions, beam 5): ~200 s | report ~15 s. Expected ~400 s. At VPG_DEADLINE (480 s after start) unfinished
#   runs are stopped; their evaluated epochs are still reported (marked partial).
#
# Knobs (env): VPG_EPOCHS (6), VPG_TRAIN_SIZE (16000 toy images per epoch), VPG_WORKERS (2 loader workers per run),
# VPG_DEADLINE (480), VPG_PRESET (gpu; `tiny` with VPG_TRAIN_SIZE=32 VPG_WORKERS=0 is a CPU dry run of this script),
# VPG_PARTS ("size type"), VPG_EVAL_SIZE (the configs' 128 evaluation images per epoch), VPG_SEEDS (e.g. "0 1 2": each
# seed's runs into ${WORK}_seedN, all in parallel, then the speed-up across seeds, seeds.{json,md}).
set -uo pipefail
start=$SECONDS
export GROUNDVLM_CACHE=$PWD/runs/cache HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_EVALUATE_OFFLINE=1 \
  TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 GIT_COMMIT=${GIT_COMMIT:-}
WORK=runs/vpgtrans/benchmark_gpu
DEST=${OUT:-runs/vpgtrans/gpu_results}
mkdir -p "$WORK/logs" "$DEST"
stamp() { echo "[vpgtrans_gpu $((SECONDS - start)) s] $*"; }

if ! python3 -c "import trl, evaluate" 2>/dev/null; then  # the device image lacks them: shared/device/fetch_wheels.sh
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
stamp "packages ready"
# The source's tokenizer (gpu-small tokenizer-opt, ~10 s to build) when no carried cache brings it: a fresh device
# machine has none, and the CPU side cannot build the gpu-small preset.
if [ ! -d "$GROUNDVLM_CACHE/toyworld/gpu-small/tokenizer-opt" ]; then
  python3 -m groundvlm.recipes.toyworld build --preset gpu-small --only tokenizer-opt > "$WORK/logs/tokenizer-opt.log" 2>&1 \
    || { tail -20 "$WORK/logs/tokenizer-opt.log"; exit 1; }
  stamp "tokenizer-opt built"
fi

# The converter's SGD steps: the reference pairs ~1M captions in batches of 4096 (~1200 steps over its 5 epochs);
# the toy's 16000 captions (the training images' captions) at 4096 would give 20 steps, so batches of 256 (315 steps;
# on the committed captioner, OPT self-transfer on 4000 captions: CIDEr 0.84 after 5 steps, 2.03 after 80).
args=(--preset "${VPG_PRESET:-gpu}" --assets gpu-small --source recipes/toy_checkpoints/vlm-caption
      --epochs "${VPG_EPOCHS:-6}" --train_size "${VPG_TRAIN_SIZE:-16000}" --workers "${VPG_WORKERS:-2}"
      --eval_batch_size 64)
recipe=(--converter_captions_per_batch 256 ${VPG_EVAL_SIZE:+--toy_eval_size "$VPG_EVAL_SIZE"})
deadline=${VPG_DEADLINE:-480}
seeds=(${VPG_SEEDS:-config})  # "config": the recipe configs' seed, into $WORK; a number N: --seed N, into ${WORK}_seedN
parts=(${VPG_PARTS:-size type})
works=() pids=() names=()
for seed in "${seeds[@]}"; do
  work=$WORK extra=()
  if [ "$seed" != config ]; then work=${WORK}_seed$seed extra=(--seed "$seed"); fi
  mkdir -p "$work/logs"; works+=("$work")
  for part in "${parts[@]}"; do
    for method in tfs inherit vpgtrans; do
      timeout -k 15 $((deadline - (SECONDS - start))) python3 benchmarks/vpgtrans_transfer.py "${args[@]}" --out "$work" \
        --part "$part" --method "$method" -- "${recipe[@]}" "${extra[@]}" > "$work/logs/$part-$method.log" 2>&1 &
      pids+=($!) names+=("$work:$part-$method")
    done
  done
done
for i in "${!pids[@]}"; do
  wait "${pids[$i]}"; rc=$?
  stamp "${names[$i]} exit $rc$([ $rc -eq 124 ] && echo ' (stopped at the deadline)')"
  log=${names[$i]%%:*}/logs/${names[$i]#*:}.log
  [ $rc -ne 0 ] && [ $rc -ne 124 ] && tail -15 "$log"
done

builds=$(cd "$GROUNDVLM_CACHE" && ls toyworld/gpu-small/*/build_info.json 2>/dev/null)
for work in "${works[@]}"; do
  python3 benchmarks/vpgtrans_transfer.py "${args[@]}" --out "$work" --part report > "$work/logs/report.log" 2>&1 \
    || tail -20 "$work/logs/report.log"
  stamp "report written: $work"
  cat "$work/results.md"
  tag=$([ "$work" = "$WORK" ] && echo "" || echo "_${work##*_}")
  for f in results.json results.md; do cp "$work/$f" "$DEST/${f%.*}$tag.${f##*.}"; done
  [ ${#works[@]} -eq 1 ] && cp "$work"/fig7_*.png "$DEST"/
  logs=$(cd "$work" && ls -d logs */*/train.log */*/metrics.json */*/config.yaml 2>/dev/null)
  tar czf "$DEST/logs$tag.tar.gz" -C "$work" $logs -C "$GROUNDVLM_CACHE" $builds
done
if [ ${#works[@]} -gt 1 ]; then
  python3 benchmarks/vpgtrans_transfer.py --part seeds --seed_dirs "${works[@]}" --out "$DEST"
fi
stamp "done: $(ls "$DEST" | tr '\n' ' ')"
