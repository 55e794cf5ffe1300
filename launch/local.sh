#!/usr/bin/env bash
# CPU fallback launcher: one or several local processes running `cotjax train`.
#
#   launch/local.sh --config=configs/quickstart.py --workdir=runs/q [--fake-devices=8]
#                   [--processes=2] [--dry-run] [-- --config.train.steps=10 ...]
#
# --fake-devices=N  split the CPU into N XLA devices per process, to try a mesh on a laptop
# --processes=N     start N processes on this machine joined through jax.distributed
#                   (coordinator on 127.0.0.1), the same entry point a pod worker runs
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/common.sh

config="" workdir="" fake=0 procs=1 port=${COTJAX_PORT:-12355} extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --config=*) config=${1#*=} ;;
    --workdir=*) workdir=${1#*=} ;;
    --fake-devices=*) fake=${1#*=} ;;
    --processes=*) procs=${1#*=} ;;
    --port=*) port=${1#*=} ;;
    --dry-run) DRY_RUN=1 ;;
    --help|-h) sed -n '2,12p' "$0"; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown option $1" ;;
  esac
  shift
done
need config "$config"; need workdir "$workdir"

export JAX_PLATFORMS=cpu
if [ "$fake" -gt 0 ]; then
  export XLA_FLAGS="--xla_force_host_platform_device_count=$fake ${XLA_FLAGS:-}"
fi
cotjax=.venv/bin/cotjax
cmd=("$cotjax" train "--config=$config" "--workdir=$workdir" "${extra[@]}")
if [ "$procs" -le 1 ]; then
  run "${cmd[@]}"
  exit 0
fi
pids=()
for ((i = 0; i < procs; i++)); do
  proc=(env COTJAX_COORDINATOR="127.0.0.1:$port" COTJAX_NUM_PROCESSES="$procs"
        COTJAX_PROCESS_ID="$i" "${cmd[@]}")
  # Print in the foreground, in process order, so a dry run's output is complete and ordered
  # when this script exits; only the real processes go to the background.
  DRY_RUN=1 run "${proc[@]}"
  if [ "$DRY_RUN" != 1 ]; then "${proc[@]}" & pids+=($!); fi
done
status=0
for pid in "${pids[@]+"${pids[@]}"}"; do wait "$pid" || status=$?; done
exit "$status"
