# shellcheck shell=bash
# Helpers shared by the launch scripts (sourced, never executed).
#
# Every script builds its commands as argument arrays and hands them to `run`, so `--dry-run` prints
# exactly what would be executed, quoted so that the printed line can be pasted back into a shell.
# No bash-4 features (associative arrays, ${x@Q}, wait -n): macOS's /bin/bash 3.2 may run local.sh.

DRY_RUN=${DRY_RUN:-0}
LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck disable=SC2034  # used by the scripts that source this file
REPO_ROOT=$(cd "$LAUNCH_DIR/.." && pwd)

# One shell word for $1: bare when it has only characters no shell treats specially, single-quoted
# otherwise (easier to read than printf %q's backslashes in long remote --command strings, and just
# as exact: inside single quotes only the quote itself needs escaping).
shell_quote() {
  local s=$1
  if [[ -n "$s" && "$s" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$s"
  elif [[ "$s" =~ ^(--?[A-Za-z0-9_-]+=)(.+)$ ]]; then
    # --flag='value' rather than '--flag=value': the same word, easier to read.
    printf '%s' "${BASH_REMATCH[1]}"
    shell_quote "${BASH_REMATCH[2]}"
  else
    printf "'%s'" "${s//\'/\'\\\'\'}"
  fi
}

# The arguments as one command line.
quote_args() {
  local out="" a
  for a in "$@"; do
    out+="${out:+ }$(shell_quote "$a")"
  done
  printf '%s' "$out"
}

# Execute the command, or print it under --dry-run.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '%s\n' "$(quote_args "$@")"
  else
    "$@"
  fi
}

# Progress messages go to stderr so that --dry-run's stdout holds only commands.
info() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { printf '%s: error: %s\n' "$(basename "$0")" "$*" >&2; exit 2; }

# die unless the named variable is non-empty; $2 names the flag / env var that sets it.
require() {
  local name=$1 how=$2
  [[ -n "${!name:-}" ]] || die "$name is not set; pass $how"
}

# --help: the calling script's header comment (line 2 up to `set -euo pipefail`).
usage() { sed -n '2,/^set -euo/{/^set -euo/d;/^# shellcheck/d;/^#SBATCH/d;s/^# \{0,1\}//;p;}' "$0"; }

# "0,1,...,N-1" (BSD seq -s adds a trailing comma, so no seq).
index_list() {
  local i out=""
  for ((i = 0; i < $1; i++)); do out+="${out:+,}$i"; done
  printf '%s' "$out"
}

# Value of a --name=value flag ($1 is the whole argument).
flag_value() { printf '%s' "${1#*=}"; }
