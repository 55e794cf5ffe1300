#!/usr/bin/env bash
# Experiments 2 and 3 (issue 8): GSM8K with SmolLM2-135M-Instruct: CoT fine-tuning against
# answer-only fine-tuning and against prompting the base model (zero-shot CoT and 8-shot CoT);
# then CoT fine-tuning of Gemma 3 270M against answer-only fine-tuning and its base model
# prompted zero-shot.
#
#   launch/experiment_gsm8k.sh [RUNS_DIR] [STAGE ...]
#
# Stages, in order (default: all): cot answer_only base_zero_shot base_few_shot cot_maj8 curves
# gemma3_cot gemma3_base_zero_shot gemma3_answer_only.
# Every stage can be stopped and rerun: trainings resume from their last checkpoint (exactly),
# and an evaluation whose summary is already in results/gsm8k/ is skipped. Each evaluation runs on
# the 500-problem validation slice held out of data/gsm8k/train.jsonl and writes
# results/gsm8k/NAME_summary.json (and NAME_predictions.jsonl, for `cotjax report paired`);
# its wall time goes to results/gsm8k/wall_times.tsv.
# Environment: OUT_DIR [results/gsm8k], COTJAX [.venv/bin/cotjax].
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-runs/gsm8k}
[ $# -gt 0 ] && shift
all="cot answer_only base_zero_shot base_few_shot cot_maj8 curves gemma3_cot gemma3_base_zero_shot gemma3_answer_only"
stages=${*:-$all}
for stage in $stages; do  # reject a typo before hours of training, not after
  [[ " $all " == *" $stage "* ]] || { echo "unknown stage '$stage'; stages: $all" >&2; exit 2; }
done
cotjax=${COTJAX:-.venv/bin/cotjax}
out=${OUT_DIR:-results/gsm8k}
mkdir -p "$runs" "$out"
timed() {  # NAME COMMAND...: runs it and records its wall time
  local name=$1 start=$SECONDS; shift
  "$@"
  printf '%s\t%d\n' "$name" $((SECONDS - start)) >>"$out/wall_times.tsv"
}
evaluate() {  # NAME CONFIG [cotjax eval options]
  local name=$1 config=$2; shift 2
  if [ -f "$out/${name}_summary.json" ]; then echo "$name: already evaluated"; return; fi
  timed "eval_$name" $cotjax eval --config="$config" --task=gsm8k --data=validation \
    --out="$runs/eval_$name" "$@"
  cp "$runs/eval_$name/predictions.jsonl" "$out/${name}_predictions.jsonl"
  cp "$runs/eval_$name/summary.json" "$out/${name}_summary.json"
}
config_of() {  # STAGE -> configs/gsm8k.py with the stage's model and mode
  case $1 in
    gemma3_*) echo "configs/gsm8k.py:model=gemma3-270m,mode=${1#gemma3_}" ;;
    *) echo "configs/gsm8k.py:mode=$1" ;;
  esac
}
train() {  # STAGE: trains its config and keeps its metrics
  mkdir -p "$runs/$1"
  # The log's tee ignores Ctrl-C, so the training can still write while it saves on the signal.
  timed "train_$1" $cotjax train --config="$(config_of "$1")" --workdir="$runs/$1" \
    2>&1 | (trap '' INT TERM; exec tee "$runs/$1/train.log")
  # A preempted training saves, prints stopped_by_signal and exits 0: evaluate nothing after it.
  if grep -q '"stopped_by_signal": true' "$runs/$1/train.log"; then
    echo "$1: stopped by a signal before the end; rerun to resume it" >&2; exit 1
  fi
  cp "$runs/$1/metrics.jsonl" "$out/$1_metrics.jsonl"
}
for stage in $stages; do
  case $stage in
    cot | answer_only | gemma3_cot | gemma3_answer_only)
      train "$stage"
      evaluate "$stage" "$(config_of "$stage")" --workdir="$runs/$stage" ;;
    base_zero_shot)
      evaluate base_zero_shot configs/gsm8k.py \
        --config.eval.prompting=zero_shot_cot ;;
    base_few_shot)
      evaluate base_8shot configs/gsm8k.py \
        --config.eval.prompting=few_shot_cot --config.eval.fewshot=8 ;;
    cot_maj8)
      evaluate cot_maj8 configs/gsm8k.py --workdir="$runs/cot" \
        --config.eval.num_samples=8 ;;
    curves)
      $cotjax viz compare "$out/training_curves.png" \
        "cot=$out/cot_metrics.jsonl" "answer_only=$out/answer_only_metrics.jsonl" ;;
    gemma3_base_zero_shot)
      evaluate gemma3_base_zero_shot configs/gsm8k.py:model=gemma3-270m \
        --config.eval.prompting=zero_shot_cot ;;
  esac
done
