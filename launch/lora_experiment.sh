#!/usr/bin/env bash
# LoRA and QLoRA against full fine-tuning (issue 25, docs/lora.md): the synthetic-arithmetic
# experiment (configs/synthetic.py:recipe=experiment, scored on experiment 1's 240 held-out
# problems of 1-8 operations) trained three ways, and the quickstart with LoRA.
#
#   launch/lora_experiment.sh RUNS OUT
#
# Stages (each skipped when RUNS/NAME/.done exists, so rerunning continues a stopped run):
#   RUNS/synthetic_{full,lora,qlora}       cotjax train (full: the experiment's own recipe)
#   RUNS/eval_synthetic_{full,lora,qlora}  cotjax eval on the held-out problems (greedy)
#   RUNS/quickstart_lora                   cotjax train --config=configs/quickstart.py (+ eval)
# OUT gets each eval's summary and predictions, each stage's seconds (stages.json), the size of
# each final checkpoint's parameters (checkpoint_bytes.json) and the paired tests
# (paired_*.txt).
#
# Environment: LORA_FLAGS [rank 16, alpha 32, every projection, lr 1e-3] are the adapter
# settings of both lora runs (qlora adds lora.quant=nf4); EXTRA [""] goes to every training.
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: launch/lora_experiment.sh RUNS OUT"
runs=${1:?$usage}
out=${2:?$usage}
cotjax=${COTJAX:-.venv/bin/cotjax}
config=configs/synthetic.py:recipe=experiment
lora_flags=${LORA_FLAGS:---config.lora.rank=16 --config.lora.alpha=32 --config.train.lr=1e-3}
mkdir -p "$runs" "$out"
source launch/common.sh
keep() {  # EVAL_DIR NAME: the summary and predictions into OUT
  cp "$1/summary.json" "$out/$2_summary.json"
  cp "$1/predictions.jsonl" "$out/$2_predictions.jsonl"
}

heldout=$runs/heldout_1to8.jsonl
$cotjax synthetic "$heldout" 240 1 8 1234
declare -A flags=([full]="" [lora]="$lora_flags" [qlora]="$lora_flags --config.lora.quant=nf4")
for v in full lora qlora; do
  # shellcheck disable=SC2086  # flags are words
  stage "synthetic_$v" "$runs/synthetic_$v" $cotjax train --config=$config \
    --workdir="$runs/synthetic_$v" ${flags[$v]} ${EXTRA:-}
  stage "eval_synthetic_$v" "$runs/eval_synthetic_$v" $cotjax eval --config=$config \
    --workdir="$runs/synthetic_$v" --task=gsm8k --data="$heldout" --out="$runs/eval_synthetic_$v"
  keep "$runs/eval_synthetic_$v" "synthetic_$v"
done
# shellcheck disable=SC2086
stage quickstart_lora "$runs/quickstart_lora" $cotjax train --config=configs/quickstart.py \
  --workdir="$runs/quickstart_lora" $lora_flags ${EXTRA:-}
keep "$runs/quickstart_lora/eval" quickstart_lora

for v in lora qlora; do
  $cotjax report paired "$out/synthetic_full_predictions.jsonl" \
    "$out/synthetic_${v}_predictions.jsonl" > "$out/paired_full_vs_$v.txt"
done
.venv/bin/python - "$runs" "$out" <<'EOF'
import json, pathlib, sys
runs, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
stages = {d.parent.name: int(d.read_text()) for d in sorted(runs.glob("*/.done"))}
(out / "stages.json").write_text(json.dumps(stages, indent=2) + "\n")
sizes = {}
for run in ("synthetic_full", "synthetic_lora", "synthetic_qlora", "quickstart_lora"):
    steps = sorted((runs / run / "checkpoints").glob("[0-9]*"), key=lambda p: int(p.name))
    params = steps[-1] / "params"
    sizes[run] = sum(f.stat().st_size for f in params.rglob("*") if f.is_file())
(out / "checkpoint_bytes.json").write_text(json.dumps(sizes, indent=2) + "\n")
print(json.dumps({"stages": stages, "checkpoint_bytes": sizes}))
EOF
log "done: $out"
