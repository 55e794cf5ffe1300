# Shared by the launchers: argument helpers and dry-run execution (sourced, not run).

DRY_RUN=${DRY_RUN:-0}

# run CMD...: print the command (always, prefixed by '+ '), then run it unless this is a dry run.
run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  if [ "$DRY_RUN" != 1 ]; then "$@"; fi
}

die() { echo "error: $*" >&2; exit 2; }

# need NAME VALUE: fail with a clear message when a required option is empty.
need() { [ -n "$2" ] || die "missing --$1 (see --help)"; }

log() { echo "[$(date +%H:%M:%S)] $*"; }

# stage NAME DIR COMMAND...: run COMMAND (its output in DIR.log) unless DIR/.done exists, then
# write its seconds to DIR/.done, so that rerunning an experiment script continues where it
# stopped; a training stopped by a signal (preempted) is not done.
stage() {
  local name=$1 dir=$2; shift 2
  if [ -f "$dir/.done" ]; then log "$name: done ($dir)"; return; fi
  log "$name: start"
  local start=$SECONDS
  mkdir -p "$dir"
  "$@" > "$dir.log" 2>&1 || { log "$name: failed, see $dir.log"; tail -5 "$dir.log"; exit 1; }
  if grep -q '"stopped_by_signal": true' "$dir.log"; then
    log "$name: stopped by a signal; rerun to resume"; exit 1
  fi
  echo "$((SECONDS - start))" > "$dir/.done"
  log "$name: $((SECONDS - start)) s"
}

# device_wheels: the wheels a lent GPU machine's image lacks (launch/device_wheels.txt; Python
# 3.12, manylinux x86-64) into a fresh .whl/: one version of each, since two stop the install.
device_wheels() {
  rm -rf .whl
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    -r launch/device_wheels.txt
}
