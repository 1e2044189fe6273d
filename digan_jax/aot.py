"""Ahead-of-time compilation for a TPU topology from any host (MaxText's train_compile, for DIGAN).

  python -m digan_jax.aot --config=configs/taichi128.py --topology=v5e:2x2 \
      [--config.train.global_batch_size=64 --config.mesh.fsdp=4 \
       --config.model.compute_dtype=bfloat16] [--functions=train,render,fvd] [--output=FILE]

Needs libtpu (`pip install libtpu==0.0.42.*` for jax 0.10), no TPU: the topology's devices are
descriptions, the inputs are ShapeDtypeStructs, nothing is allocated or run. It compiles, with the
trainer's own code, every variant of the training iteration (with and without the lazy R1 phase),
the EMA generator's render and the FVD feature graph, and prints JSON per function:

  memory        per-chip argument, output, alias, temp and generated-code bytes; total_bytes (their
                sum, aliased bytes counted once) against the chip's HBM (benchmark/reference.json)
  flops, bytes_accessed
                the compiler's cost analysis per chip and call; compiler_seconds where it is valid
                (libtpu 0.0.42 reports negative estimates for large programs: null then)
  roofline      max(flops / peak bf16, bytes / HBM bandwidth) seconds, its bound (compute or
                memory), the videos/s per chip it implies and the implied MFU (flops / time / peak)
  kernel_roofline
                the same with the bytes that cross kernel boundaries (kernels.bytes) in place of
                the compiler's total, which also counts traffic inside fused kernels (on the
                paper step 10x more): a lower bound on the time, an upper bound on MFU
  collectives   count and result bytes of each collective op in the optimised HLO
  kernels       libtpu's own per-kernel estimates (`estimated_cycles`) summed, in seconds at the
                chip's clock where reference.json has one, and the source ops (network/layer)
                that take most of them, with their bytes; `bytes` (every kernel's operands and
                result) and the sources that move most of them (digan_jax/hlo_profile.py)
  compile_s     seconds this host took to compile it

`iteration` amortises the lazy R1 variant over config.train.r1_every. These are compiler estimates
from the program, not measurements: a real chip adds launch, host and input-pipeline time.
A function that does not fit in HBM is reported, then the command fails naming the per-chip bytes
and the settings that would help.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from ml_collections import config_flags

from digan_jax import cli_flags, fileio, hlo_profile, pod_plan, sharding, target
from digan_jax.benchmark import measure
from digan_jax.errors import ConfigError, UserError

FUNCTIONS = ("train", "render", "fvd")


# ---- the target ----


def topology_devices(name: str) -> list[jax.Device]:
  """The devices of a libtpu topology ('v5e:2x2', 'v5e:16x16', 'v5p:2x2x1', 'v4:2x2x1', ...)."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

  try:
    devices = list(topologies.get_topology_desc(platform="tpu", topology_name=name).devices)
    if len(devices) > _chips(name):
      # One device per TensorCore (v4's default description): JAX on v4 and v5p chips runs one
      # device per chip ("megacore"), and its meshes require it.
      devices = list(
        topologies.get_topology_desc(
          platform="tpu", topology_name=name, chip_config_name="megacore"
        ).devices
      )
    return devices
  except Exception as e:  # libtpu missing, or a name it does not know
    if "lockfile" in str(e):
      raise UserError(
        "another process holds libtpu (one per host by default); on a host without TPUs, where "
        "nothing else needs the chips, set ALLOW_MULTIPLE_LIBTPU_LOAD=1"
      ) from e
    raise UserError(
      f"cannot describe TPU topology {name!r}: {e}. AOT compilation needs libtpu "
      "(pip install 'libtpu==0.0.42.*' for jax 0.10) and a topology name such as v5e:2x2, "
      "v5e:16x16, v5p:2x2x1, v4:2x2x1 or v6e:2x2"
    ) from e


def _chips(topology: str) -> int:
  return math.prod(int(x) for x in topology.split(":")[-1].split("x"))


