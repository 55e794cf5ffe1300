#!/usr/bin/env bash
# Rejection-sampling fine-tuning / STaR rounds (issue 22): round r samples K chains per training
# problem from round r-1's model (round 1: TEACHER, a trained run), keeps the verified, distinct
# ones (cotjax distill, with the human chains when HUMAN=1), retrains FROM THE BASE MODEL on
# them (STaR's recipe: no drift from training on one's own outputs round after round), and
# evaluates on the 500-problem validation slice (greedy and maj@8). Each round appends its
# figures to OUT/rounds.jsonl and re-tabulates OUT/rounds.md with paired tests against TEACHER.
#
#   launch/rft_rounds.sh TEACHER_WORKDIR [RUNS_DIR]
#
# Environment (defaults in brackets):
#   CONFIG [configs/gsm8k.py]   the student's config family (its data.path is the problem pool;
#                               model=... for another family: sampling and selection are text)
#   TEACHER_CONFIG [CONFIG]     round 1's sampling config, its hinted pass included: the
#                               teacher's family (its model and template) when the student is of
#                               another one; its data must be CONFIG's (problems are matched by id)
#   ROUNDS [1]  K [4]  PROBLEMS [-1: every training problem; N: the first N, for a CPU subset]
#   LR [2e-4]  EPOCHS [2]        the student's schedule (the chosen SmolLM2 CoT recipe)
#   MAX_PER_PROBLEM [4]  HUMAN [1]  HINT [0]: 1 adds STaR rationalisation (problems without a
#                               kept chain are sampled again with the gold answer as a hint)
#   CONTROL [0]: 1 also trains and evaluates each round's count-matched control (distill
#                               --control: every kept chain replaced by its problem's human chain,
#                               the same records without the teacher's text; needs HUMAN=1 and
#                               HUMAN_PROBLEMS covering PROBLEMS)
#   HUMAN_PROBLEMS [-1: all]    the human chains joined: the first N training problems (a CPU
#                               subset: the teacher's own training problems)
#   EVAL_SAMPLES [8]            samples per validation problem for maj@k (1: greedy only)
#   SAMPLE_EXTRA [""]           --config.* flags for sampling only, e.g.
#                               --config.eval.calculator=true (chains sampled with the calculator)
#   TEACHER_EVAL [results/gsm8k/sweep/cot_lr2e-4_ep2_predictions.jsonl]  the teacher's greedy
#                               validation predictions, for the paired test
#   OUT [results/distill]  BATCH [64] rows sampled together  EXTRA [""] more --config.* flags
# Every stage skips what is already done and resumes what was stopped (sample shards, training
# checkpoints), so rerunning the same command continues a killed run.
set -euo pipefail
cd "$(dirname "$0")/.."
teacher=${1:?usage: launch/rft_rounds.sh TEACHER_WORKDIR [RUNS_DIR]}
runs=${2:-runs/rft}
config=${CONFIG:-configs/gsm8k.py}
out=${OUT:-results/distill}
cotjax=${COTJAX:-.venv/bin/cotjax}
k=${K:-4}
mkdir -p "$runs" "$out"
control=()
if [ "${CONTROL:-0}" = 1 ]; then  # refused before hours of sampling, not after
  [ "${HUMAN:-1}" = 1 ] || { echo "CONTROL=1 needs HUMAN=1: the human chains stand in for the kept ones" >&2; exit 2; }
  hp=${HUMAN_PROBLEMS:--1} np=${PROBLEMS:--1}
  if [ "$hp" != -1 ] && { [ "$np" = -1 ] || [ "$np" -gt "$hp" ]; }; then
    echo "CONTROL=1 needs a human chain for every sampled problem: HUMAN_PROBLEMS=$hp, PROBLEMS=$np" >&2
    exit 2
  fi
  control=(--control)
fi
# The config's argument list gains train=: after a ':' (none yet) or a ',' (CONFIG has one)
case $config in *:*) sep=, ;; *) sep=: ;; esac

