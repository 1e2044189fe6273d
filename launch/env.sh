# shellcheck shell=bash
# Environment for training processes: sourced by every launch script (locally, on each TPU worker,
# in the Slurm batch script before srun, before mpirun), or by hand: `source launch/env.sh`.
#
# Every value is a default: a variable that is already set wins, so a site can override anything
# from its own environment. Nothing here changes shell options, so it is safe to source anywhere.
#
# DIGAN_PLATFORM (gpu | tpu | cpu) picks the platform-specific part; it is detected when unset.

if [[ -z "${DIGAN_PLATFORM:-}" ]]; then
  if [[ -n "${JAX_PLATFORMS:-}" ]]; then
    # An explicit JAX platform list wins over what the machine has (local CPU runs on a GPU host).
    DIGAN_PLATFORM=${JAX_PLATFORMS%%,*}
    if [[ "$DIGAN_PLATFORM" == cuda || "$DIGAN_PLATFORM" == rocm ]]; then DIGAN_PLATFORM=gpu; fi
  elif command -v nvidia-smi >/dev/null 2>&1 || command -v rocm-smi >/dev/null 2>&1; then
    DIGAN_PLATFORM=gpu
  elif compgen -G '/dev/accel*' >/dev/null || compgen -G '/dev/vfio/[0-9]*' >/dev/null; then
    # TPU VMs expose their chips as /dev/accel* (v2-v4) or VFIO devices (v5e, v5p, v6e).
    DIGAN_PLATFORM=tpu
  else
    DIGAN_PLATFORM=cpu
  fi
fi
export DIGAN_PLATFORM

# TensorFlow is only the data pipeline's engine: INFO/WARNING banners (oneDNN, CUDA not found, ...)
# from every process of a pod would drown the training log; errors (level 3) still show.
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

# digan_jax hides all GPUs from TF already (main.py / data/). This is the guard for the case where a
# full CUDA TensorFlow gets installed and something initialises it anyway: TF then takes GPU memory
# as it needs it instead of grabbing the whole card that JAX has preallocated for itself.
export TF_FORCE_GPU_ALLOW_GROWTH=${TF_FORCE_GPU_ALLOW_GROWTH:-true}

# Where prepared TFDS datasets live (local path or gs://bucket/path); train.py reads it when the
# config's data.data_dir is empty. Exported (not set) so srun / mpirun -x / ssh pass it to workers.
if [[ -n "${TFDS_DATA_DIR:-}" ]]; then
  export TFDS_DATA_DIR
fi

if [[ "$DIGAN_PLATFORM" == gpu ]]; then
  # JAX preallocates 75% of each GPU by default. A training process owns its GPU, so give XLA
  # 90%: larger per-device batches / resolutions fit, and the rest stays for cuDNN/NCCL workspaces.
  export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.90}
  # Let XLA schedule the data-parallel gradient all-reduces (and fsdp all-gathers) so that they
  # overlap with the backward pass instead of running after it; matters most across nodes.
  case " ${XLA_FLAGS:-} " in
    *" --xla_gpu_enable_latency_hiding_scheduler="*) ;;
    *) XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_enable_latency_hiding_scheduler=true" ;;
  esac
  export XLA_FLAGS
fi
# TPU: libtpu's defaults already overlap collectives and JAX does not preallocate host-side, so
# nothing is set here; put LIBTPU_INIT_ARGS in the environment to experiment.
