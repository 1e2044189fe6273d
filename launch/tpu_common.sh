# shellcheck shell=bash
# Settings and helpers shared by the tpu_*.sh scripts (sourced after lib.sh, never executed).
#
# Every site-specific value is an environment variable with a flag of the same meaning:
#   TPU_NAME              --name=         TPU VM (node) name                       (required)
#   TPU_ZONE              --zone=         zone, e.g. us-central2-b  (default: $CLOUDSDK_COMPUTE_ZONE)
#   TPU_PROJECT           --project=      GCP project (default: $CLOUDSDK_CORE_PROJECT, else gcloud's
#                                         configured project)
#   TPU_ACCELERATOR_TYPE  --accelerator_type=  e.g. v4-32, v5litepod-16, v6e-16 (tpu_create.sh)
#   TPU_RUNTIME_VERSION   --runtime_version=   TPU software version (default: from the accelerator)
#   TPU_QUEUED_ID         --queued_id=    queued-resource id (default: <TPU_NAME>-qr)
#   TPU_REMOTE_DIR        --remote_dir=   repository on each worker, relative to the remote home
#                                         or absolute (default: digan_jax)
#   TPU_WORKER            --worker=       workers to run on: all, or e.g. 0 (default: all)
#   TPU_SSH_FLAGS         (env only)      extra words for `tpu-vm ssh/scp`, e.g. "--tunnel-through-iap"
#                                         or "--internal-ip"
#   GCLOUD                (env only)      the gcloud command (default: gcloud)

TPU_NAME=${TPU_NAME:-}
TPU_ZONE=${TPU_ZONE:-${CLOUDSDK_COMPUTE_ZONE:-}}
TPU_PROJECT=${TPU_PROJECT:-${CLOUDSDK_CORE_PROJECT:-}}
TPU_ACCELERATOR_TYPE=${TPU_ACCELERATOR_TYPE:-}
TPU_RUNTIME_VERSION=${TPU_RUNTIME_VERSION:-}
TPU_QUEUED_ID=${TPU_QUEUED_ID:-}
TPU_REMOTE_DIR=${TPU_REMOTE_DIR:-digan_jax}
TPU_WORKER=${TPU_WORKER:-all}
TPU_SSH_FLAGS=${TPU_SSH_FLAGS:-}
GCLOUD=${GCLOUD:-gcloud}

# Consume one of the common flags above; returns 1 for anything else.
# shellcheck disable=SC2034  # DRY_RUN is read by run() in lib.sh
tpu_common_flag() {
  case "$1" in
    --name=*) TPU_NAME=$(flag_value "$1") ;;
    --zone=*) TPU_ZONE=$(flag_value "$1") ;;
    --project=*) TPU_PROJECT=$(flag_value "$1") ;;
    --accelerator_type=*|--accelerator-type=*) TPU_ACCELERATOR_TYPE=$(flag_value "$1") ;;
    --runtime_version=*|--runtime-version=*|--version=*) TPU_RUNTIME_VERSION=$(flag_value "$1") ;;
    --queued_id=*) TPU_QUEUED_ID=$(flag_value "$1") ;;
    --remote_dir=*) TPU_REMOTE_DIR=$(flag_value "$1") ;;
    --worker=*) TPU_WORKER=$(flag_value "$1") ;;
    --dry-run|--dry_run) DRY_RUN=1 ;;
    *) return 1 ;;
  esac
}

# Check the required values and derive the defaults that depend on others.
tpu_finish_settings() {
  require TPU_NAME "--name=NAME or TPU_NAME"
  require TPU_ZONE "--zone=ZONE or TPU_ZONE (or set CLOUDSDK_COMPUTE_ZONE)"
  TPU_QUEUED_ID=${TPU_QUEUED_ID:-$TPU_NAME-qr}
  # --zone and --project for every gcloud call; no --project means gcloud's configured one.
  TPU_SCOPE=(--zone="$TPU_ZONE")
  if [[ -n "$TPU_PROJECT" ]]; then TPU_SCOPE+=(--project="$TPU_PROJECT"); fi
  read -r -a TPU_SSH_EXTRA <<<"$TPU_SSH_FLAGS"
}

# The software image to create a TPU with: Cloud TPU's recommended base image per generation (JAX
# itself is installed by tpu_setup.sh, so no framework-specific image is needed).
tpu_default_runtime() {
  case "$1" in
    v6e*) echo v2-alpha-tpuv6e ;;
    v5litepod*|v5e*) echo v2-alpha-tpuv5-lite ;;
    v5p*) echo v2-alpha-tpuv5 ;;
    *) echo tpu-ubuntu2204-base ;;
  esac
}

# TPU_REMOTE_DIR as a word for the remote shell; a leading ~/ stays unquoted so that it expands there.
# shellcheck disable=SC2088  # the ~ is meant literally here: it is expanded by the remote shell
tpu_remote_dir() {
  if [[ "$TPU_REMOTE_DIR" == "~/"* ]]; then
    printf '~/%s' "$(shell_quote "${TPU_REMOTE_DIR#\~/}")"
  else
    shell_quote "$TPU_REMOTE_DIR"
  fi
}

# Remote shell function: is the trainer recorded in $pidf (by tpu_train.sh) running? Checks the
# command line too, so a pid reused after a reboot does not count.
# shellcheck disable=SC2016,SC2034  # expanded on the workers; used by the scripts sourcing this
TPU_ALIVE_FN='alive() { [ -f "$pidf" ] && grep -qsa digan_jax.main "/proc/$(cat "$pidf")/cmdline"; }'

# Run one shell command line on the selected workers (all by default, in parallel). The command
# runs in the worker's login shell (bash on TPU VM images); `run` prints it under --dry-run.
tpu_ssh() {
  run "$GCLOUD" compute tpus tpu-vm ssh "$TPU_NAME" "${TPU_SCOPE[@]}" --worker="$TPU_WORKER" \
    ${TPU_SSH_EXTRA[@]+"${TPU_SSH_EXTRA[@]}"} --command="$1"
}