train() {  # WORKDIR DATA: retrain from the base model on DATA; a stopped run exits for a rerun
  $cotjax train --config="$config${sep}train=$2" --workdir="$1" \
    --config.train.lr="${LR:-2e-4}" --config.data.num_epochs="${EPOCHS:-2}" \
    --config.train.checkpoint_every=20 --config.train.keep=2 --config.train.keep_best=0 \
    --config.train.progress=False ${EXTRA:-} >"$1.train.log" 2>&1
  if grep -q '"stopped_by_signal": true' "$1.train.log"; then
    echo "round $round: training of $1 stopped by a signal; rerun to resume it" >&2; exit 1
  fi
}

evaluate() {  # WORKDIR OUT: greedy and maj@k on the validation slice; a finished one is kept
  if [ ! -f "$2/summary.json" ]; then
    $cotjax eval --config="$config" --workdir="$1" --data=validation --out="$2" \
      --config.eval.num_samples="${EVAL_SAMPLES:-8}" --config.eval.batch_size="${BATCH:-64}" \
      ${EXTRA:-} >"$2.log" 2>&1
  fi
}
sample_flags=(--data=train "--k=$k" "--config.eval.batch_size=${BATCH:-64}"
              "--config.eval.max_examples=${PROBLEMS:--1}" "--config.eval.temperature=0.7")
