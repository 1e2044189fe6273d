#!/usr/bin/env bash
# Start training on every worker of a TPU VM / pod slice (after tpu_create.sh and tpu_setup.sh).
#
#   launch/tpu_train.sh --name=NAME --zone=ZONE --config=configs/taichi128.py \
#       --workdir=gs://BUCKET/runs/taichi128 [--dry-run] [--foreground] [-- MORE_MAIN_FLAGS]
#
# One `gcloud compute tpus tpu-vm ssh --worker=all` starts `python -m digan_jax.main` on all hosts
# at once (a pod slice's runtime only comes up when every host joins). Each process is detached
# with setsid + nohup, so it survives the ssh session; its output is appended to
# <remote_dir>/logs/host_<hostname>.log and its pid is kept in logs/host_<hostname>.pid for
# tpu_status.sh (tail / stop). --foreground keeps the processes attached and streams their output
# instead (debugging; Ctrl-C ends the ssh sessions, not necessarily the trainers).
#
# --workdir should be a gs:// path on a multi-host slice: every host writes its shards of each
# Orbax checkpoint into the same directory. --config is relative to the repository on the workers.
# Flags after -- go to digan_jax.main unchanged (e.g. --mode=eval, --config.train.global_batch_size=64).
# --config.distributed=True is always added: TPU VMs set none of the environment variables that
# main.py looks for, and jax.distributed.initialize() finds the slice's hosts itself.
#
# Settings (flags or environment; common ones in tpu_common.sh): TPU_NAME, TPU_ZONE, TPU_PROJECT,
# TPU_REMOTE_DIR, TPU_WORKER, TPU_SSH_FLAGS; DIGAN_CONFIG (--config), DIGAN_WORKDIR (--workdir);
# TFDS_DATA_DIR, when set here, is exported to the trainers (e.g. gs://BUCKET/tensorflow_datasets).
# shellcheck disable=SC2016  # the remote scripts are single-quoted: $... expands on the workers
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=tpu_common.sh
source "$LAUNCH_DIR/tpu_common.sh"

DIGAN_CONFIG=${DIGAN_CONFIG:-}
DIGAN_WORKDIR=${DIGAN_WORKDIR:-}
FOREGROUND=0

while [[ $# -gt 0 ]]; do
  if tpu_common_flag "$1"; then shift; continue; fi
  case "$1" in
    --config=*) DIGAN_CONFIG=$(flag_value "$1") ;;
    --workdir=*) DIGAN_WORKDIR=$(flag_value "$1") ;;
    --foreground) FOREGROUND=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown flag $1 (digan_jax.main flags go after --; see --help)" ;;
  esac
  shift
done
MAIN_EXTRA=("$@")
tpu_finish_settings
require DIGAN_CONFIG "--config=configs/X.py or DIGAN_CONFIG"
require DIGAN_WORKDIR "--workdir=DIR (gs://... on a pod slice) or DIGAN_WORKDIR"
if [[ "$DIGAN_WORKDIR" != gs://* ]]; then
  info "note: --workdir=$DIGAN_WORKDIR is not on GCS; on a multi-host slice all hosts must see the same workdir"
fi

main_cmd=$(quote_args .venv/bin/python -m digan_jax.main --config="$DIGAN_CONFIG" \
  --workdir="$DIGAN_WORKDIR" --config.distributed=True ${MAIN_EXTRA[@]+"${MAIN_EXTRA[@]}"})

# The remote script, run by each worker's shell; $(hostname) and $! are expanded there.
remote="set -e; cd $(tpu_remote_dir); export DIGAN_PLATFORM=tpu"
# The workers do not inherit this shell's environment: forward the dataset location explicitly.
if [[ -n "${TFDS_DATA_DIR:-}" ]]; then remote+="; export TFDS_DATA_DIR=$(shell_quote "$TFDS_DATA_DIR")"; fi
remote+="; . launch/env.sh; mkdir -p logs"
remote+='; log=logs/host_$(hostname).log; pidf=logs/host_$(hostname).pid'
if [[ "$FOREGROUND" == 1 ]]; then
  remote+="; $main_cmd 2>&1 | tee -a \"\$log\""
else
  # Refuse to start a second trainer on a host: it could not get the TPU chips anyway.
  remote+="; $TPU_ALIVE_FN"
  remote+='; if alive; then echo "$(hostname): already running (pid $(cat "$pidf")); stop it with tpu_status.sh stop" >&2; exit 1; fi'
  remote+='; echo "=== $(date -u +%FT%TZ) start" >>"$log"'
  remote+="; setsid nohup $main_cmd >>\"\$log\" 2>&1 </dev/null &"
  remote+=' echo $! >"$pidf"; echo "$(hostname): started pid $(cat "$pidf"), log $PWD/$log"'
fi
tpu_ssh "$remote"
