#!/usr/bin/env bash
# Process supervision end to end (issue 23, docs/process_supervision.md): a CoT policy, its
# sampled chains on training problems, Monte Carlo step labels, a PRM and an ORM trained from
# the policy, N sampled chains per evaluation problem, and every selector on them.
#
#   launch/prm_experiment.sh RUNS OUT
#
# Stages (each resumes or is skipped when its output is complete, so rerunning the command
# continues a stopped experiment):
#   RUNS/policy        cotjax train --config=$POLICY_CONFIG (skipped when POLICY is given)
#   RUNS/policy_hf     cotjax export of the policy (the reward models start from it)
#   RUNS/label_samples cotjax sample: K_LABEL chains of LABEL_PROBLEMS problems of LABEL_DATA
#   RUNS/labels        cotjax label-steps: ROLLOUTS completions from every step prefix of the
#                      first LABEL_CHAINS chains
#   RUNS/prm, RUNS/orm cotjax train with train.objective=prm / orm (REWARD_FLAGS) on REWARD_DATA
#   RUNS/eval_samples  cotjax sample: N chains of EVAL_PROBLEMS problems of EVAL_DATA
#   OUT                cotjax rerank --prm --orm: selection.json, predictions.jsonl, plot
#
# Environment (defaults: the CPU-sized synthetic-arithmetic experiment):
#   POLICY_CONFIG [configs/synthetic.py:recipe=experiment]  POLICY [RUNS/policy]
#   LABEL_DATA [RUNS/label_problems.jsonl: 1-8 operations, seed 777]  LABEL_PROBLEMS [80]
#   K_LABEL [4]  ROLLOUTS [4]  LABEL_CHAINS [-1: all]  EVAL_DATA [RUNS/heldout_1to8.jsonl: seed 1234, as experiment 1]
#   EVAL_PROBLEMS [120]  N [16]  REWARD_FLAGS [2 epochs, lr 5e-5, batch 8]  EXTRA [""]
#   REWARD_TAG [""]: a suffix for the reward runs (RUNS/prm$TAG, RUNS/orm$TAG), so that other
#   REWARD_FLAGS train new reward models on the same labels and rerank the same samples
#   REWARD_OBJECTIVES ["prm orm"]: "prm" trains and reranks with the PRM alone
#   REWARD_DATA [RUNS/labels]: RUNS/label_samples trains on every sampled chain, for the labels
#   that need no rollouts (the ORM's outcome; a PRM with --config.train.reward_labels=checker)
# For GSM8K with the chosen CoT model: POLICY=runs/sweep/cot_lr2e-4_ep2
#   POLICY_CONFIG=configs/gsm8k.py LABEL_DATA=train EVAL_DATA=validation EVAL_PROBLEMS=500.
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: launch/prm_experiment.sh RUNS OUT"
runs=${1:?$usage}
out=${2:?$usage}
cotjax=${COTJAX:-.venv/bin/cotjax}
config=${POLICY_CONFIG:-configs/synthetic.py:recipe=experiment}
policy=${POLICY:-$runs/policy}
n=${N:-16}
mkdir -p "$runs" "$out"
source launch/common.sh

label_data=${LABEL_DATA:-$runs/label_problems.jsonl}
eval_data=${EVAL_DATA:-$runs/heldout_1to8.jsonl}
[ -n "${LABEL_DATA:-}" ] || $cotjax synthetic "$label_data" "${LABEL_PROBLEMS:-80}" 1 8 777
[ -n "${EVAL_DATA:-}" ] || $cotjax synthetic "$eval_data" 240 1 8 1234

[ -n "${POLICY:-}" ] || stage policy "$policy" $cotjax train --config="$config" \
  --workdir="$policy" --config.train.eval_at_end=False ${EXTRA:-}
stage export "$runs/policy_hf" $cotjax export --workdir="$policy" --out="$runs/policy_hf" \
  --overwrite
stage label_samples "$runs/label_samples" $cotjax sample --workdir="$policy" \
  --data="$label_data" --task=gsm8k --k="${K_LABEL:-4}" --out="$runs/label_samples" \
  --config.eval.max_examples="${LABEL_PROBLEMS:-80}" ${EXTRA:-}
stage labels "$runs/labels" $cotjax label-steps --workdir="$policy" \
  --samples="$runs/label_samples" --rollouts="${ROLLOUTS:-4}" --out="$runs/labels" \
  --max_chains="${LABEL_CHAINS:--1}" ${EXTRA:-}
reward_flags=${REWARD_FLAGS:---config.train.steps=-1 --config.data.num_epochs=2 \
--config.train.lr=5e-5 --config.train.warmup_steps=3 --config.data.batch_size=8 \
--config.train.checkpoint_every=0 --config.train.eval_every=0 --config.train.eval_batches=-1}
tag=${REWARD_TAG:-}
objectives=${REWARD_OBJECTIVES:-prm orm}
case "$objectives" in "prm orm"|prm) ;; *) die "REWARD_OBJECTIVES must be 'prm orm' or 'prm'";; esac
for objective in $objectives; do
  stage "$objective$tag" "$runs/$objective$tag" $cotjax train --config="$config" \
    --workdir="$runs/$objective$tag" --config.model="$runs/policy_hf" \
    --config.train.objective=$objective --config.data.labels="${REWARD_DATA:-$runs/labels}" \
    --config.train.eval_at_end=False $reward_flags ${EXTRA:-}
done
stage eval_samples "$runs/eval_samples" $cotjax sample --workdir="$policy" \
  --data="$eval_data" --task=gsm8k --k="$n" --out="$runs/eval_samples" \
  --config.eval.max_examples="${EVAL_PROBLEMS:-120}" ${EXTRA:-}
log "rerank: start"
start=$SECONDS
orm_flag=()
[ "$objectives" = prm ] || orm_flag=(--orm="$runs/orm$tag")
$cotjax rerank --samples="$runs/eval_samples" --prm="$runs/prm$tag" "${orm_flag[@]}" --out="$out" \
  2>&1 | tee "$out/rerank.log" | tail -1
log "rerank: $((SECONDS - start)) s"
cp "$runs/labels"/agreement-*.json "$runs/labels/manifest.json" "$out/" 2>/dev/null || true
