#!/usr/bin/env bash
# Experiment 1 (issue 8): CoT vs answer-only fine-tuning on the synthetic arithmetic task.
#
#   launch/experiment_synthetic.sh [RUNS_DIR] [-- --config.train.steps=300 ...]
#
# Trains configs/synthetic.py:recipe=experiment,mode={cot,answer_only} (resuming if stopped), evaluates both
# and the base model on 240 held-out problems of 1-8 operations (seed 1234, disjoint seed from
# training), and writes results/synthetic/{cot,answer_only,base}_summary.json, by_steps.json and
# by_steps.png. Overrides after `--` go to both trainings.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-runs/synthetic}
[ $# -gt 0 ] && shift
[ "${1:-}" = "--" ] && shift
cotjax=.venv/bin/cotjax
mkdir -p "$runs" results/synthetic
heldout=$runs/heldout_1to8.jsonl
$cotjax synthetic "$heldout" 240 1 8 1234
evaluate() {  # NAME CONFIG [cotjax eval options]
  local name=$1 config=$2; shift 2
  $cotjax eval --config="$config" --task=gsm8k --data="$heldout" --out="$runs/eval_$name" "$@"
  cp "$runs/eval_$name/summary.json" "results/synthetic/${name}_summary.json"
}
for mode in cot answer_only; do
  time $cotjax train --config=configs/synthetic.py:recipe=experiment,mode=$mode --workdir="$runs/$mode" "$@"
  evaluate "$mode" configs/synthetic.py:recipe=experiment,mode=$mode --workdir="$runs/$mode"
done
evaluate base configs/synthetic.py:recipe=experiment --config.eval.prompting=zero_shot_cot
$cotjax report by-steps results/synthetic/by_steps \
  "cot=$runs/eval_cot/predictions.jsonl" "answer_only=$runs/eval_answer_only/predictions.jsonl" \
  "base=$runs/eval_base/predictions.jsonl"
