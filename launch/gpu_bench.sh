#!/usr/bin/env bash
# Issue 25's GPU checks in one call of a lent machine: cuDNN attention's parity test, then
# benchmarks/train_throughput.py on the Llama-3.2-1B shape (random weights, bf16) against
# transformers + PyTorch with torch.compile, each stage's output kept under $OUT as it ends.
#
# Here, once (no GPU needed): the wheels the device image lacks into .whl/ (grain, array-record,
#   portpicker, ml-collections, gguf, tensorboardX, importlib_resources; not flax: the image's
#   flax 0.12.10 fits its jax 0.11.2, where flax 0.12.8 fails at import) and the SmolLM2 tokenizer
#   as a small HF directory (.gpu/smollm2: the 98 MB GGUF need not travel; --arch only tokenizes):
#     launch/gpu_bench.sh pack
# There:  run(carry=[.whl, .gpu], command='bash launch/gpu_bench.sh run', timeout_s=570)
# DEADLINE [540] seconds after the start: a stage is not begun with less than its estimate left.
# STAGES: the stages to run (names below; all when unset). Measured on 2026-12-04 (docs/train.md):
# the first four; the rest are the next session's leads toward 1.3x torch.compile.
set -uo pipefail
cd "$(dirname "$0")/.."
source launch/common.sh  # device_wheels (its run and stage are redefined below)
verb=${1:?usage: launch/gpu_bench.sh pack | run}

pack() {
  device_wheels
  mkdir -p .gpu/smollm2
  .venv/bin/python - <<'EOF'
import json
from cotjax import weights
weights.load_tokenizer("smollm2-135m-instruct").save_pretrained(".gpu/smollm2")
json.dump(weights.read_config("smollm2-135m-instruct"), open(".gpu/smollm2/config.json", "w"))
EOF
  du -sh .whl .gpu
}

run() {
  local out=${OUT:-/tmp/gpu_bench_out} deadline=${DEADLINE:-540}
  mkdir -p "$out"
  export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
  # JAX takes half the card, so PyTorch's model (built after cotjax's is freed, in the same
  # process) finds the other half: JAX's pool is not returned to the driver.
  export XLA_PYTHON_CLIENT_MEM_FRACTION=0.45
  rm -rf /tmp/site  # a warm machine keeps an earlier call's packages
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
  { nvidia-smi -L; python3 -c "import jax, flax, torch, transformers, orbax.checkpoint, cotjax.train
print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'torch', torch.__version__,
      'transformers', transformers.__version__)"; } 2>&1 | tee "$out/machine.txt"
  local bench=(python3 benchmarks/train_throughput.py --model .gpu/smollm2 --arch llama3.2-1b)
  stage cudnn_test 120 python3 -m pytest -q -p no:cacheprovider tests/test_model.py \
    -k "cudnn or fused_attention"
  stage llama1b_fused_s1024_b8 240 "${bench[@]}" --seq_len 1024 --batch 8 --steps 10 \
    --rounds 3 --attention fused --torch_compile
  stage llama1b_reference_s1024_b8 80 "${bench[@]}" --seq_len 1024 --batch 8 --steps 10 \
    --rounds 2 --skip_torch
  stage llama1b_fused_s2048_b8 150 "${bench[@]}" --seq_len 2048 --batch 8 --steps 10 \
    --rounds 2 --attention fused --torch_compile
  stage llama1b_fused_tlo_s1024_b8 60 "${bench[@]}" --seq_len 1024 --batch 8 --steps 10 \
    --rounds 2 --attention fused --target_logits_only --skip_torch
  stage llama1b_fused_s1024_b16 60 "${bench[@]}" --seq_len 1024 --batch 16 --steps 10 \
    --rounds 2 --attention fused --skip_torch
  stage smollm2_fused_s1024_b16 90 python3 benchmarks/train_throughput.py --model .gpu/smollm2 \
    --random_init --seq_len 1024 --batch 16 --steps 10 --rounds 2 --attention fused --torch_compile
}

# stage NAME NEED CMD...: run CMD into $out/NAME.log if NEED seconds are left, cut at the deadline
stage() {
  local name=$1 need=$2 left
  shift 2
  if [ -n "${STAGES:-}" ] && [[ " $STAGES " != *" $name "* ]]; then return; fi
  left=$((deadline - SECONDS))
  if [ "$left" -lt "$need" ]; then echo "$name: not started, ${left} s left"; return; fi
  local t0=$SECONDS
  timeout "$left" "$@" > "$out/$name.log" 2>&1
  echo "$name: rc $? in $((SECONDS - t0)) s; last line: $(tail -c 600 "$out/$name.log")"
}

case $verb in
  pack) pack ;;
  run) run ;;
  *) echo "usage: launch/gpu_bench.sh pack | run" >&2; exit 2 ;;
esac
