"""Tiny DIGAN configs and a short deterministic training run, shared by the step tests and by the
worker processes of the multi-process test (run as `python tests/tiny_digan.py --worker ...`)."""

from __future__ import annotations

import sys

import numpy as np

# Tiny networks are compile-bound on CPU: a low LLVM optimisation level halves compile time.
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def tiny_generator_config():
  """A 32² generator small enough to compile in seconds (model and sampling tests)."""
  from digan_jax.models import GeneratorConfig

  return GeneratorConfig(
    resolution=32,
    input_resolution=8,
    z_dim=32,
    motion_dim=32,
    w_dim=32,
    channel_base=256,
    channel_max=16,
    emb_size=16,
  )


def tiny_config(
  resolution: int = 8,
  global_batch: int = 16,
  r1_every: int = 1,
  num_micro_batches: int = 1,
  c_dim: int = 0,
):
  """A DIGAN config with networks small enough to compile in seconds on a 2-core CPU."""
  sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
  from configs.default import get_config

  config = get_config()
  g = config.model.generator
  g.resolution = resolution
  g.input_resolution = min(resolution, 4)
  g.z_dim = g.motion_dim = g.w_dim = 16
  g.channel_base = 4 * resolution
  g.channel_max = 8
  g.emb_size = 8
  g.fmm_rank = 2
  g.extra_convs = ()
  g.c_dim = c_dim
  d = config.model.discriminator
  d.channel_base = 4 * resolution
  d.channel_max = 8
  d.mapping_layers = 2
  config.train.global_batch_size = global_batch
  config.train.r1_every = r1_every
  config.train.num_micro_batches = num_micro_batches
  return config


def fast_compile_steps():
  """A DiganSteps whose jits default to COMPILER_OPTIONS: for trainer runs in tests (the trainer
  builds its own DiganSteps)."""
  from digan_jax import steps

  class FastCompileSteps(steps.DiganSteps):
    def __init__(self, *args, **kwargs):
      kwargs.setdefault("compiler_options", COMPILER_OPTIONS)
      super().__init__(*args, **kwargs)

  return FastCompileSteps


def real_batch(step: int, global_batch: int, resolution: int, c_dim: int = 0):
  """Deterministic 'real' batch of frame pairs for iteration `step` (NumPy, global rows)."""
  rng = np.random.default_rng(1000 + step)
  batch = {
    "frames": rng.uniform(-1, 1, (global_batch, 2, resolution, resolution, 3)).astype(np.float32),
    "delta_t": rng.integers(0, 16, (global_batch,)).astype(np.float32) / 15,
  }
  if c_dim:
    batch["label"] = rng.integers(0, c_dim, (global_batch,)).astype(np.int32)
  return batch


def free_port() -> int:
  """A free local TCP port for jax.distributed's coordinator."""
  import socket

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run(config, mesh, num_steps: int):
  """Train `num_steps` iterations feeding each process its rows; returns (metrics list, state)."""
  import jax
  from digan_jax import sharding, steps as steps_lib

  steps = steps_lib.DiganSteps(config, mesh, compiler_options=COMPILER_OPTIONS)
  state = steps.create_train_state()
  step_fn = steps.jit_train_step()
  rows = sharding.process_rows(mesh, steps.global_batch)
  history = []
  for i in range(num_steps):
    batch = real_batch(i, steps.global_batch, steps.resolution, steps.c_dim)
    local = {k: v[rows] for k, v in batch.items()}
    state, metrics = step_fn(
      state, sharding.global_batch_from_local(local, mesh), steps.lazy_phases(i)
    )
    history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
  return history, state


def host_params(state):
  """All trainable and EMA parameters of a (replicated) state as NumPy on this host."""
  import jax

  pick = lambda x: np.asarray(x.addressable_data(0)) if x.is_fully_replicated else np.asarray(x)
  return jax.tree.map(
    pick, {"g": state.g_params, "d": state.d_params, "g_ema": state.g_ema["params"]}
  )


def _worker(process_id: int, num_processes: int, port: int, out_path: str, num_steps: int):
  import jax

  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    f"127.0.0.1:{port}", num_processes=num_processes, process_id=process_id
  )
  from digan_jax import sharding

  config = tiny_config()
  mesh = sharding.make_mesh(config.mesh)
  history, state = run(config, mesh, num_steps)
  flat = {
    jax.tree_util.keystr(p): v
    for p, v in jax.tree_util.tree_flatten_with_path(host_params(state))[0]
  }
  np.savez(
    out_path,
    losses=np.array([[m[k] for k in sorted(m)] for m in history]),
    devices=np.array([jax.device_count(), jax.local_device_count()]),
    **flat,
  )
  jax.distributed.shutdown()


if __name__ == "__main__":
  if len(sys.argv) == 7 and sys.argv[1] == "--worker":
    _worker(*map(int, sys.argv[2:5]), sys.argv[5], int(sys.argv[6]))
  else:
    sys.exit("usage: tiny_digan.py --worker PROCESS_ID NUM_PROCESSES PORT OUT.npz NUM_STEPS")