def chip_facts(devices: list[jax.Device], topology: str) -> dict[str, Any]:
  """HBM, bandwidth and peak per device (a chip, or one core where the topology lists cores)."""
  kind = devices[0].device_kind
  chips = _chips(topology)
  per_chip = max(1, len(devices) // chips)
  for entry in measure.reference()["chips"]["entries"]:
    if entry["device_kind"].lower() in kind.lower():
      return dict(
        device_kind=kind,
        chip=entry["name"],
        chips=chips,
        devices_per_chip=per_chip,
        hbm_bytes=entry["hbm_bytes"] // per_chip,
        hbm_bytes_per_s=entry["hbm_bytes_per_s"] / per_chip,
        peak_flops=entry["peak_flops_bf16"] / per_chip,
        clock_hz=entry.get("tensorcore_clock_hz"),
        source=entry["source"],
      )
  raise UserError(f"no HBM/peak entry for device kind {kind!r} in benchmark/reference.json chips")


# ---- what a compiled executable says ----


def report(
  compiled, chip: dict[str, Any], items_per_device: float, text: str | None = None
) -> dict[str, Any]:
  """Memory, cost, roofline and collectives of one compiled function, per device (`text`: its
  optimised HLO, when the caller already has it; printing a paper-size module takes seconds)."""
  mem = compiled.memory_analysis()
  memory = {
    k: int(getattr(mem, f"{k}_size_in_bytes"))
    for k in ("argument", "output", "alias", "temp", "generated_code")
  }
  memory["total_bytes"] = (
    memory["argument"]
    + memory["output"]
    - memory["alias"]
    + memory["temp"]
    + memory["generated_code"]
  )
  memory["hbm_bytes"] = chip["hbm_bytes"]
  memory["hbm_fraction"] = memory["total_bytes"] / chip["hbm_bytes"]
  memory["fits"] = memory["total_bytes"] <= chip["hbm_bytes"]
  text = compiled.as_text() if text is None else text
  cost = measure.xla_cost(compiled)
  flops, nbytes = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
  compiler_s = cost.get("optimal_seconds")
  compute_s, memory_s = flops / chip["peak_flops"], nbytes / chip["hbm_bytes_per_s"]
  roofline = _roofline(compute_s, memory_s)
  seconds = roofline["seconds"]
  kernels = kernel_estimate(text, chip)
  return dict(
    memory=memory,
    flops=flops,
    bytes_accessed=nbytes,
    compiler_seconds=float(compiler_s) if compiler_s is not None and compiler_s > 0 else None,
    roofline=roofline
    | dict(
      compute_seconds=compute_s,
      items_per_device=items_per_device,
      videos_per_s_per_device=items_per_device / seconds if seconds else None,
    ),
    collectives=hlo_profile.collectives(text),
    kernels=kernels,
    kernel_roofline=_roofline(compute_s, kernels["bytes"] / chip["hbm_bytes_per_s"]),
  )


def _roofline(compute_s: float, memory_s: float) -> dict[str, Any]:
  seconds = max(compute_s, memory_s)
  return dict(
    seconds=seconds,
    memory_seconds=memory_s,
    bound="compute" if compute_s >= memory_s else "memory",
    mfu=compute_s / seconds if seconds else None,
  )


def kernel_estimate(hlo_text: str, chip: dict[str, Any], top: int = 12) -> dict[str, Any]:
  """The compiler's own per-kernel time estimates (TPU `estimated_cycles`), summed and at the
  chip's clock where known, and the source ops that take most of them (with their bytes)."""
  found = hlo_profile.instructions(hlo_text)
  cycles = hlo_profile.by_source(found, "cycles", top, depth=5)
  nbytes = hlo_profile.by_source(found, "bytes", top, depth=5)
  clock = chip.get("clock_hz")
  return dict(
    estimated_cycles=cycles["total"],
    estimated_seconds=cycles["total"] / clock if clock and cycles["total"] else None,
    top_by_cycles=cycles["top"],
    bytes=nbytes["total"],
    top_by_bytes=nbytes["top"],
  )


def _compile(fn: Callable[[], Any]) -> tuple[Any, float]:
  start = time.perf_counter()
  compiled = fn().compile()
  return compiled, time.perf_counter() - start


# ---- the functions the trainer compiles ----


def _abstract(tree, sharding_):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding_), tree)


def train_functions(config, mesh, lazy_variants: bool = True):
  """(name, lower thunk, videos per device) for every variant of the training iteration (only the
  one without lazy phases when not lazy_variants)."""
  from digan_jax import steps as steps_lib  # pylint: disable=g-import-not-at-top

  steps = steps_lib.DiganSteps(config, mesh)
  batch = steps.abstract_batch()
  step = steps.jit_train_step()
  per_device = steps.global_batch / mesh.size
  out = []
  for lazy in steps.step_variants() if lazy_variants else ((),):
    name = "train_step" + "".join(f"+{p}" for p in lazy)
    out.append((name, lambda lazy=lazy: step.lower(steps.abstract_state, batch, lazy), per_device))
  return steps, out


