#!/usr/bin/env bash
# Multi-node GPU training with Open MPI's mpirun (clusters without Slurm). Run from the repository
# root on one of the hosts; the repository, the Python environment and the workdir must be at the
# same paths on every host (a shared filesystem, or gs:// for the workdir).
#
#   launch/mpirun_train.sh --hosts=node1,node2 --config=configs/taichi128.py \
#       --workdir=/shared/runs/taichi128 [--process_per=gpu] [--dry-run] [-- MORE_MAIN_FLAGS]
#
# Processes (--process_per=host|gpu, or PROCESS_PER):
#   host (default)  one process per host driving all its GPUs (JAX_LOCAL_DEVICE_IDS lists them all;
#                   JAX would otherwise give each rank only the GPU numbered by its local rank)
#   gpu             one process per GPU; JAX picks GPU OMPI_COMM_WORLD_LOCAL_RANK for each rank
# main.py sees OMPI_COMM_WORLD_SIZE and calls jax.distributed.initialize(), which reads the
# coordinator, process count and rank from Open MPI's environment (Open MPI 4.x). Open MPI 5 no
# longer sets the variable JAX finds the coordinator with: pass --coordinator=node1:PORT and each
# rank gets JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (and its GPU) explicitly.
#
# Settings (flags or environment):
#   MPI_HOSTS      --hosts=          comma-separated host names                         (required)
#   DIGAN_CONFIG   --config=         config file                                         (required)
#   DIGAN_WORKDIR  --workdir=        run directory every host sees, or gs://              (required)
#   PROCESS_PER    --process_per=    host | gpu                                    (default host)
#   GPUS_PER_HOST  --gpus_per_host=  GPUs per host (default: nvidia-smi on this host, else 8)
#   JAX_COORDINATOR --coordinator=   HOST:PORT, explicit coordinator (see above; default: none)
#   PYTHON         (env)             interpreter on every host (default: python)
#   MPIRUN         (env)             the mpirun command (default: mpirun)
#   MPIRUN_FLAGS   (env)             extra mpirun words, e.g. "--mca btl_tcp_if_include eth0"
# The environment prepared by launch/env.sh (and PATH, LD_LIBRARY_PATH, PYTHONPATH, TFDS_DATA_DIR,
# NCCL_* variables) is exported to every rank with -x.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MPI_HOSTS=${MPI_HOSTS:-}
DIGAN_CONFIG=${DIGAN_CONFIG:-}
DIGAN_WORKDIR=${DIGAN_WORKDIR:-}
PROCESS_PER=${PROCESS_PER:-host}
GPUS_PER_HOST=${GPUS_PER_HOST:-}
JAX_COORDINATOR=${JAX_COORDINATOR:-}
PYTHON=${PYTHON:-python}
MPIRUN=${MPIRUN:-mpirun}
MPIRUN_FLAGS=${MPIRUN_FLAGS:-}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --hosts=*) MPI_HOSTS=$(flag_value "$1") ;;
    --config=*) DIGAN_CONFIG=$(flag_value "$1") ;;
    --workdir=*) DIGAN_WORKDIR=$(flag_value "$1") ;;
    --process_per=*) PROCESS_PER=$(flag_value "$1") ;;
    --gpus_per_host=*) GPUS_PER_HOST=$(flag_value "$1") ;;
    --coordinator=*) JAX_COORDINATOR=$(flag_value "$1") ;;
    --dry-run|--dry_run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown flag $1 (digan_jax.main flags go after --; see --help)" ;;
  esac
  shift
done
MAIN_EXTRA=("$@")
require MPI_HOSTS "--hosts=node1,node2 or MPI_HOSTS"
require DIGAN_CONFIG "--config=configs/X.py or DIGAN_CONFIG"
require DIGAN_WORKDIR "--workdir=DIR or DIGAN_WORKDIR"
if [[ -n "$JAX_COORDINATOR" && "$JAX_COORDINATOR" != *:* ]]; then
  die "--coordinator must be HOST:PORT, got '$JAX_COORDINATOR'"
