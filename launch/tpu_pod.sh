#!/usr/bin/env bash
# Run a config on every worker of a Cloud TPU VM pod.
#
#   launch/tpu_pod.sh --tpu=NAME --zone=ZONE --config=configs/gsm8k_hf_large.py \
#       --workdir=gs://BUCKET/runs/NAME [--project=P] [--create --type=v5litepod-16 \
#       --version=v2-alpha-tpuv5-lite] [--delete] [--dry-run] [-- --config.train.steps=...]
#
# Steps: (optional) create the TPU VM; copy the committed code to every worker; run the set-up
# there (JAX for TPU); start `cotjax train` with the same config and workdir on all workers
# (jax.distributed finds the pod by itself; a gs:// workdir is written through Orbax/etils);
# gather every worker's log into logs/NAME/; (optional) delete the TPU VM.
# --dry-run prints the exact commands without running any.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/common.sh

tpu="" zone="" project="" config="" workdir="" create=0 delete=0
type="v5litepod-16" version="v2-alpha-tpuv5-lite" extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --tpu=*) tpu=${1#*=} ;;
    --zone=*) zone=${1#*=} ;;
    --project=*) project=${1#*=} ;;
    --config=*) config=${1#*=} ;;
    --workdir=*) workdir=${1#*=} ;;
    --create) create=1 ;;
    --delete) delete=1 ;;
    --type=*) type=${1#*=} ;;
    --version=*) version=${1#*=} ;;
    --dry-run) DRY_RUN=1 ;;
    --help|-h) sed -n '2,14p' "$0"; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown option $1" ;;
  esac
  shift
done
need tpu "$tpu"; need zone "$zone"; need config "$config"; need workdir "$workdir"
[ -f "${config%%:*}" ] || die "config ${config%%:*} does not exist"  # PATH[:ARG]

g=(gcloud compute tpus tpu-vm)
where=("--zone=$zone")
[ -n "$project" ] && where+=("--project=$project")
ssh_all() { run "${g[@]}" ssh "$tpu" "${where[@]}" --worker=all --command="$1"; }

if [ "$create" = 1 ]; then
  run "${g[@]}" create "$tpu" "${where[@]}" "--accelerator-type=$type" "--version=$version"
fi

# The committed tree, not local edits: every worker runs the same code.
# A private temporary file (mktemp: mode 0600, unpredictable name), removed on exit.
bundle=$(mktemp "${TMPDIR:-/tmp}/cotjax-$tpu.XXXXXX.tar.gz")
trap 'rm -f "$bundle"' EXIT
run git archive --format=tar.gz -o "$bundle" HEAD
run "${g[@]}" scp "$bundle" "$tpu:cotjax.tar.gz" "${where[@]}" --worker=all
ssh_all "rm -rf ~/cotjax && mkdir -p ~/cotjax && tar xzf ~/cotjax.tar.gz -C ~/cotjax"
ssh_all "cd ~/cotjax && COTJAX_JAX=tpu bash setup.sh"

quoted=$(printf ' %q' "--config=$config" "--workdir=$workdir" "${extra[@]}")
ssh_all "cd ~/cotjax && .venv/bin/cotjax train$quoted 2>&1 | tee ~/cotjax-train.log"

mkdir -p "logs/$tpu"
run "${g[@]}" ssh "$tpu" "${where[@]}" --worker=all \
  --command='sed "s/^/[$(hostname)] /" ~/cotjax-train.log' > "logs/$tpu/workers.log"

if [ "$delete" = 1 ]; then
  run "${g[@]}" delete "$tpu" "${where[@]}" --quiet
fi