def render_function(config, mesh, steps):
  """The EMA generator rendering config.sample.num_frames frames, one video per device."""
  from digan_jax import sampling  # pylint: disable=g-import-not-at-top

  gcfg, num = steps.gcfg, mesh.size
  frames = int(config.sample.num_frames)
  fn = jax.jit(
    lambda g, zc, zm, t: sampling.render(
      steps.generator, g, zc, zm, t, frames_per_chunk=min(16, frames)
    ),
    out_shardings=sharding.batch_sharding(mesh, 5),
  )
  rows = sharding.batch_sharding(mesh, 2)
  args = (
    steps.abstract_state.g_ema,
    jax.ShapeDtypeStruct((num, gcfg.z_dim), jnp.float32, sharding=rows),
    jax.ShapeDtypeStruct((num, gcfg.motion_dim), jnp.float32, sharding=rows),
    jax.ShapeDtypeStruct((num, frames), jnp.float32, sharding=rows),
  )
  return "render", lambda: fn.lower(*args), 1.0


def fvd_function(config, mesh, steps):
  """The fake-feature graph of the first scheduled protocol (render, uint8, resize, I3D)."""
  from digan_jax.evaluation import features, schedule  # pylint: disable=g-import-not-at-top

  scheds = schedule.schedules(config)
  if not scheds:
    raise UserError("--functions=fvd needs an evaluation protocol in config.eval")
  protocol = scheds[0].protocol
  fn = features._fake_fn(  # pylint: disable=protected-access
    steps.generator,
    tuple(protocol.fake_times().tolist()),
    protocol.fake_uint8,
    protocol.resize,
    16,
    mesh,
  )
  replicated = sharding.replicated(mesh)
  batch = sharding.padded_batch(mesh, int(config.eval.batch_size))
  seed = jax.ShapeDtypeStruct((), jnp.uint32, sharding=replicated)
  args = (
    steps.abstract_state.g_ema,
    _abstract(features.i3d_variables(), replicated),
    jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=sharding.batch_sharding(mesh)),
    seed,
    seed,
  )
  return f"fvd_features[{protocol.name}]", lambda: fn.lower(*args), batch / mesh.size


# ---- the command ----


