#!/usr/bin/env bash
# Watch, stop and delete a TPU training run.
#
#   launch/tpu_status.sh --name=NAME --zone=ZONE [--queued] [--dry-run] SUBCOMMAND
#
# Subcommands:
#   status   the TPU's state (with --queued: the queued resource's, ACTIVE = ready) and, on each
#            worker, whether the trainer started by tpu_train.sh is still running
#   tail     the last --lines=N (default 50) lines of each worker's log; --follow keeps streaming
#   stop     SIGTERM to each worker's trainer: it saves a checkpoint at the next step boundary and
#            exits, so tpu_train.sh with the same --workdir resumes from there. --force: SIGKILL
#            (no checkpoint; for a trainer stuck after another host died)
#   delete   delete the TPU (with --queued: the queued resource and its TPU). Stop first: a
#            deleted TPU loses everything on its disks, only the (gs://) workdir remains
#
# Settings (flags or environment, see tpu_common.sh): TPU_NAME, TPU_ZONE, TPU_PROJECT,
# TPU_QUEUED_ID, TPU_REMOTE_DIR, TPU_WORKER, TPU_SSH_FLAGS.
# shellcheck disable=SC2016  # the remote scripts are single-quoted: $... expands on the workers
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=tpu_common.sh
source "$LAUNCH_DIR/tpu_common.sh"

QUEUED=0
LINES_N=50
FOLLOW=0
FORCE=0
SUBCOMMAND=""

while [[ $# -gt 0 ]]; do
  if tpu_common_flag "$1"; then shift; continue; fi
  case "$1" in
    --queued) QUEUED=1 ;;
    --lines=*) LINES_N=$(flag_value "$1") ;;
    --follow) FOLLOW=1 ;;
    --force) FORCE=1 ;;
    -h|--help) usage; exit 0 ;;
    status|tail|stop|delete) SUBCOMMAND=$1 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
[[ -n "$SUBCOMMAND" ]] || die "give a subcommand: status, tail, stop or delete (see --help)"
[[ "$LINES_N" =~ ^[0-9]+$ ]] || die "--lines must be a number, got '$LINES_N'"
tpu_finish_settings

dir=$(tpu_remote_dir)
# Shared prefix of the per-worker scripts: the pid file written by tpu_train.sh.
on_worker="cd $dir 2>/dev/null || { echo \"\$(hostname): no $dir\"; exit 0; }; pidf=logs/host_\$(hostname).pid; $TPU_ALIVE_FN"

case "$SUBCOMMAND" in
  status)
    if [[ "$QUEUED" == 1 ]]; then
      run "$GCLOUD" compute tpus queued-resources describe "$TPU_QUEUED_ID" "${TPU_SCOPE[@]}" \
        --format='value(name.basename(),state.state)'
    fi
    run "$GCLOUD" compute tpus tpu-vm describe "$TPU_NAME" "${TPU_SCOPE[@]}" \
      --format='table(name.basename(),acceleratorType,state,health,runtimeVersion)'
    tpu_ssh "$on_worker"'; if alive; then echo "$(hostname): running (pid $(cat "$pidf"))"; else echo "$(hostname): not running"; fi'
    ;;
  tail)
    follow=""
    if [[ "$FOLLOW" == 1 ]]; then follow=" -F"; fi
    tpu_ssh "$on_worker; echo \"=== \$(hostname)\"; tail -n $LINES_N$follow logs/host_\$(hostname).log"
    ;;
  stop)
    sig=TERM
    if [[ "$FORCE" == 1 ]]; then sig=KILL; fi
    # The trainer leads its own process group (setsid in tpu_train.sh): signal the whole group.
    tpu_ssh "$on_worker"'; if alive; then kill -'"$sig"' -- "-$(cat "$pidf")"; echo "$(hostname): sent SIG'"$sig"' to $(cat "$pidf")"; else echo "$(hostname): not running"; fi'
    ;;
  delete)
    if [[ "$QUEUED" == 1 ]]; then
      # --force also deletes the TPU the queued resource created.
      run "$GCLOUD" compute tpus queued-resources delete "$TPU_QUEUED_ID" "${TPU_SCOPE[@]}" --force --quiet
    else
      run "$GCLOUD" compute tpus tpu-vm delete "$TPU_NAME" "${TPU_SCOPE[@]}" --quiet
    fi
    ;;
esac
