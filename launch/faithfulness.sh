#!/usr/bin/env bash
# Faithfulness by intervention (issue 24, docs/faithfulness.md): `cotjax eval` with every
# intervention on the first N problems of the 500-problem GSM8K validation slice, for each
# model given, then the table (OUT/summary.json), the early-answering curves (OUT/summary.png)
# and the console table.
#
#   launch/faithfulness.sh OUT N LABEL=MODEL ...
#
# MODEL: a trained run's workdir (evaluated with its own config and eval prompting), or
# base:CONFIG (that config's base model prompted zero-shot CoT, e.g. base:configs/gsm8k.py or
# base:configs/gsm8k.py:model=gemma3-270m). Environment: BATCH [64] rows decoded together,
# EXTRA [""] more --config.* flags. An eval whose summary.json exists is not run again, so
# rerunning the command continues a stopped experiment; OUT/LABEL/eval.log keeps each log.
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: launch/faithfulness.sh OUT N LABEL=WORKDIR|LABEL=base:CONFIG ..."
out=${1:?$usage}
n=${2:?$usage}
shift 2
[ $# -gt 0 ] || { echo "$usage" >&2; exit 2; }
cotjax=${COTJAX:-.venv/bin/cotjax}
flags=("--config.eval.max_examples=$n" "--config.eval.batch_size=${BATCH:-64}"
       "--config.eval.faithfulness=all")
specs=()
for spec in "$@"; do
  label=${spec%%=*}
  model=${spec#*=}
  [ "$label" != "$spec" ] && [ -n "$label" ] || { echo "$usage (got '$spec')" >&2; exit 2; }
  specs+=("$label=$out/$label")
  if [ -f "$out/$label/summary.json" ]; then  # its run directory may be gone: not needed
    echo "$label: done ($out/$label/summary.json)"
    continue
  fi
  case $model in
    base:*) source=(--config="${model#base:}" --config.eval.prompting=zero_shot_cot) ;;
    *) [ -d "$model" ] || { echo "$label: no run directory $model" >&2; exit 2; }
       source=(--workdir="$model") ;;
  esac
  mkdir -p "$out/$label"
  start=$SECONDS
  $cotjax eval "${source[@]}" --data=validation --out="$out/$label" "${flags[@]}" ${EXTRA:-} \
    > "$out/$label/eval.log" 2>&1
  echo "$label: $((SECONDS - start)) s"
done
$cotjax report faithfulness "$out/summary" "${specs[@]}"