def compile_for_topology(
  config,
  topology: str,
  functions=FUNCTIONS,
  hlo_dir: str | None = None,
  log=print,
  lazy_variants: bool = True,
  on_function: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
  """The JSON report of `functions` compiled for `topology` (see the module docstring).

  `on_function(result)` runs after each function with the report so far: the paper-size R1
  variant compiles for tens of minutes on a small host, and what finished before it is kept."""
  unknown = set(functions) - set(FUNCTIONS)
  if unknown:
    raise UserError(f"unknown --functions {sorted(unknown)}; choose from {', '.join(FUNCTIONS)}")
  devices = topology_devices(topology)
  chip = chip_facts(devices, topology)
  try:
    mesh = sharding.make_mesh(config.mesh, devices)
    batch_devices = sharding.batch_devices(mesh)
    sharding.batch_size_per_device(mesh, int(config.train.global_batch_size))
  except ValueError as e:
    raise UserError(f"topology {topology} ({len(devices)} devices): {e}") from e
  result: dict[str, Any] = dict(
    topology=topology,
    num_devices=len(devices),
    chip=chip,
    mesh=dict(mesh.shape),
    global_batch=int(config.train.global_batch_size),
    per_device_batch=int(config.train.global_batch_size) // batch_devices,
    compute_dtype=str(config.model.compute_dtype),
    remat=_remat_label(config.model),
    r1_every=int(config.train.r1_every),
    host=measure.run_fields(),
    functions={},
  )
  with target.compiling_for("tpu"):
    try:
      steps, todo = train_functions(config, mesh, lazy_variants)
    except ConfigError as e:
      raise UserError(f"topology {topology} ({len(devices)} devices): {e}") from e
    todo = todo if "train" in functions else []
    if "render" in functions:
      todo.append(render_function(config, mesh, steps))
    if "fvd" in functions:
      todo.append(fvd_function(config, mesh, steps))
    for name, lower, items in todo:
      log(f"compiling {name} for {topology} ...")
      compiled, seconds = _compile(lower)
      text = compiled.as_text()
      entry = report(compiled, chip, items, text)
      entry["compile_s"] = seconds
      result["functions"][name] = entry
      log(
        f"  {seconds:.0f} s; {entry['memory']['total_bytes'] / 2**30:.2f} GiB per device, "
        f"{entry['flops'] / 1e12:.3g} TFLOP, {entry['bytes_accessed'] / 1e9:.3g} GB"
      )
      if hlo_dir:
        os.makedirs(hlo_dir, exist_ok=True)
        with open(os.path.join(hlo_dir, f"{name}.hlo.txt"), "w") as f:
          f.write(text)
      if on_function:
        on_function(result)
  variants = {k: v for k, v in result["functions"].items() if k.startswith("train_step")}
  if len(variants) > 1:
    plain = variants["train_step"]
    lazy = [v for k, v in variants.items() if k != "train_step"]
    per_iteration = lambda get: pod_plan.amortised(
      get(plain), [get(v) for v in lazy], result["r1_every"]
    )
    seconds = per_iteration(lambda v: v["roofline"]["seconds"])
    flops = per_iteration(lambda v: v["flops"])
    per_device = plain["roofline"]["items_per_device"]
    estimates = [v["kernels"]["estimated_seconds"] for v in (plain, *lazy)]
    estimated = (
      None if None in estimates else per_iteration(lambda v: v["kernels"]["estimated_seconds"])
    )
    result["iteration"] = dict(
      seconds=seconds,
      estimated_seconds=estimated,
      videos_per_s_per_device=per_device / seconds,
      kimg_per_day=per_device * len(devices) / seconds * 86400 / 1000,
      mfu=flops / chip["peak_flops"] / seconds,
      estimated_mfu=flops / chip["peak_flops"] / estimated if estimated else None,
    )
  return result


def _remat_label(model) -> str:
  g, d = model.generator_remat, model.discriminator_remat
  return "none" if g == d == "none" else f"G {g}, D {d}"


def too_big(result: dict[str, Any]) -> str | None:
  """The error for functions that do not fit in HBM, or None."""
  over = {k: v["memory"] for k, v in result["functions"].items() if not v["memory"]["fits"]}
  if not over:
    return None
  listed = "; ".join(
    f"{k} needs {m['total_bytes'] / 2**30:.2f} GiB per device (temp {m['temp'] / 2**30:.2f})"
    for k, m in over.items()
  )
  return (
    f"does not fit in {result['chip']['hbm_bytes'] / 2**30:.1f} GiB of HBM per device on "
    f"{result['topology']}: {listed}. Lower the per-device batch (per_device_batch="
    f"{result['per_device_batch']}: fewer --config.train.global_batch_size or more chips), "
    "raise --config.train.num_micro_batches, use --config.model.compute_dtype=bfloat16, or "
    "rematerialise (--config.model.generator_remat=nothing_saveable, same for discriminator_remat)"
  )


def define_flags(fv: flags.FlagValues) -> flags.FlagValues:
  config_flags.DEFINE_config_file(
    "config", None, "configuration file (configs/*.py)", flag_values=fv, lock_config=True
  )
  flags.mark_flag_as_required("config", flag_values=fv)
  flags.DEFINE_string(
    "topology", None, "libtpu topology, e.g. v5e:2x2 or v5e:16x16", flag_values=fv
  )
  flags.mark_flag_as_required("topology", flag_values=fv)
  flags.DEFINE_list("functions", list(FUNCTIONS), "what to compile", flag_values=fv)
  flags.DEFINE_boolean(
    "lazy_variants",
    True,
    "also compile the iteration with the lazy R1 phase (--nolazy_variants: the plain one only)",
    flag_values=fv,
  )
  flags.DEFINE_string("output", "", "also write the JSON to this file", flag_values=fv)
  flags.DEFINE_string("hlo_dir", "", "also write each optimised HLO module here", flag_values=fv)
  return fv


def main(argv, fv: flags.FlagValues = flags.FLAGS) -> int:
  cli_flags.reject_positional(argv)
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")  # quiets a libtpu host warning
  log = lambda msg: print(msg, file=sys.stderr, flush=True)
  config_name = config_flags.get_config_filename(fv["config"])

  def dump(result) -> str:
    text = json.dumps(
      dict(result, config=config_name), indent=2, default=lambda x: float(np.asarray(x))
    )
    if fv.output:  # rewritten after every function, atomically: a killed run keeps what finished
      fileio.write_bytes(fv.output, (text + "\n").encode())
    return text

  try:
    with contextlib.redirect_stdout(sys.stderr):
      result = compile_for_topology(
        fv.config, fv.topology, fv.functions, fv.hlo_dir or None, log, fv.lazy_variants, dump
      )
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(dump(result))
  message = too_big(result)
  if message:
    print(f"error: {message}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  cli_flags.run_as_program(define_flags, main)
