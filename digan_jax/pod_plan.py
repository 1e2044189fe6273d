"""A pod plan from AOT reports: step time, videos/s, days and chip-hours to a training length.

  python -m digan_jax.pod_plan --reports=a.json:4,a.json:16,b.json:64 [--r1_from=c.json] \\
      [--total_kimg=25000]

Each `--reports` entry is a `digan_jax.aot` JSON and the chip count to plan for (default: the
compiled topology's). The per-chip program of a data-parallel step depends on the per-chip batch,
not on the chip count (only the gradient all-reduce grows, and it is overlapped with the backward
pass), so a report compiled on 4 chips plans any count at the same per-chip batch: global batch =
per-chip batch x chips. That projection is named in the `basis` column; rows compiled at their own
topology say "compiled".

Step time is the slower of the two compiler estimates: the roofline (FLOPs / peak vs bytes / HBM
bandwidth) and libtpu's per-kernel `estimated_cycles` at the chip's clock. The table also shows
the kernel estimate alone and the MFU each implies (FLOPs of the iteration, R1 amortised, over the
chip's bf16 peak and the time). The lazy R1 iteration
is amortised over `r1_every` from the report's own `iteration`, or else with the R1 overhead ratio
of `--r1_from` (a report that compiled both variants, at the same per-chip batch where possible).
Everything here is an estimate from a CPU host; `benchmark train` on the chips measures it.

`--gpus=H100:8,A100:8` adds GPU rows that no compiler checked: the report's FLOPs per video
(R1 amortised) over the GPU's dense bf16 peak (benchmark/reference.json) at each
`--assumed_mfu`, so the days scale with the assumed MFU and nothing else.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from absl import flags

from digan_jax import cli_flags
from digan_jax.errors import UserError


def _kernel_seconds(entry: dict[str, Any]) -> float | None:
  return entry.get("kernels", {}).get("estimated_seconds")


def _seconds(entry: dict[str, Any]) -> float:
  return max(entry["roofline"]["seconds"], _kernel_seconds(entry) or 0.0)


def amortised(plain: float, lazy: list[float], every: int) -> float:
  """Per-iteration value when each lazy variant replaces the plain iteration once every `every`."""
  every = max(1, int(every))
  return (plain * (every - 1) + sum(lazy)) / every


def r1_overhead(report: dict[str, Any], get=_seconds) -> float:
  """Amortised iteration / plain iteration of a report with both variants, of `get(entry)` (the
  step time by default; e.g. the FLOPs)."""
  fns = report["functions"]
  lazy = [k for k in fns if k.startswith("train_step+")]
  if "train_step" not in fns or not lazy:
    raise UserError(
      "--r1_from needs a report compiled with the lazy variants (no --nolazy_variants)"
    )
  plain = get(fns["train_step"])
  return amortised(plain, [get(fns[k]) for k in lazy], report["r1_every"]) / plain


def row(
  report: dict[str, Any],
  chips: int | None,
  total_kimg: float,
  r1_ratio: float | None,
  r1_flops_ratio: float | None = None,
):
  """One plan row (a dict) for `report` run on `chips` chips. Without a compiled R1 variant the
  step time is scaled by `r1_ratio` and the FLOPs by `r1_flops_ratio` (default: the same)."""
  fns = report["functions"]
  if "train_step" not in fns:
    raise UserError(
      f"report for {report['topology']} has no train_step (compile --functions=train)"
    )
  compiled_chips = report["chip"]["chips"]
  chips = chips or compiled_chips
  per_chip_batch = report["global_batch"] / compiled_chips
  plain = _seconds(fns["train_step"])
  lazy = [k for k in fns if k.startswith("train_step+")]
  if lazy:
    r1_ratio, r1_flops_ratio = r1_overhead(report), r1_overhead(report, lambda e: e["flops"])
  if r1_ratio is None:
    raise UserError(
      f"report for {report['topology']} has no R1 variant; pass --r1_from=<report with both> "
      "or --r1_ratio"
    )
  r1_flops_ratio = r1_ratio if r1_flops_ratio is None else r1_flops_ratio
  seconds = plain * r1_ratio
  flops = fns["train_step"]["flops"] * r1_flops_ratio
  peak = report["chip"].get("peak_flops")
  # The kernel estimate alone (no roofline), for the MFU libtpu's own cost model implies.
  kernel_s = _kernel_seconds(fns["train_step"])
  if kernel_s and lazy:
    estimates = [_kernel_seconds(fns[k]) for k in lazy]
    kernel_s = None if None in estimates else amortised(kernel_s, estimates, report["r1_every"])
  elif kernel_s:
    kernel_s *= r1_ratio
  videos_per_s = per_chip_batch * chips / seconds
  days = total_kimg * 1000 / videos_per_s / 86400
  memory = max(v["memory"]["total_bytes"] for v in fns.values() if "memory" in v)
  mesh = report["mesh"]
  return dict(
    config=_config_label(report),
    chip=report["chip"]["chip"],
    chips=chips,
    global_batch=int(round(per_chip_batch * chips)),
    per_chip_batch=per_chip_batch,
    mesh=f"{mesh.get('data', 1) * chips // compiled_chips} data x {mesh.get('fsdp', 1)} fsdp",
    dtype=report["compute_dtype"],
    remat=report.get("remat", "none"),
    memory_gib=memory / 2**30,
    hbm_gib=report["chip"]["hbm_bytes"] / 2**30,
    step_s=seconds,
    kernel_step_s=kernel_s,
    mfu=flops / peak / seconds if peak else None,
    kernel_mfu=flops / peak / kernel_s if peak and kernel_s else None,
    videos_per_s=videos_per_s,
    days=days,
    chip_hours=days * 24 * chips,
    basis="compiled" if chips == compiled_chips else f"projected from {report['topology']}",
    r1="compiled" if lazy else "ratio from --r1_from",
  )


def _config_label(report: dict[str, Any]) -> str:
  name = str(report.get("config") or "?")
  return name.rsplit("/", 1)[-1].removesuffix(".py")


def flops_per_video(report: dict[str, Any]) -> float:
  """Compiled FLOPs per video of one iteration, the lazy R1 variant amortised over r1_every."""
  fns = report["functions"]
  per_chip_batch = report["global_batch"] / report["chip"]["chips"]
  lazy = [k for k in fns if k.startswith("train_step+")]
  flops = amortised(fns["train_step"]["flops"], [fns[k]["flops"] for k in lazy], report["r1_every"])
  return flops / per_chip_batch


def gpu_row(report, gpu: str, count: int, mfu: float, total_kimg: float) -> dict[str, Any]:
  from digan_jax.benchmark import measure  # pylint: disable=g-import-not-at-top

  peaks = [
    e["flops"]
    for e in measure.reference()["peak_flops"]["entries"]
    if e["device_kind"].lower() == gpu.lower() and e["dtype"] == "bfloat16"
  ]
  if not peaks:
    raise UserError(f"no bfloat16 peak for GPU {gpu!r} in benchmark/reference.json peak_flops")
  videos_per_s = count * peaks[0] * mfu / flops_per_video(report)
  days = total_kimg * 1000 / videos_per_s / 86400
  return dict(
    gpu=gpu,
    count=count,
    assumed_mfu=mfu,
    videos_per_s=videos_per_s,
    days=days,
    gpu_hours=days * 24 * count,
    flops_per_video=flops_per_video(report),
  )


def gpu_markdown(rows: list[dict[str, Any]], total_kimg: float) -> str:
  lines = [
    f"| GPUs | assumed MFU | videos/s | days to {total_kimg:,.0f} kimg | GPU-hours |",
    "|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
      f"| {r['gpu']} × {r['count']} | {r['assumed_mfu']:.0%} (assumed) | {r['videos_per_s']:.0f} "
      f"| {r['days']:.1f} | {r['gpu_hours']:,.0f} |"
    )
  return "\n".join(lines)


def markdown(rows: list[dict[str, Any]], total_kimg: float) -> str:
  head = (
    "| config | chips | global batch | mesh | dtype, remat | per-chip memory | step (s) | MFU | "
    f"kernel estimate (s, MFU) | videos/s | days to {total_kimg:,.0f} kimg | chip-hours | basis |"
    "\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  )
  pct = lambda x: "–" if x is None else f"{x:.1%}"
  lines = [head]
  for r in rows:
    kernel = (
      "–" if r["kernel_step_s"] is None else f"{r['kernel_step_s']:.3f}, {pct(r['kernel_mfu'])}"
    )
    lines.append(
      f"| {r['config']} | {r['chip']} × {r['chips']} | {r['global_batch']} | {r['mesh']} | "
      f"{r['dtype']}, {r['remat']} | {r['memory_gib']:.2f} / {r['hbm_gib']:.0f} GiB | "
      f"{r['step_s']:.3f} | {pct(r['mfu'])} | {kernel} | {r['videos_per_s']:.0f} | "
      f"{r['days']:.1f} | {r['chip_hours']:,.0f} | {r['basis']}; R1 {r['r1']} |"
    )
  return "\n".join(lines)


def define_flags(fv: flags.FlagValues) -> flags.FlagValues:
  flags.DEFINE_list("reports", None, "aot JSON files, each as FILE or FILE:CHIPS", flag_values=fv)
  flags.mark_flag_as_required("reports", flag_values=fv)
  flags.DEFINE_string("r1_from", "", "aot JSON with both iteration variants", flag_values=fv)
  flags.DEFINE_float(
    "r1_ratio",
    None,
    "amortised / plain iteration time to assume where no report has the R1 variant (1.0: the "
    "plain iteration only); rows say it was assumed",
    flag_values=fv,
  )
  flags.DEFINE_float("total_kimg", 25_000, "training length in thousands of videos", flag_values=fv)
  flags.DEFINE_list("gpus", [], "GPU rows as KIND:COUNT (e.g. H100:8), from FLOPs", flag_values=fv)
  flags.DEFINE_list("assumed_mfu", ["0.15", "0.3"], "MFUs assumed for GPU rows", flag_values=fv)
  flags.DEFINE_boolean("json", False, "print the rows as JSON instead of a table", flag_values=fv)
  return fv


def main(argv, fv: flags.FlagValues = flags.FLAGS) -> int:
  cli_flags.reject_positional(argv)
  try:
    source = _load(fv.r1_from) if fv.r1_from else None
    ratio = r1_overhead(source) if source else fv.r1_ratio
    flops_ratio = r1_overhead(source, lambda e: e["flops"]) if source else None
    label = "ratio from --r1_from" if fv.r1_from else f"assumed x{fv.r1_ratio}"
    rows = []
    for spec in fv.reports:
      path, _, chips = spec.partition(":")
      r = row(_load(path), int(chips) if chips else None, fv.total_kimg, ratio, flops_ratio)
      if r["r1"] != "compiled":
        r["r1"] = label
      rows.append(r)
    first = _load(fv.reports[0].partition(":")[0])
    gpus = [
      gpu_row(first, kind, int(count or 1), float(mfu), fv.total_kimg)
      for kind, _, count in (g.partition(":") for g in fv.gpus)
      for mfu in fv.assumed_mfu
    ]
  except (UserError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if fv.json:
    print(json.dumps(dict(tpu=rows, gpu=gpus), indent=1))
  else:
    print(markdown(rows, fv.total_kimg))
    if gpus:
      print(f"\nGPU rows from the FLOPs of {fv.reports[0].partition(':')[0]}, not compiled:\n")
      print(gpu_markdown(gpus, fv.total_kimg))
  return 0


def _load(path: str) -> dict[str, Any]:
  try:
    with open(path) as f:
      report = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise UserError(f"cannot read aot report {path}: {e}") from e
  if not isinstance(report, dict) or "functions" not in report or "chip" not in report:
    raise UserError(f"{path} is not a digan_jax.aot report (no 'functions'/'chip')")
  return with_kernel_seconds(report)


def with_kernel_seconds(report: dict[str, Any]) -> dict[str, Any]:
  """Fills libtpu's estimated seconds from its cycles where the report was compiled before
  benchmark/reference.json had a clock for the chip (the cycles do not depend on it)."""
  from digan_jax.benchmark import measure  # pylint: disable=g-import-not-at-top

  clocks = {
    e["name"]: e.get("tensorcore_clock_hz") for e in measure.reference()["chips"]["entries"]
  }
  clock = report["chip"].get("clock_hz") or clocks.get(report["chip"].get("chip"))
  for entry in report["functions"].values():
    kernels = entry.get("kernels", {})
    if clock and kernels.get("estimated_seconds") is None and kernels.get("estimated_cycles"):
      kernels["estimated_seconds"] = kernels["estimated_cycles"] / clock
  return report


if __name__ == "__main__":
  cli_flags.run_as_program(define_flags, main)
