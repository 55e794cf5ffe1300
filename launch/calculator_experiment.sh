#!/usr/bin/env bash
# The calculator experiment (issue 26, docs/calculator.md): a trained run's greedy chains on the
# first N problems of the 500-problem validation slice without and with the calculator in the
# decoding loop (and, with MAJ=K, K sampled chains per problem on the first MAJ_PROBLEMS, for
# maj@K both ways), then the paired tests, the split of the remaining errors (cotjax report
# errors) and OUT/comparison.json.
#
#   launch/calculator_experiment.sh RUN OUT [N]
#
# Environment: MAJ [0: greedy only]  MAJ_PROBLEMS [100]  CONFIG [configs/gsm8k.py]
# EXTRA [""] more --config.* flags. An eval whose summary.json exists is not run again, so
# rerunning continues a stopped experiment; OUT/<name>/eval.log keeps each log.
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: launch/calculator_experiment.sh RUN OUT [N]"
run=${1:?$usage}
out=${2:?$usage}
n=${3:-500}
cotjax=${COTJAX:-.venv/bin/cotjax}
maj=${MAJ:-0}
[ -d "$run" ] || { echo "no run directory $run" >&2; exit 2; }

evaluate() {  # NAME PROBLEMS SAMPLES CALCULATOR
  local dir=$out/$1
  if [ -f "$dir/summary.json" ]; then echo "$1: done ($dir/summary.json)"; return; fi
  mkdir -p "$dir"
  local start=$SECONDS
  $cotjax eval --config="${CONFIG:-configs/gsm8k.py}" --workdir="$run" --data=validation \
    --out="$dir" "--config.eval.max_examples=$2" "--config.eval.num_samples=$3" \
    "--config.eval.calculator=$4" ${EXTRA:-} >"$dir/eval.log" 2>&1
  echo "$1: $((SECONDS - start)) s"
}
evaluate without "$n" 1 false
evaluate with "$n" 1 true
if [ "$maj" -gt 0 ]; then
  evaluate "maj${maj}_without" "${MAJ_PROBLEMS:-100}" "$maj" false
  evaluate "maj${maj}_with" "${MAJ_PROBLEMS:-100}" "$maj" true
fi

# Paired tests (greedy answers; the votes when MAJ ran) and the error split, then the figures.
{
  $cotjax report paired "$out/without/predictions.jsonl" "$out/with/predictions.jsonl" | tail -n 1
  if [ "$maj" -gt 0 ]; then
    $cotjax report paired "$out/maj${maj}_without/predictions.jsonl" \
      "$out/maj${maj}_with/predictions.jsonl" maj_correct | tail -n 1
  fi
} >"$out/paired.jsonl"
$cotjax report errors "$out/without/predictions.jsonl" "$out/with/predictions.jsonl" >"$out/errors.jsonl"
python3 - "$out" "$run" "$maj" <<'EOF'
import json, sys
out, run, maj = sys.argv[1], sys.argv[2], int(sys.argv[3])
paired = [json.loads(line) for line in open(f"{out}/paired.jsonl")]
errors = [json.loads(line) for line in open(f"{out}/errors.jsonl")]
s = {k: json.load(open(f"{out}/{k}/summary.json")) for k in ("without", "with")}
g = paired[0]
row = {"model": s["without"]["model"], "n": g["n"],
       "accuracy_without": g["correct_a"] / g["n"], "accuracy_with": g["correct_b"] / g["n"],
       "mcnemar_p": g["mcnemar_p"], "only_without": g["only_a"], "only_with": g["only_b"]}
for k in ("without", "with"):
    row[f"steps_valid_{k}"] = s[k]["steps_valid"] / s[k]["steps_total"] if s[k]["steps_total"] else None
    row[f"chains_all_steps_valid_{k}"] = s[k]["chains_all_steps_valid"]
    row[f"tokens_per_s_{k}"] = s[k]["greedy_tokens_per_s"]
    row[f"errors_{k}"] = {e: v for e, v in errors[k == "with"].items() if e != "predictions"}
row["calculator_calls"] = s["with"]["calculator_calls"]
row["calculator_changed"] = s["with"]["calculator_changed"]
if maj:
    m = paired[1]
    row[f"maj{maj}"] = {"n": m["n"], "accuracy_without": m["correct_a"] / m["n"],
                        "accuracy_with": m["correct_b"] / m["n"], "mcnemar_p": m["mcnemar_p"]}
json.dump(row, open(f"{out}/comparison.json", "w"), indent=1)
print(json.dumps(row, indent=1))
EOF
