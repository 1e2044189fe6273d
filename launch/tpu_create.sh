#!/usr/bin/env bash
# Create a Cloud TPU VM (or pod slice) for training.
#
#   launch/tpu_create.sh --name=NAME --zone=ZONE --accelerator_type=v4-32 [--queued] \
#       [--spot | --reserved | --preemptible] [--valid_until=6h] [--dry-run] [-- EXTRA_GCLOUD_FLAGS]
#
# Two ways to get the TPU:
#   default    `gcloud compute tpus tpu-vm create`: immediate, fails when the zone has no capacity.
#   --queued   `gcloud compute tpus queued-resources create`: the request waits in Cloud TPU's queue
#              until capacity frees up (the usual way to get large slices and spot capacity);
#              `launch/tpu_status.sh --queued status` shows its state, ACTIVE means ready.
# Pricing model (at most one): --spot (cheap, preemptible at any time), --reserved (your
# reservation), --preemptible (tpu-vm create only; the older 24-hour preemptible model).
# --valid_until=DURATION (queued only): give up on the request if it is not filled in time.
# Everything after -- is passed to gcloud unchanged (e.g. --network=..., --subnetwork=...,
# --internal-ips, --data-disk=..., --labels=...).
#
# Settings (flags or environment, see tpu_common.sh): TPU_NAME, TPU_ZONE, TPU_PROJECT,
# TPU_ACCELERATOR_TYPE, TPU_RUNTIME_VERSION, TPU_QUEUED_ID; TPU_CREATE_MODE=vm|queued,
# TPU_PRICING=on-demand|spot|reserved|preemptible, TPU_VALID_UNTIL.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=tpu_common.sh
source "$LAUNCH_DIR/tpu_common.sh"

TPU_CREATE_MODE=${TPU_CREATE_MODE:-vm}
TPU_PRICING=${TPU_PRICING:-on-demand}
TPU_VALID_UNTIL=${TPU_VALID_UNTIL:-}

while [[ $# -gt 0 ]]; do
  if tpu_common_flag "$1"; then shift; continue; fi
  case "$1" in
    --queued) TPU_CREATE_MODE=queued ;;
    --vm) TPU_CREATE_MODE=vm ;;
    --spot) TPU_PRICING=spot ;;
    --reserved) TPU_PRICING=reserved ;;
    --preemptible) TPU_PRICING=preemptible ;;
    --on_demand|--on-demand) TPU_PRICING=on-demand ;;
    --valid_until=*) TPU_VALID_UNTIL=$(flag_value "$1") ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown flag $1 (see --help)" ;;
  esac
  shift
done
EXTRA=("$@")

tpu_finish_settings
require TPU_ACCELERATOR_TYPE "--accelerator_type=TYPE (e.g. v4-32) or TPU_ACCELERATOR_TYPE"
TPU_RUNTIME_VERSION=${TPU_RUNTIME_VERSION:-$(tpu_default_runtime "$TPU_ACCELERATOR_TYPE")}

pricing=()
case "$TPU_PRICING" in
  on-demand) ;;
  spot) pricing=(--spot) ;;
  reserved) pricing=(--reserved) ;;
  preemptible)
    [[ "$TPU_CREATE_MODE" == vm ]] || die "--preemptible exists for tpu-vm create only; use --spot with --queued"
    pricing=(--preemptible) ;;
  *) die "TPU_PRICING must be on-demand, spot, reserved or preemptible, got '$TPU_PRICING'" ;;
esac

case "$TPU_CREATE_MODE" in
  vm)
    [[ -z "$TPU_VALID_UNTIL" ]] || die "--valid_until needs --queued"
    run "$GCLOUD" compute tpus tpu-vm create "$TPU_NAME" "${TPU_SCOPE[@]}" \
      --accelerator-type="$TPU_ACCELERATOR_TYPE" --version="$TPU_RUNTIME_VERSION" \
      ${pricing[@]+"${pricing[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}
    ;;
  queued)
    valid=()
    if [[ -n "$TPU_VALID_UNTIL" ]]; then valid=(--valid-until-duration="$TPU_VALID_UNTIL"); fi
    run "$GCLOUD" compute tpus queued-resources create "$TPU_QUEUED_ID" "${TPU_SCOPE[@]}" \
      --node-id="$TPU_NAME" --accelerator-type="$TPU_ACCELERATOR_TYPE" \
      --runtime-version="$TPU_RUNTIME_VERSION" \
      ${pricing[@]+"${pricing[@]}"} ${valid[@]+"${valid[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}
    info "queued; watch it with: launch/tpu_status.sh --name=$TPU_NAME --zone=$TPU_ZONE --queued status"
    ;;
  *) die "TPU_CREATE_MODE must be vm or queued, got '$TPU_CREATE_MODE'" ;;
esac
