#!/usr/bin/env bash
# Learning-rate x epochs sweep for experiment 2 (issue 8): trains configs/gsm8k.py:mode=MODE
# once per (mode, lr, epochs), each run with its own warmup + cosine schedule over its epochs,
# evaluates each on the 500-problem validation slice (greedy), and tabulates validation loss and
# accuracy; the choice per mode is the highest strict accuracy, ties to the lower validation loss.
#
#   launch/sweep_gsm8k.sh [RUNS_DIR]
#
# Environment (defaults in brackets):
#   MODES ["cot"]  LRS ["5e-5 1e-4 2e-4"]  EPOCHS ["3 2 1"]  (longest runs first)
#   PARALLEL [1]   runs at a time, each given 0.9/PARALLEL of the accelerator's memory (unless
#                  XLA_PYTHON_CLIENT_MEM_FRACTION is set). Keep 1 on one GPU without CUDA MPS: its
#                  processes take turns. Measured on one H200: 12 runs together trained at ~7.1k
#                  tokens/s each (~86k in all), below the 124k of one train step alone
#                  (benchmarks/train_throughput.py --batch 8), and none finished its evaluation in 420 s.
#   EVAL_BATCH [64]  rows decoded together     OUT_DIR [results/gsm8k/sweep]
#   EXTRA [""]     more --config.* overrides for every train and eval
# A run whose summary is already in OUT_DIR is skipped; a stopped one resumes from its checkpoint.
# Ends with `cotjax viz sweep OUT_DIR OUT_DIR/sweep.png` (table in OUT_DIR/sweep.md).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-runs/sweep}
out=${OUT_DIR:-results/gsm8k/sweep}
parallel=${PARALLEL:-1}
cotjax=${COTJAX:-.venv/bin/cotjax}
for mode in ${MODES:-cot}; do  # reject a typo before hours of training, not after
  case $mode in cot | answer_only) ;; *) echo "unknown mode '$mode': cot or answer_only" >&2; exit 2 ;; esac
done
mkdir -p "$runs" "$out"
if [ "$parallel" -gt 1 ] && [ -z "${XLA_PYTHON_CLIENT_MEM_FRACTION:-}" ]; then
  XLA_PYTHON_CLIENT_MEM_FRACTION=$(awk "BEGIN{printf \"%.3f\", 0.9/$parallel}")
  export XLA_PYTHON_CLIENT_MEM_FRACTION
fi
# Runs of one model share the decoder's compilation; the train steps differ (lr, steps).
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$runs/jax_cache}

one_run() {  # MODE LR EPOCHS
  local mode=$1 lr=$2 epochs=$3
  local name="${mode}_lr${lr}_ep${epochs}" config="configs/gsm8k.py:mode=$mode"
  local dir="$runs/$name" start=$SECONDS
  if [ -f "$out/${name}_summary.json" ]; then echo "$name: already evaluated"; return; fi
  mkdir -p "$dir"
  # Checkpoints only at the end: the sweep keeps no intermediate state worth the disk traffic.
  $cotjax train --config="$config" --workdir="$dir" --config.train.lr="$lr" \
    --config.data.num_epochs="$epochs" --config.train.checkpoint_every=0 --config.train.keep=1 \
    --config.train.keep_best=0 --config.train.eval_batches=-1 --config.train.progress=False \
    ${EXTRA:-} >"$dir/train.log" 2>&1
  # A preempted training saves, prints stopped_by_signal and exits 0: never evaluate it as done.
  if grep -q '"stopped_by_signal": true' "$dir/train.log"; then
    echo "$name: stopped by a signal before the end; rerun to resume it" >&2; return 1
  fi
  cp "$dir/metrics.jsonl" "$out/${name}_metrics.jsonl"
  $cotjax eval --config="$config" --workdir="$dir" --task=gsm8k --data=validation \
    --out="$dir/eval" --config.eval.batch_size="${EVAL_BATCH:-64}" ${EXTRA:-} >"$dir/eval.log" 2>&1
  cp "$dir/eval/predictions.jsonl" "$out/${name}_predictions.jsonl"
  cp "$dir/eval/summary.json" "$out/${name}_summary.json"
  echo "$name: done in $((SECONDS - start)) s"
}

running=0
for mode in ${MODES:-cot}; do
  for epochs in ${EPOCHS:-3 2 1}; do
    for lr in ${LRS:-5e-5 1e-4 2e-4}; do
      if [ "$running" -ge "$parallel" ]; then wait -n || true; running=$((running - 1)); fi
      (one_run "$mode" "$lr" "$epochs" || echo "${mode}_lr${lr}_ep${epochs}: FAILED, see $runs") &
      running=$((running + 1))
    done
  done
done
wait
$cotjax viz sweep "$out" "$out/sweep.png"