model=$teacher
sample_config=${TEACHER_CONFIG:-$config}
for round in $(seq 1 "${ROUNDS:-1}"); do
  dir=$runs/round$round
  mkdir -p "$dir"
  start=$SECONDS
  $cotjax sample --config="$sample_config" --workdir="$model" "${sample_flags[@]}" \
    --out="$dir/samples" ${EXTRA:-} ${SAMPLE_EXTRA:-} 2>&1 | tail -n 3
  t_sample=$((SECONDS - start))
  dirs=("$dir/samples")
  human=()
  if [ "${HUMAN:-1}" = 1 ]; then
    human=(--human=train "--config=$config" "--config.data.max_examples=${HUMAN_PROBLEMS:--1}")
  fi
  $cotjax distill "${dirs[@]}" --out="$dir/kept.jsonl" \
    --max_per_problem="${MAX_PER_PROBLEM:-4}" "${human[@]}" "${control[@]}"
  if [ "${HINT:-0}" = 1 ] && [ -s "$dir/kept.jsonl.unsolved.jsonl" ]; then
    $cotjax sample --config="$sample_config" --workdir="$model" "${sample_flags[@]}" --hint \
      --data="$dir/kept.jsonl.unsolved.jsonl" --out="$dir/samples_hint" ${EXTRA:-} ${SAMPLE_EXTRA:-} \
      2>&1 | tail -n 3
    dirs+=("$dir/samples_hint")
    $cotjax distill "${dirs[@]}" --out="$dir/kept.jsonl" \
      --max_per_problem="${MAX_PER_PROBLEM:-4}" "${human[@]}" "${control[@]}"
  fi
  t_select=$((SECONDS - start - t_sample))
  student=$dir/student
  train "$student" "$dir/kept.jsonl"
  t_train=$((SECONDS - start - t_sample - t_select))
  evaluate "$student" "$dir/eval"
  t_eval=$((SECONDS - start - t_sample - t_select - t_train))
  if [ ${#control[@]} -gt 0 ]; then
    train "$dir/control" "$dir/kept.jsonl.control.jsonl"
    evaluate "$dir/control" "$dir/control_eval"
    cp "$dir/control_eval/predictions.jsonl" "$out/round${round}_control_predictions.jsonl"
    cp "$dir/control_eval/summary.json" "$out/round${round}_control_summary.json"
  fi
  t_control=$((SECONDS - start - t_sample - t_select - t_train - t_eval))
  cp "$dir/eval/predictions.jsonl" "$out/round${round}_predictions.jsonl"
  cp "$dir/eval/summary.json" "$out/round${round}_summary.json"
  cp "$dir/kept.jsonl.funnel.json" "$out/round${round}_funnel.json"
  python3 - "$out" "$round" "$model" "${#control[@]}" "$t_sample" "$t_select" "$t_train" "$t_eval" \
    "$t_control" <<'EOF'
import json, sys
out, rnd, teacher, control, *times = sys.argv[1:]
s = json.load(open(f"{out}/round{rnd}_summary.json"))
f = json.load(open(f"{out}/round{rnd}_funnel.json"))
row = {"round": int(rnd), "teacher": teacher, "funnel": f["funnel"],
       "problems_with_kept_chain": f["problems_with_kept_chain"], "problems": f["problems"],
       "accuracy": s["accuracy"], "maj_accuracy": s.get("maj_accuracy"),
       "steps_valid": s["steps_valid"], "chains_all_steps_valid": s["chains_all_steps_valid"],
       "seconds": dict(zip(["sample", "select", "train", "eval", "control"], map(int, times)))}
if control != "0":  # the count-matched control, trained and evaluated in "control" seconds
    row["control_accuracy"] = json.load(open(f"{out}/round{rnd}_control_summary.json"))["accuracy"]
with open(f"{out}/rounds.jsonl", "a") as fh:
    fh.write(json.dumps(row) + "\n")
EOF
  echo "round $round: $(python3 -c "import json;print(json.load(open('$out/round${round}_summary.json'))['accuracy'])") greedy accuracy"
  model=$student
  sample_config=$config  # later rounds sample from a student
done
teacher_eval=${TEACHER_EVAL:-results/gsm8k/sweep/cot_lr2e-4_ep2_predictions.jsonl}
{  # controls only from a CONTROL=1 run: OUT may hold an earlier run's
  for f in "$out"/round*_predictions.jsonl; do
    case $f in *_control_predictions.jsonl) [ ${#control[@]} -gt 0 ] || continue ;; esac
    echo "$(basename "$f") vs teacher: $($cotjax report paired "$teacher_eval" "$f" | tail -n 1)"
  done
  for f in "$out"/round*_control_predictions.jsonl; do
    [ ${#control[@]} -gt 0 ] && [ -f "$f" ] || continue
    s=${f/_control_predictions/_predictions}
    echo "$(basename "$s") vs its control: $($cotjax report paired "$f" "$s" | tail -n 1)"
  done
} | tee "$out/rounds.md"
# The last round against the teacher, in the fields issue 22 names.
$cotjax report paired "$teacher_eval" "$out/round${ROUNDS:-1}_predictions.jsonl" | tail -n 1 \
  | python3 -c '
import json, sys
p = json.loads(sys.stdin.read())
f = json.load(open(sys.argv[1]))
print(json.dumps({"teacher": sys.argv[2], "teacher_predictions": p["a"],
                  "student_predictions": p["b"], "n": p["n"],
                  "teacher_accuracy": p["correct_a"] / p["n"],
                  "student_accuracy": p["correct_b"] / p["n"], "mcnemar_p": p["mcnemar_p"],
                  "only_teacher": p["only_a"], "only_student": p["only_b"],
                  "kept_chains": f["funnel"]["kept"], "records_trained": f["records_written"]},
                 indent=1))' "$out/round${ROUNDS:-1}_funnel.json" "$teacher" > "$out/comparison.json"
if [ ${#control[@]} -gt 0 ]; then  # the student against its count-matched control
  $cotjax report paired "$out/round${ROUNDS:-1}_control_predictions.jsonl" "$out/round${ROUNDS:-1}_predictions.jsonl" | tail -n 1 \
    | python3 -c '
import json, sys
p, c = json.loads(sys.stdin.read()), json.load(open(sys.argv[1]))
c.update(control_predictions=p["a"], control_accuracy=p["correct_a"] / p["n"],
         control_mcnemar_p=p["mcnemar_p"], only_control=p["only_a"],
         only_student_vs_control=p["only_b"])
open(sys.argv[1], "w").write(json.dumps(c, indent=1) + "\n")' "$out/comparison.json"
fi
cat "$out/comparison.json"
