"""The one timing helper of every subcommand, and what the reports share: XLA FLOPs, peak memory,
device peaks and reference figures (reference.json). Field names: see the package docstring."""

from __future__ import annotations

import functools
import json
import pathlib
import resource
import time
from typing import Any, Callable

import jax
import numpy as np

REFERENCE_FILE = pathlib.Path(__file__).with_name("reference.json")


@functools.cache
def reference() -> dict[str, Any]:
  """reference.json: device peaks and other implementations' timings, each with its source."""
  return json.loads(REFERENCE_FILE.read_text())


def peak_flops(device, dtype: str) -> float | None:
  """Dense peak FLOP/s of one device for a compute dtype; None where reference.json has none."""
  kind = device.device_kind.lower()
  for entry in reference()["peak_flops"]["entries"]:
    if entry["device_kind"].lower() in kind and entry["dtype"] in (dtype, "any"):
      return float(entry["flops"])
  return None


def peak_memory() -> dict[str, Any]:
  """peak_bytes (max over local devices, or the process's peak RSS where devices report none)."""
  stats = [d.memory_stats() for d in jax.local_devices()]
  if all(s and "peak_bytes_in_use" in s for s in stats):
    return dict(
      peak_bytes=max(s["peak_bytes_in_use"] for s in stats),
      peak_bytes_source="device memory_stats peak_bytes_in_use (max over devices)",
    )
  return dict(
    peak_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    peak_bytes_source="process peak RSS",
  )


def run_fields() -> dict[str, Any]:
  """Where a run happened (the first fields of every report)."""
  device = jax.devices()[0]
  return dict(
    platform=device.platform,
    device_kind=device.device_kind,
    num_devices=jax.device_count(),
    num_processes=jax.process_count(),
    jax=jax.__version__,
  )


def xla_cost(compiled) -> dict[str, float]:
  """XLA's cost analysis of a compiled executable per device ({} where none is reported)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
    cost = cost[0] if cost else None
  return dict(cost or {})


def xla_flops(compiled) -> float | None:
  """FLOPs of one call of a compiled executable per device (XLA cost analysis), if reported."""
  cost = xla_cost(compiled)
  return float(cost["flops"]) if "flops" in cost else None


def rates(
  step_s: float, items: int | None = None, flops: float | None = None, peak: float | None = None
) -> dict[str, Any]:
  """items_per_s, tflops_per_s and mfu of `step_s` seconds per call (None where unknown)."""
  out: dict[str, Any] = {}
  if items is not None:
    out.update(items=items, items_per_s=items / step_s)
  if flops is not None:
    out.update(
      flops=flops, tflops_per_s=flops / step_s / 1e12, mfu=flops / step_s / peak if peak else None
    )
  return out


def measure(
  fn: Callable,
  args: tuple = (),
  *,
  repeats: int,
  warmup: int = 0,
  items: int | None = None,
  peak: float | None = None,
  static: tuple = (),
  carry: Callable | None = None,
) -> tuple[dict[str, Any], tuple, Any]:
  """Times fn(*args); returns (fields, args of the next call, output of the last call).

  A jax.jit function (anything with `.lower`) is first lowered and compiled for `args` (plus the
  static arguments `static`, which the executable then omits): compile_s, and flops from XLA's
  cost analysis. Then `warmup` untimed calls and `repeats` timed ones, each blocked until its
  output is ready. carry(args, out) gives the next call's args (threads a donated train state).
  """
  fields: dict[str, Any] = {}
  if hasattr(fn, "lower"):
    start = time.perf_counter()
    fn = fn.lower(*args, *static).compile()
    fields["compile_s"] = time.perf_counter() - start
    flops = xla_flops(fn)
  else:
    flops = None
  times, out = [], None
  for i in range(warmup + repeats):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    if i >= warmup:
      times.append(time.perf_counter() - start)
    if carry is not None:
      args = carry(args, out)
  step_s = float(np.mean(times))
  fields.update(step_s=step_s, step_s_min=float(np.min(times)), step_s_all=times)
  fields.update(rates(step_s, items, flops, peak))
  if "compile_s" in fields and "flops" not in fields:
    fields["flops"] = None
  return fields, args, out


def amortised(
  parts: list[tuple[dict[str, Any], float]], items: int | None = None, peak: float | None = None
) -> dict[str, Any]:
  """Weighted sum of measurements [(fields, share of iterations)]: step_s, flops and rates."""
  step_s = sum(m["step_s"] * w for m, w in parts)
  flops = [m.get("flops") for m, _ in parts]
  total = None if None in flops else sum(f * w for f, (_, w) in zip(flops, parts))
  return dict(step_s=step_s, **rates(step_s, items, total, peak))
