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
