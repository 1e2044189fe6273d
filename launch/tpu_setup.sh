#!/usr/bin/env bash
# Put the code and a Python environment on every worker of a TPU VM / pod slice.
#
#   launch/tpu_setup.sh --name=NAME --zone=ZONE [--repo_url=URL [--repo_ref=REF]] [--dry-run]
#
# Code: with --repo_url (TPU_REPO_URL) each worker clones it (or fetches and checks out REF in an
# existing clone); without it this working tree is packed (minus .git, .venv, workdirs, logs) and
# copied to every worker with `tpu-vm scp --worker=all`, so uncommitted changes travel too.
# Environment: a venv in <remote_dir>/.venv with `pip install -r requirements.txt` and jax[tpu]
# (libtpu) resolved together. The project needs Python >= 3.11; TPU base images ship 3.10, so when
# the worker's python3 is older, uv (installed with pip --user) provides a managed Python
# TPU_PYTHON_VERSION. --python=BIN (TPU_PYTHON) uses that interpreter on the workers instead.
# Finally each worker prints its jax version and local TPU devices (skip with --no_check).
#
# Settings (flags or environment; common ones in tpu_common.sh): TPU_NAME, TPU_ZONE, TPU_PROJECT,
# TPU_REMOTE_DIR, TPU_WORKER, TPU_SSH_FLAGS; TPU_REPO_URL, TPU_REPO_REF, TPU_PYTHON,
# TPU_PYTHON_VERSION (default 3.12), JAX_TPU_SPEC (default jax[tpu]; pin with e.g.
# "jax[tpu]==0.10.2"), TPU_PIP_FLAGS (extra pip words, e.g. "-f URL").
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=tpu_common.sh
source "$LAUNCH_DIR/tpu_common.sh"

TPU_REPO_URL=${TPU_REPO_URL:-}
TPU_REPO_REF=${TPU_REPO_REF:-}
TPU_PYTHON=${TPU_PYTHON:-}
TPU_PYTHON_VERSION=${TPU_PYTHON_VERSION:-3.12}
JAX_TPU_SPEC=${JAX_TPU_SPEC:-jax[tpu]}
TPU_PIP_FLAGS=${TPU_PIP_FLAGS:-}
CHECK=1

while [[ $# -gt 0 ]]; do
  if tpu_common_flag "$1"; then shift; continue; fi
  case "$1" in
    --repo_url=*) TPU_REPO_URL=$(flag_value "$1") ;;
    --repo_ref=*) TPU_REPO_REF=$(flag_value "$1") ;;
    --python=*) TPU_PYTHON=$(flag_value "$1") ;;
    --python_version=*) TPU_PYTHON_VERSION=$(flag_value "$1") ;;
    --jax_spec=*) JAX_TPU_SPEC=$(flag_value "$1") ;;
    --no_check) CHECK=0 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown flag $1 (see --help)" ;;
  esac
  shift
done
tpu_finish_settings

dir=$(tpu_remote_dir)

# 1. The code.
if [[ -n "$TPU_REPO_URL" ]]; then
  url=$(shell_quote "$TPU_REPO_URL")
  fetch="if [ -d $dir/.git ]; then git -C $dir fetch --quiet origin; else git clone --quiet $url $dir; fi"
  if [[ -n "$TPU_REPO_REF" ]]; then
    ref=$(shell_quote "$TPU_REPO_REF")
    fetch+=" && git -C $dir checkout --quiet $ref && (git -C $dir merge --quiet --ff-only '@{u}' 2>/dev/null || true)"
  else
    fetch+=" && git -C $dir pull --quiet --ff-only"
  fi
  tpu_ssh "set -e; $fetch"
else
  archive="${TMPDIR:-/tmp}/digan_jax_src_$TPU_NAME.tgz"
  # Only the files a run needs: no git history, virtualenvs, run outputs or caches.
  run tar -C "$REPO_ROOT" -czf "$archive" --exclude-vcs --exclude=.venv --exclude=venv \
    --exclude=workdirs --exclude=logs --exclude=__pycache__ --exclude=.pytest_cache \
    --exclude='*.egg-info' .
  run "$GCLOUD" compute tpus tpu-vm scp "$archive" "$TPU_NAME:digan_jax_src.tgz" "${TPU_SCOPE[@]}" \
    --worker="$TPU_WORKER" ${TPU_SSH_EXTRA[@]+"${TPU_SSH_EXTRA[@]}"}
  tpu_ssh "set -e; mkdir -p $dir && tar -xzf digan_jax_src.tgz -C $dir && rm digan_jax_src.tgz"
  run rm -f "$archive"
fi

# 2. The Python environment. The venv is created once; later runs only update the packages.
if [[ -n "$TPU_PYTHON" ]]; then
  make_venv="$(shell_quote "$TPU_PYTHON") -m venv .venv"
else
  pyv=$(shell_quote "$TPU_PYTHON_VERSION")
  make_venv="if python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then python3 -m venv .venv; else (python3 -m pip install --quiet --user uv || python3 -m pip install --quiet --user --break-system-packages uv) && ~/.local/bin/uv venv --quiet --seed --python $pyv .venv; fi"
fi
pip_extra=""
if [[ -n "$TPU_PIP_FLAGS" ]]; then pip_extra=" $TPU_PIP_FLAGS"; fi
setup="set -e; cd $dir; [ -x .venv/bin/python ] || { $make_venv; }"
setup+="; .venv/bin/pip install --quiet --upgrade pip"
setup+="; .venv/bin/pip install --quiet$pip_extra -r requirements.txt $(shell_quote "$JAX_TPU_SPEC")"
if [[ "$CHECK" == 1 ]]; then
  # All workers run this at the same time, as a pod slice needs for its runtime to come up.
  setup+="; .venv/bin/python -c 'import socket, jax; print(socket.gethostname(), \"jax\", jax.__version__, jax.local_device_count(), \"x\", jax.local_devices()[0].device_kind)'"
fi
tpu_ssh "$setup"