fi

if [[ -z "$GPUS_PER_HOST" ]]; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    GPUS_PER_HOST=$(nvidia-smi -L | grep -c '^GPU')
  else
    GPUS_PER_HOST=8
  fi
fi
[[ "$GPUS_PER_HOST" =~ ^[1-9][0-9]*$ ]] || die "GPUS_PER_HOST must be a positive number, got '$GPUS_PER_HOST'"

export DIGAN_PLATFORM=gpu
# shellcheck source=env.sh
source "$LAUNCH_DIR/env.sh"
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"

case "$PROCESS_PER" in
  host)
    per_host=1
    JAX_LOCAL_DEVICE_IDS=$(index_list "$GPUS_PER_HOST")
    export JAX_LOCAL_DEVICE_IDS
    ;;
  gpu)
    per_host=$GPUS_PER_HOST
    unset JAX_LOCAL_DEVICE_IDS
    ;;
  *) die "PROCESS_PER must be host or gpu, got '$PROCESS_PER'" ;;
esac

IFS=, read -r -a hosts <<<"$MPI_HOSTS"
host_slots=""
for h in "${hosts[@]}"; do
  [[ -n "$h" ]] || continue
  host_slots+="${host_slots:+,}$h:$per_host"
done
np=$(( ${#hosts[@]} * per_host ))

args=(-np "$np" -H "$host_slots"
  # Open MPI binds each rank to one core by default when there are few ranks; the data pipeline
  # needs the host's other cores.
  --bind-to none)
# Export the environment to the remote ranks (mpirun only forwards what -x names).
exports=(PATH LD_LIBRARY_PATH PYTHONPATH DIGAN_PLATFORM XLA_FLAGS XLA_PYTHON_CLIENT_MEM_FRACTION
  TF_CPP_MIN_LOG_LEVEL TF_FORCE_GPU_ALLOW_GROWTH TFDS_DATA_DIR JAX_LOCAL_DEVICE_IDS
  JAX_COORDINATOR_PORT)
while IFS= read -r name; do exports+=("$name"); done < <(compgen -e | grep '^NCCL_' || true)
for name in "${exports[@]}"; do
  if [[ -n "${!name:-}" ]]; then args+=(-x "$name"); fi
done
read -r -a mpirun_extra <<<"$MPIRUN_FLAGS"

cmd=("$PYTHON" -m digan_jax.main --config="$DIGAN_CONFIG" --workdir="$DIGAN_WORKDIR"
  ${MAIN_EXTRA[@]+"${MAIN_EXTRA[@]}"})
if [[ -n "$JAX_COORDINATOR" ]]; then
  args+=(-x "JAX_COORDINATOR_ADDRESS=$JAX_COORDINATOR")
  # Each rank maps Open MPI's rank variables onto the ones main.py passes to initialize().
  # shellcheck disable=SC2016  # expanded by each rank's bash, not here
  wrapper='export JAX_NUM_PROCESSES=$OMPI_COMM_WORLD_SIZE JAX_PROCESS_ID=$OMPI_COMM_WORLD_RANK;'
  if [[ "$PROCESS_PER" == gpu ]]; then
    # shellcheck disable=SC2016
    wrapper+=' export JAX_LOCAL_DEVICE_IDS=$OMPI_COMM_WORLD_LOCAL_RANK;'
  fi
  wrapper+=' exec "$@"'
  cmd=(bash -c "$wrapper" digan "${cmd[@]}")
fi

info "${#hosts[@]} hosts x $per_host processes ($PROCESS_PER mode, $GPUS_PER_HOST GPUs per host)"
# Remote ranks start in this same directory (Open MPI's default when it exists there), so relative
# --config / --workdir paths mean the same on every host.
run "$MPIRUN" "${args[@]}" ${mpirun_extra[@]+"${mpirun_extra[@]}"} "${cmd[@]}"
