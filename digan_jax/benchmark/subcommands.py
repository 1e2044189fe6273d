"""The four measurements: each takes the config and the parsed options, returns the report's
subcommand fields (the CLI adds the run fields and peak memory). Field names: the package docstring."""

from __future__ import annotations

import collections
import functools
import math
import os
import shutil
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from digan_jax.benchmark.measure import amortised, measure, peak_flops, reference


def _thread_state(args, out):
  """The next call's (state, batch): the output state (the input one was donated)."""
  return out[0], args[1]


def _random_batch(steps, mesh, seed: int = 0):
  from digan_jax import sharding  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed + jax.process_index())
  n, r = steps.global_batch // jax.process_count(), steps.resolution
  local = {
    "frames": rng.uniform(-1, 1, (n, 2, r, r, 3)).astype(np.float32),
    "delta_t": (rng.integers(0, 16, (n,)) / 15).astype(np.float32),
  }
  if steps.c_dim:
    local["label"] = rng.integers(0, steps.c_dim, (n,)).astype(np.int32)
  return sharding.global_batch_from_local(local, mesh)


def _matches(when: dict[str, Any], config, facts: dict[str, Any]) -> bool:
  """Whether a reference entry's `when` holds: keys of `facts`, else dotted config paths."""

  def value(key):
    if key in facts:
      return facts[key]
    node = config
    for part in key.split("."):
      if part not in node:
        return None
      node = node[part]
    return node

  return all(value(k) == v for k, v in when.items())


def _iteration(parts, items: int, peak) -> dict[str, Any]:
  out = amortised(parts, items, peak)
  out.update(steps_per_s=1.0 / out["step_s"], kimg_per_day=items / out["step_s"] * 86400 / 1000)
  return out


def train(config, opts) -> dict[str, Any]:
  """The phases of `steps.phases` and the fused step variants, compiled and timed separately."""
  from digan_jax import sharding, steps as steps_lib  # pylint: disable=g-import-not-at-top

  if not (opts.phases or opts.fused):
    raise ValueError("nothing to time: --nophases and --nofused")
  mesh = sharding.make_mesh(config.mesh)

  def build():
    steps = steps_lib.DiganSteps(config, mesh)
    return steps, steps.create_train_state()

  init, _, (steps, state) = measure(build, repeats=1)
  batch, items = _random_batch(steps, mesh), steps.global_batch
  dtype = config.model.compute_dtype
  peak = peak_flops(jax.devices()[0], dtype)
  timing = dict(
    repeats=opts.repeats, warmup=opts.warmup, items=items, peak=peak, carry=_thread_state
  )
  out: dict[str, Any] = dict(
    resolution=steps.resolution,
    compute_dtype=dtype,
    global_batch=items,
    per_device_batch=items // jax.device_count(),  # the config checks divide it
    num_micro_batches=int(config.train.num_micro_batches),
    r1_every=int(config.train.r1_every),
    init_s=init["step_s"],
    peak_flops=peak,
  )
  iteration: dict[str, Any] = {}

  if opts.phases:
    out["phases"] = {}
    for p in steps.phases:
      m, (state, batch), _ = measure(steps.jit_phase(p.name), (state, batch), **timing)
      out["phases"][p.name] = dict(every=p.every, **m)
    iteration["phases"] = _iteration(
      [(out["phases"][p.name], 1 / p.every) for p in steps.phases], items, peak
    )
  if opts.fused:
    period = math.lcm(*(p.every for p in steps.phases))
    counts = collections.Counter(steps.lazy_phases(s) for s in range(period))
    step_fn = steps.jit_train_step()
    out["variants"] = {}
    for lazy in steps.step_variants():
      m, (state, batch), _ = measure(step_fn, (state, batch), static=(lazy,), **timing)
      out["variants"]["_".join(("step",) + lazy)] = dict(
        lazy=list(lazy), share=counts[lazy] / period, **m
      )
    iteration["variants"] = _iteration(
      [(m, m["share"]) for m in out["variants"].values()], items, peak
    )
  out["amortised"] = iteration
  out["iteration_from"] = "variants" if opts.fused else "phases"
  out["iteration_s"] = out["amortised"][out["iteration_from"]]["step_s"]

  facts = dict(platform=jax.devices()[0].platform, per_device_batch=out["per_device_batch"])
  names = {p.name for p in steps.phases}
  for ref in reference()["train"]["entries"]:
    if opts.phases and set(ref["phase_s"]) == names and _matches(ref["when"], config, facts):
      ref_s = ref["phase_s"]
      ref_it = sum(ref_s[p.name] / p.every for p in steps.phases)
      speedup = {p: ref_s[p] / out["phases"][p]["step_s"] for p in ref_s}
      out["reference"] = dict(
        name=ref["name"],
        source=ref["source"],
        phase_s=ref_s,
        iteration_s=ref_it,
        speedup=dict(speedup, iteration=ref_it / out["iteration_s"]),
      )
      break
  return out


