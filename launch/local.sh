#!/usr/bin/env bash
# Local multi-process mode: N trainer processes on this machine, each with K fake CPU devices, joined
# by the JAX distributed runtime exactly as the hosts of a pod are. It exercises the multi-host code
# paths (per-process data, global arrays, process-0-only writes, collective Orbax saves) without a
# cluster.
#
#   launch/local.sh --num_processes=2 --devices_per_process=2 [--port=PORT] [--dry-run] \
#       -- --config=configs/smoke.py --workdir=DIR [more digan_jax.main flags]
#
# Flags (each also settable by the environment variable in brackets):
#   --num_processes=N        processes to start                        [NUM_PROCESSES, default 2]
#   --devices_per_process=K  CPU devices per process                   [DEVICES_PER_PROCESS, default 2]
#   --port=PORT              coordinator port on 127.0.0.1             [PORT, default: a free one]
#   --log_dir=DIR            per-process logs process_<i>.log          [LOG_DIR, default WORKDIR/logs]
#   --timeout=SECONDS        stop everything after this long, exit 124 [TIMEOUT, default 0 = none]
#   --dry-run                print the commands instead of running them
# The interpreter is ${PYTHON:-python} (e.g. PYTHON=.venv/bin/python).
#
# Waits for all processes. When one fails the others are stopped (they would otherwise block forever
# in a collective waiting for it) and the script exits with the failed process's status.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NUM_PROCESSES=${NUM_PROCESSES:-2}
DEVICES_PER_PROCESS=${DEVICES_PER_PROCESS:-2}
PORT=${PORT:-}
LOG_DIR=${LOG_DIR:-}
TIMEOUT=${TIMEOUT:-0}
PYTHON=${PYTHON:-python}
GRACE_SECONDS=${GRACE_SECONDS:-10}  # after SIGTERM, before SIGKILL

while [[ $# -gt 0 ]]; do
  case "$1" in
    --num_processes=*) NUM_PROCESSES=$(flag_value "$1") ;;
    --devices_per_process=*) DEVICES_PER_PROCESS=$(flag_value "$1") ;;
    --port=*) PORT=$(flag_value "$1") ;;
    --log_dir=*) LOG_DIR=$(flag_value "$1") ;;
    --timeout=*) TIMEOUT=$(flag_value "$1") ;;
    --dry-run|--dry_run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown flag $1 (digan_jax.main flags go after --; see --help)" ;;
  esac
  shift
done
MAIN_ARGS=("$@")

for v in NUM_PROCESSES DEVICES_PER_PROCESS TIMEOUT; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, got '${!v}'"
done
(( NUM_PROCESSES >= 1 && DEVICES_PER_PROCESS >= 1 )) || die "need at least 1 process and 1 device"

