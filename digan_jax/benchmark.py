"""Throughput, latency, memory and MFU measurements, printed as JSON.

Subcommands:
  train   the training step on in-memory random data: the G, D and R1 phases compiled and timed
          separately (comparable with the official per-phase numbers) and the fused step (with and
          without R1), with compile times, XLA cost-analysis FLOPs, peak memory and MFU.

  render  generator rendering (one jitted call per batch of whole videos): seconds per video and
          frames/s after compilation, paper or small generator, float32 or bfloat16.
  i3d     the Flax I3D forward pass of FVD: clips/s and GFLOPs per clip at 224x224.
  data    input pipelines: synthetic dataset build time and size, tf.data and NumPy clips/s.

  python -m digan_jax.benchmark train --preset=paper --per_device_batch=4 --steps=3
  python -m digan_jax.benchmark render --preset=paper --batch_sizes=1,8
  python -m digan_jax.benchmark i3d --batch_size=4
  python -m digan_jax.benchmark data --resolution=128 --num_videos=1000

Only `data` imports TensorFlow (and only for its tf.data half; --no-tf skips it): the others run
wherever jax, flax, optax and ml-collections do.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import resource
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Dense peak FLOP/s per device by (device-kind substring, dtype). float32 on GPUs counts TF32
# tensor cores (XLA's default precision for float32 matmuls/convolutions there).
PEAK_FLOPS = (
    ("H200", "bfloat16", 989e12), ("H200", "float32", 494e12),
    ("H100", "bfloat16", 989e12), ("H100", "float32", 494e12),
    ("A100", "bfloat16", 312e12), ("A100", "float32", 156e12),
    ("TPU v5 lite", "bfloat16", 197e12), ("TPU v5e", "bfloat16", 197e12),
    ("TPU v5p", "bfloat16", 459e12), ("TPU v5", "bfloat16", 459e12),
    ("TPU v4", "bfloat16", 275e12),
)
# The official PyTorch code on this project's 2-core CPU (2 threads, fp32, DiffAugment on,
# paper networks at 128², per-device batch 4), seconds per phase.
OFFICIAL_CPU_SECONDS = {"g": 51.0, "d": 77.0, "r1": 75.0}


def peak_flops(device, dtype: str) -> float | None:
  kind = device.device_kind
  for name, dt, flops in PEAK_FLOPS:
    if name.lower() in kind.lower() and (dt == dtype or device.platform == "tpu"):
      return flops
  return None


def peak_memory_bytes() -> tuple[int, str]:
  stats = [d.memory_stats() for d in jax.local_devices()]
  if all(s and "peak_bytes_in_use" in s for s in stats):
    return max(s["peak_bytes_in_use"] for s in stats), "device memory_stats peak_bytes_in_use (max over devices)"
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS"


def _flops(compiled) -> float | None:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost["flops"]) if cost and "flops" in cost else None


def _train_config(args):
  sys.path.insert(0, ".")
  if args.preset == "paper":
    from configs import default as preset
  elif args.preset == "small":
    from configs import synthetic as preset
  else:
    raise ValueError(f"unknown preset {args.preset!r}")
  config = preset.get_config()
  config.model.compute_dtype = args.dtype
  config.train.global_batch_size = args.per_device_batch * jax.device_count()
  config.train.num_micro_batches = args.num_micro_batches
  return config


def _random_batch(steps, mesh, seed: int = 0):
  from digan_jax import sharding
  rng = np.random.default_rng(seed + jax.process_index())
  n = steps.global_batch // jax.process_count()
  r = steps.resolution
  local = {"frames": rng.uniform(-1, 1, (n, 2, r, r, 3)).astype(np.float32),
           "delta_t": (rng.integers(0, 16, (n,)) / 15).astype(np.float32)}
  if steps.c_dim:
    local["label"] = rng.integers(0, steps.c_dim, (n,)).astype(np.int32)
  return sharding.global_batch_from_local(local, mesh)


def _time(fn, state, batch, steps: int, warmup: int, *args):
  """Compile (timed), warm up, then the mean wall time of `steps` calls; the state is donated."""
  t0 = time.perf_counter()
  compiled = fn.lower(state, batch, *args).compile()
  compile_s = time.perf_counter() - t0
  for _ in range(warmup):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(state)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t0)
  return state, dict(compile_s=compile_s, seconds=float(np.mean(times)), seconds_all=times,
                     flops=_flops(compiled))


def train_benchmark(args) -> dict[str, Any]:
  from digan_jax import sharding, steps as steps_lib
  config = _train_config(args)
  mesh = sharding.make_mesh(config.mesh)
  t0 = time.perf_counter()
  steps = steps_lib.DiganSteps(config, mesh)
  state = steps.create_train_state()
  jax.block_until_ready(state)
  init_s = time.perf_counter() - t0
  batch = _random_batch(steps, mesh)
  r1_every = steps.r1_every
  out: dict[str, Any] = dict(
      benchmark="train", preset=args.preset, platform=jax.devices()[0].platform,
      device_kind=jax.devices()[0].device_kind, num_devices=jax.device_count(),
      num_processes=jax.process_count(), resolution=steps.resolution, dtype=args.dtype,
      per_device_batch=args.per_device_batch, global_batch=steps.global_batch,
      num_micro_batches=steps.num_micro, r1_every=r1_every, init_s=init_s,
      timed_steps=args.steps, warmup=args.warmup)

  if args.phases:
    phases = {}
    for name in ("g", "d", "r1"):
      state, phases[name] = _time(steps.jit_phase(name), state, batch, args.steps, args.warmup)
    out["phases"] = phases
    iteration = phases["g"]["seconds"] + phases["d"]["seconds"] + phases["r1"]["seconds"] / r1_every
    out["iteration_s_from_phases"] = iteration
    if None not in (phases[p]["flops"] for p in phases):
      out["flops_per_iteration_from_phases"] = (phases["g"]["flops"] + phases["d"]["flops"]
                                                + phases["r1"]["flops"] / r1_every)
  if args.fused:
    step_fn = steps.jit_train_step()
    fused = {}
    for do_r1 in (False, True):
      wrapped = _Bound(step_fn, do_r1)
      state, fused["step_r1" if do_r1 else "step"] = _time(wrapped, state, batch, args.steps,
                                                           args.warmup)
    out["fused"] = fused
    iteration = (fused["step"]["seconds"] * (r1_every - 1) + fused["step_r1"]["seconds"]) / r1_every
    out["iteration_s"] = iteration
    if fused["step"]["flops"] is not None and fused["step_r1"]["flops"] is not None:
      out["flops_per_iteration"] = ((fused["step"]["flops"] * (r1_every - 1)
                                     + fused["step_r1"]["flops"]) / r1_every)
  else:
    out["iteration_s"] = out["iteration_s_from_phases"]
    if "flops_per_iteration_from_phases" in out:
      out["flops_per_iteration"] = out["flops_per_iteration_from_phases"]

  it = out["iteration_s"]
  out["steps_per_sec"] = 1.0 / it
  out["videos_per_sec"] = steps.global_batch / it
  out["kimg_per_day"] = steps.global_batch / it * 86400 / 1000
  # XLA's cost analysis describes the per-device (partitioned) program.
  peak = peak_flops(jax.devices()[0], args.dtype)
  out["peak_flops_per_device"] = peak
  if out.get("flops_per_iteration") and peak:
    out["mfu"] = out["flops_per_iteration"] / it / peak
  out["peak_memory_bytes"], out["peak_memory_source"] = peak_memory_bytes()
  if (args.preset == "paper" and args.per_device_batch == 4 and out["platform"] == "cpu"
      and "phases" in out):
    official_it = (OFFICIAL_CPU_SECONDS["g"] + OFFICIAL_CPU_SECONDS["d"]
                   + OFFICIAL_CPU_SECONDS["r1"] / 16)
    out["official_cpu_seconds"] = dict(OFFICIAL_CPU_SECONDS, iteration=official_it)
    out["speedup_vs_official"] = {
        p: OFFICIAL_CPU_SECONDS[p] / out["phases"][p]["seconds"] for p in OFFICIAL_CPU_SECONDS}
    out["speedup_vs_official"]["iteration"] = official_it / out["iteration_s"]
  return out


def render_benchmark(args) -> dict[str, Any]:
  from digan_jax import sampling  # pylint: disable=g-import-not-at-top
  sizes = tuple(int(b) for b in args.batch_sizes.split(",") if b)
  out = sampling.render_benchmark(args.preset, batch_sizes=sizes, num_frames=args.num_frames,
                                  repeats=args.repeats, dtype=args.dtype,
                                  frames_per_chunk=args.frames_per_chunk)
  out["peak_memory_bytes"], out["peak_memory_source"] = peak_memory_bytes()
  return out


def bench_i3d(batch_size: int = 4, num_frames: int = 16, iters: int = 3,
              precision="highest", path=None) -> dict:
  """Measures I3D forward throughput on random [batch, num_frames, 224, 224, 3] clips.

  Returns a dict with compile time, mean step time, clips/s and XLA's FLOP count per clip on the
  default backend (for MFU in benchmark.py).
  """
  from digan_jax.evaluation import i3d, i3d_weights  # pylint: disable=g-import-not-at-top
  _, variables = i3d_weights.load_i3d(path, precision=precision)
  videos = jax.random.uniform(jax.random.key(0),
                              (batch_size, num_frames, i3d.INPUT_SIZE, i3d.INPUT_SIZE, 3),
                              jnp.float32, -1.0, 1.0)
  start = time.perf_counter()
  fn = jax.jit(functools.partial(i3d.i3d_logits, precision=precision)).lower(
      variables, videos).compile()
  fn(variables, videos).block_until_ready()
  compile_s = time.perf_counter() - start
  cost = fn.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax returns one dict per computation
    cost = cost[0] if cost else None
  flops = float(cost["flops"]) if cost and "flops" in cost else float("nan")
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    fn(variables, videos).block_until_ready()
    times.append(time.perf_counter() - start)
  step_s = float(np.mean(times))
  device = jax.devices()[0]
  return {
      "backend": jax.default_backend(),
      "device": getattr(device, "device_kind", str(device)),
      "batch_size": batch_size,
      "num_frames": num_frames,
      "precision": str(precision),
      "compile_and_first_call_s": compile_s,
      "step_s": step_s,
      "step_s_min": float(np.min(times)),
      "clips_per_sec": batch_size / step_s,
      "gflops_per_clip": flops / batch_size / 1e9,
  }


def i3d_benchmark(args) -> dict[str, Any]:
  out = bench_i3d(batch_size=args.batch_size, num_frames=args.num_frames, iters=args.iters,
                      precision=args.precision)
  flops = out["gflops_per_clip"] * 1e9 * out["clips_per_sec"]
  peak = peak_flops(jax.devices()[0], "float32")
  out["achieved_tflops"] = flops / 1e12
  out["mfu"] = flops / peak if peak else None
  out["jax"] = jax.__version__
  out["peak_memory_bytes"], out["peak_memory_source"] = peak_memory_bytes()
  return out


def data_benchmark(args) -> dict[str, Any]:
  from digan_jax.data import bench  # pylint: disable=g-import-not-at-top
  return bench.bench_pipeline(data_dir=args.data_dir, resolution=args.resolution,
                              num_videos=args.num_videos, batch_size=args.batch_size,
                              num_steps=args.num_steps, include_tf=args.tf,
                              keep=args.data_dir is not None)


class _Bound:
  """A jitted step with the static do_r1 bound, exposing .lower(state, batch) like a phase."""

  def __init__(self, fn, do_r1: bool):
    self.fn, self.do_r1 = fn, do_r1

  def lower(self, state, batch):
    return self.fn.lower(state, batch, self.do_r1)


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m digan_jax.benchmark", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)

  train = sub.add_parser("train", help="training-step throughput, per phase and fused")
  train.add_argument("--preset", choices=("paper", "small"), default="paper",
                     help="paper: configs/default.py (128², official widths); small: configs/synthetic.py")
  train.add_argument("--per_device_batch", type=int, default=4)
  train.add_argument("--num_micro_batches", type=int, default=1)
  train.add_argument("--steps", type=int, default=3, help="timed calls per phase / step variant")
  train.add_argument("--warmup", type=int, default=1, help="untimed calls after compilation")
  train.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  train.add_argument("--phases", action=argparse.BooleanOptionalAction, default=True,
                     help="time the G, D and R1 phases as separate compiled functions")
  train.add_argument("--fused", action=argparse.BooleanOptionalAction, default=True,
                     help="time the fused step (with and without R1)")
  train.add_argument("--output", default="", help="also write the JSON to this file")
  train.set_defaults(run=train_benchmark)

  render = sub.add_parser("render", help="generator rendering: seconds per video, frames/s")
  render.add_argument("--preset", choices=("paper", "small"), default="paper")
  render.add_argument("--batch_sizes", default="1,8", help="comma-separated videos per call")
  render.add_argument("--num_frames", type=int, default=16)
  render.add_argument("--repeats", type=int, default=3)
  render.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  render.add_argument("--frames_per_chunk", type=int, default=4,
                      help="frames of every video rendered per lax.map step (0: all at once); "
                           "small chunks keep activations in cache on CPU")
  render.add_argument("--output", default="")
  render.set_defaults(run=render_benchmark)

  i3d = sub.add_parser("i3d", help="I3D forward throughput (FVD features)")
  i3d.add_argument("--batch_size", type=int, default=4)
  i3d.add_argument("--num_frames", type=int, default=16)
  i3d.add_argument("--iters", type=int, default=3)
  i3d.add_argument("--precision", choices=("highest", "default"), default="highest")
  i3d.add_argument("--output", default="")
  i3d.set_defaults(run=i3d_benchmark)

  data = sub.add_parser("data", help="dataset build and input-pipeline throughput")
  data.add_argument("--resolution", type=int, default=128)
  data.add_argument("--num_videos", type=int, default=1000)
  data.add_argument("--batch_size", type=int, default=64)
  data.add_argument("--num_steps", type=int, default=30)
  data.add_argument("--data_dir", default=None, help="build here and keep (default: a temp dir)")
  data.add_argument("--tf", action=argparse.BooleanOptionalAction, default=True,
                    help="also build a TFDS-layout dataset and time the tf.data pipeline")
  data.add_argument("--output", default="")
  data.set_defaults(run=data_benchmark)

  args = parser.parse_args(argv)
  # Library chatter (TFDS "Downloading and preparing ...") goes to stderr: stdout is only the JSON.
  with contextlib.redirect_stdout(sys.stderr):
    result = args.run(args)
  text = json.dumps(result, indent=2, default=float)
  print(text)
  if getattr(args, "output", ""):
    with open(args.output, "w") as f:
      f.write(text + "\n")
  return result


if __name__ == "__main__":
  main()
