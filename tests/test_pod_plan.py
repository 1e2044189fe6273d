"""pod_plan: days and chip-hours from AOT reports, projected over chip counts at a per-chip batch."""

import json

import pytest

from digan_jax import pod_plan


def _entry(roofline_s, estimated_s, total_bytes=2**30, flops=1e12):
  return dict(
    roofline=dict(seconds=roofline_s),
    kernels=dict(estimated_seconds=estimated_s),
    memory=dict(total_bytes=total_bytes),
    flops=flops,
  )


def _report(with_r1=True):
  functions = {"train_step": _entry(0.10, 0.08)}
  if with_r1:
    functions["train_step+r1"] = _entry(0.20, 0.26, 3 * 2**30, flops=3e12)
  return dict(
    config="configs/taichi128.py",
    topology="v5e:2x2",
    chip=dict(chip="v5e", chips=4, hbm_bytes=16 * 2**30, peak_flops=100e12),
    global_batch=64,
    mesh={"data": 4, "fsdp": 1},
    compute_dtype="bfloat16",
    r1_every=16,
    functions=functions,
  )


def test_row_projects_the_per_chip_program_over_chips():
  report = _report()
  # The slower estimate of each variant (0.10 plain, 0.26 with R1), R1 once every 16 iterations.
  step = (0.10 * 15 + 0.26) / 16
  assert pod_plan.r1_overhead(report) == pytest.approx(step / 0.10)
  here = pod_plan.row(report, None, 25_000, None)
  assert here["basis"] == "compiled" and here["global_batch"] == 64 and here["chips"] == 4
  assert here["step_s"] == pytest.approx(step)
  assert here["videos_per_s"] == pytest.approx(64 / step)
  assert here["days"] == pytest.approx(25e6 / (64 / step) / 86400)
  assert here["chip_hours"] == pytest.approx(here["days"] * 24 * 4)
  assert here["memory_gib"] == 3.0 and here["mesh"] == "4 data x 1 fsdp"
  assert here["config"] == "taichi128"
  flops = (1e12 * 15 + 3e12) / 16  # R1 amortised in the FLOPs as in the time
  assert here["mfu"] == pytest.approx(flops / 100e12 / step)
  kernel_step = (0.08 * 15 + 0.26) / 16  # libtpu's estimate alone
  assert here["kernel_step_s"] == pytest.approx(kernel_step)
  assert here["kernel_mfu"] == pytest.approx(flops / 100e12 / kernel_step)
  big = pod_plan.row(report, 64, 25_000, None)  # 16 videos per chip on 64 chips
  assert big["global_batch"] == 1024 and big["mesh"] == "64 data x 1 fsdp"
  assert big["basis"] == "projected from v5e:2x2"
  assert big["days"] == pytest.approx(here["days"] / 16)
  assert big["chip_hours"] == pytest.approx(here["chip_hours"])  # same work per video


def test_plain_only_report_needs_an_r1_ratio(tmp_path):
  plain = _report(with_r1=False)
  with pytest.raises(pod_plan.UserError, match="--r1_from"):
    pod_plan.row(plain, None, 25_000, None)
  ratio = pod_plan.r1_overhead(_report())
  r = pod_plan.row(plain, 16, 25_000, ratio)
  assert r["step_s"] == pytest.approx(0.10 * ratio) and r["r1"] == "ratio from --r1_from"
  assert r["kernel_step_s"] == pytest.approx(0.08 * ratio)
  flops_ratio = pod_plan.r1_overhead(_report(), lambda e: e["flops"])
  assert flops_ratio == pytest.approx((15 + 3) / 16)
  r = pod_plan.row(plain, 16, 25_000, ratio, flops_ratio)
  assert r["mfu"] == pytest.approx(1e12 * flops_ratio / 100e12 / r["step_s"])
  a, b = tmp_path / "a.json", tmp_path / "b.json"
  a.write_text(json.dumps(plain))
  b.write_text(json.dumps(_report()))
  argv = ["pod_plan", f"--reports={b},{a}:16", f"--r1_from={b}", "--gpus=H100:8"]
  assert pod_plan_main(argv) == 0
  assert pod_plan_main(["pod_plan", f"--reports={b}", "--gpus=TPU9000:8"]) == 2
  assert pod_plan_main(["pod_plan", f"--reports={a}"]) == 2  # no R1 anywhere
  assert pod_plan_main(["pod_plan", f"--reports={a}", "--r1_ratio=1.0", "--json"]) == 0
  (tmp_path / "bad.json").write_text("{}")
  assert pod_plan_main(["pod_plan", f"--reports={tmp_path / 'bad.json'}"]) == 2


def test_gpu_rows_follow_flops_and_the_assumed_mfu():
  report = _report()
  for name, entry in report["functions"].items():
    entry["flops"] = 1.6e12 * 16 if name == "train_step" else 3.2e12 * 16  # per chip, 16 videos
  per_video = (1.6e12 * 15 + 3.2e12) / 16
  assert pod_plan.flops_per_video(report) == pytest.approx(per_video)
  r = pod_plan.gpu_row(report, "H100", 8, 0.25, 25_000)
  assert r["videos_per_s"] == pytest.approx(8 * 989e12 * 0.25 / per_video)
  assert r["gpu_hours"] == pytest.approx(25e6 / r["videos_per_s"] / 3600 * 8)


def pod_plan_main(argv):
  from digan_jax import cli_flags

  return cli_flags.run_in_process(pod_plan.define_flags, pod_plan.main, argv)


def test_kernel_seconds_from_cycles_and_the_reference_clock(tmp_path):
  """A report compiled before reference.json had a v4 clock gets its kernel seconds at load."""
  report = _report(with_r1=False)
  report["chip"].update(chip="v4", peak_flops=275e12)
  report["functions"]["train_step"]["kernels"] = dict(
    estimated_seconds=None, estimated_cycles=2.1e8
  )
  path = tmp_path / "v4.json"
  path.write_text(json.dumps(report))
  loaded = pod_plan._load(str(path))  # pylint: disable=protected-access
  seconds = loaded["functions"]["train_step"]["kernels"]["estimated_seconds"]
  assert seconds == pytest.approx(2.1e8 / 1.05e9)
  r = pod_plan.row(loaded, None, 25_000, 1.0)
  assert r["kernel_step_s"] == pytest.approx(0.2)
  assert r["step_s"] == pytest.approx(0.2)  # slower than the 0.10 s roofline