# The workdir (for the default log folder) from the trainer's own flags: --workdir=X or --workdir X.
WORKDIR=""
for ((i = 0; i < ${#MAIN_ARGS[@]}; i++)); do
  case "${MAIN_ARGS[i]}" in
    --workdir=*) WORKDIR=$(flag_value "${MAIN_ARGS[i]}") ;;
    --workdir) WORKDIR=${MAIN_ARGS[i + 1]:-} ;;
  esac
done
[[ -n "$WORKDIR" ]] || die "pass the trainer's --workdir after -- (e.g. -- --config=configs/smoke.py --workdir=/tmp/run)"
if [[ -z "$LOG_DIR" ]]; then
  [[ "$WORKDIR" != *://* ]] || die "--workdir=$WORKDIR is remote; pass --log_dir=LOCAL_DIR for the process logs"
  LOG_DIR="$WORKDIR/logs"
fi

if [[ -z "$PORT" ]]; then
  # Ask the OS for a free port so that concurrent local runs (parallel tests) do not collide.
  PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') \
    || die "could not run $PYTHON to pick a free port; set PYTHON or pass --port"
fi

# CPU only, whatever accelerators the machine has: local mode is the stand-in for a cluster.
export JAX_PLATFORMS=cpu
# shellcheck source=env.sh
source "$LAUNCH_DIR/env.sh"
# Our device count replaces any inherited one (XLA would use the last occurrence, but be explicit).
xla_flags=$(printf '%s' "${XLA_FLAGS:-}" | sed -E 's/--xla_force_host_platform_device_count=[^ ]*//g; s/  +/ /g; s/^ //; s/ $//')
xla_flags="${xla_flags:+$xla_flags }--xla_force_host_platform_device_count=$DEVICES_PER_PROCESS"
# `python -m digan_jax.main` and `from configs import ...` must resolve from any working directory;
# relative --config / --workdir paths stay relative to the caller's directory.
pythonpath="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"

run mkdir -p "$LOG_DIR"

pids=()
for ((i = 0; i < NUM_PROCESSES; i++)); do
  cmd=(env
    JAX_PLATFORMS=cpu
    "XLA_FLAGS=$xla_flags"
    "JAX_COORDINATOR_ADDRESS=127.0.0.1:$PORT"
    "JAX_NUM_PROCESSES=$NUM_PROCESSES"
    "JAX_PROCESS_ID=$i"
    "PYTHONPATH=$pythonpath"
    "$PYTHON" -m digan_jax.main "${MAIN_ARGS[@]}")
  log="$LOG_DIR/process_$i.log"
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '%s > %s 2>&1 &\n' "$(quote_args "${cmd[@]}")" "$(shell_quote "$log")"
  else
    "${cmd[@]}" >"$log" 2>&1 &
    pids+=("$!")
  fi
done
if [[ "$DRY_RUN" == 1 ]]; then
  echo "wait"
  exit 0
fi
info "started $NUM_PROCESSES processes x $DEVICES_PER_PROCESS CPU devices (coordinator 127.0.0.1:$PORT); logs in $LOG_DIR/"

# Stop every process still running: SIGTERM first (the trainer checkpoints and exits on it when it
# can), SIGKILL after GRACE_SECONDS for those stuck in a collective with a dead peer.
stop_all() {
  local pid t
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for ((t = 0; t < GRACE_SECONDS; t++)); do
    local alive=0
    for pid in "${pids[@]}"; do if kill -0 "$pid" 2>/dev/null; then alive=1; fi; done
    (( alive )) || return 0
    sleep 1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}
# shellcheck disable=SC2317,SC2329  # called by the trap
on_signal() { info "interrupted; stopping all processes"; stop_all; exit 130; }
trap on_signal INT TERM

show_log_tail() {
  info "process $1 exited with status $2; last lines of $LOG_DIR/process_$1.log:"
  tail -n 40 "$LOG_DIR/process_$1.log" >&2 || true
}

# Poll rather than `wait -n -p` (bash >= 5.1): works on any bash, and lets a failure anywhere stop
# the others at once instead of waiting on process 0.
status=0
stopping=0
done_count=0
finished=()
for ((i = 0; i < NUM_PROCESSES; i++)); do finished+=(0); done
start=$SECONDS
while (( done_count < NUM_PROCESSES )); do
  for ((i = 0; i < NUM_PROCESSES; i++)); do
    (( finished[i] == 0 )) || continue
    kill -0 "${pids[i]}" 2>/dev/null && continue
    if wait "${pids[i]}"; then rc=0; else rc=$?; fi
    finished[i]=1
    done_count=$((done_count + 1))
    (( rc != 0 )) || continue
    if (( stopping )); then
      info "process $i stopped (status $rc)"
    else
      show_log_tail "$i" "$rc"
      status=$rc
      stopping=1
      info "stopping the other processes"
      stop_all
    fi
  done
  if (( done_count < NUM_PROCESSES )); then
    if (( TIMEOUT > 0 && !stopping && SECONDS - start >= TIMEOUT )); then
      info "timeout after ${TIMEOUT}s; stopping all processes"
      status=124
      stopping=1
      stop_all
    fi
    sleep 1
  fi
done

if (( status == 0 )); then
  info "all $NUM_PROCESSES processes finished successfully"
fi
exit "$status"