def render(config, opts) -> dict[str, Any]:
  """The config's generator (fresh init, config.sample.num_frames frames per video), one jitted
  call per batch of whole videos."""
  from digan_jax import sampling  # pylint: disable=g-import-not-at-top
  from digan_jax.models import factory  # pylint: disable=g-import-not-at-top
  from digan_jax.models.generator import Generator  # pylint: disable=g-import-not-at-top

  gcfg = factory.generator_config(config.model)
  dtype = config.model.compute_dtype
  generator = Generator(gcfg, dtype=factory.compute_dtype(config.model))
  labels = lambda b: jax.nn.one_hot(jnp.arange(b) % gcfg.c_dim, gcfg.c_dim) if gcfg.c_dim else None
  variables = jax.jit(generator.init)(
    jax.random.key(0),
    jnp.zeros((1, gcfg.z_dim)),
    jnp.zeros((1, gcfg.motion_dim)),
    jnp.zeros((1,)),
    labels(1),
  )
  num_frames = int(config.sample.num_frames)
  times = sampling.sample_times(num_frames, 0.0, float(config.sample.t_end))
  chunk = opts.frames_per_chunk or num_frames
  fn = jax.jit(functools.partial(sampling.render, generator, frames_per_chunk=chunk))
  peak = peak_flops(jax.devices()[0], dtype)
  out: dict[str, Any] = dict(
    resolution=gcfg.resolution,
    num_frames=num_frames,
    compute_dtype=dtype,
    frames_per_chunk=chunk,
    peak_flops=peak,
    batches=[],
  )
  for b in opts.batch_sizes:
    b = int(b)
    args = (
      variables,
      sampling.latents(0, b, gcfg.z_dim),
      sampling.latents(1, b, gcfg.motion_dim),
      times,
      labels(b),
    )
    m, _, _ = measure(fn, args, repeats=opts.repeats, warmup=opts.warmup, items=b, peak=peak)
    out["batches"].append(dict(batch=b, frames_per_s=m["items_per_s"] * num_frames, **m))
  return out


def i3d(config, opts) -> dict[str, Any]:
  """The Flax I3D forward pass of FVD on random clips: config.eval.batch_size clips of
  config.data.num_frames frames at 224x224, float32."""
  from digan_jax.evaluation import i3d as i3d_lib, i3d_weights  # pylint: disable=g-import-not-at-top

  _, variables = i3d_weights.load_i3d(None, precision=opts.precision)
  b, t, size = int(config.eval.batch_size), int(config.data.num_frames), i3d_lib.INPUT_SIZE
  videos = jax.random.uniform(jax.random.key(0), (b, t, size, size, 3), jnp.float32, -1.0, 1.0)
  fn = jax.jit(functools.partial(i3d_lib.i3d_logits, precision=opts.precision))
  peak = peak_flops(jax.devices()[0], "float32")
  m, _, _ = measure(
    fn, (variables, videos), repeats=opts.repeats, warmup=opts.warmup, items=b, peak=peak
  )
  return dict(
    batch_size=b,
    num_frames=t,
    resolution=size,
    precision=opts.precision,
    peak_flops=peak,
    forward=m,
    flops_per_item=None if m["flops"] is None else m["flops"] / b,
  )


def _dir_bytes(path) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def data(config, opts) -> dict[str, Any]:
  """Input pipelines at the config's resolution, clip length, clip sampling and global batch:
  in-memory synthetic videos through the NumPy pipeline; with --tf also the synthetic TFDS build
  (into --data_dir, kept, or a temporary directory) and the tf.data pipeline over it."""
  from digan_jax.data import pipeline, synthetic_videos  # pylint: disable=g-import-not-at-top

  resolution = int(config.model.generator.resolution)
  num_videos = opts.num_videos or int(config.data.synthetic_num_videos)
  batch, num_frames = int(config.train.global_batch_size), int(config.data.num_frames)
  dc = config.data
  clips = dict(
    frame_stride=dc.frame_stride,
    clip_hop=dc.clip_hop,
    policy=dc.clip_sampling,
    random_flip=dc.mirror,
  )
  timing = dict(repeats=opts.repeats, warmup=opts.warmup, items=batch)
  out: dict[str, Any] = dict(
    resolution=resolution,
    num_videos=num_videos,
    num_frames=num_frames,
    batch_size=batch,
    cpu_count=os.cpu_count(),
  )

  out["generate"], _, videos = measure(
    lambda: synthetic_videos.generate(num_videos, resolution, seed=0), repeats=1, items=num_videos
  )
  iterator = pipeline.make_numpy_train_iterator(
    videos.videos, videos.labels, batch, num_frames, seed=0, **clips
  )
  out["numpy"], _, _ = measure(lambda: next(iterator), **timing)
  del videos, iterator
  if not opts.tf:
    return out

  from digan_jax.data import prepare  # pylint: disable=g-import-not-at-top

  data_dir = opts.data_dir or tempfile.mkdtemp(prefix="digan_bench_")
  try:
    out["build"], _, (name, _) = measure(
      lambda: prepare.prepare_synthetic(data_dir, resolution, num_videos=num_videos, num_test=0),
      repeats=1,
      items=num_videos,
    )
    out.update(dataset=name, dataset_bytes=_dir_bytes(os.path.join(data_dir, name)))
    iterator = pipeline.make_train_iterator(
      data_dir, name, "train", batch, num_frames, seed=0, **clips
    )
    out["tf"], _, _ = measure(lambda: next(iterator), **timing)
  finally:
    if not opts.data_dir:
      shutil.rmtree(data_dir, ignore_errors=True)
  return out


SUBCOMMANDS = {"train": train, "render": render, "i3d": i3d, "data": data}
