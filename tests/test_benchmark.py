"""Smoke runs of `python -m digan_jax.benchmark` (the README's speed numbers come from it).

Every subcommand runs end to end on a config with small settings and must print and write
(--output) the same valid JSON, with the shared measurement fields (compile_s, step_s, step_s_min,
step_s_all, items, items_per_s, flops, tflops_per_s, mfu) positive, finite and consistent.

`train` is the exception in size: its real phases take minutes to compile even for the tiny test
networks (measured on the 2-core CPU beside another job: ~25 s per phase, 37 s / 60 s for the
fused step without / with R1, ~200 s in all), so here it runs the whole benchmark harness (flag and
config parsing, mesh, real train-state init, random sharded batch, the phase table, the lazy-phase
schedule, lower/compile/warm-up/timing, XLA cost analysis, the JSON and its arithmetic) on the real
`DiganSteps` machinery (its `_jit` shardings and donation, `train_step` with its variants, the EMA
phase) with `run_phase` replaced by a cheap function and the tiny test networks in place of the
config's.
"""

import importlib
import json
import math
import os
import subprocess
import sys
import types

import jax.numpy as jnp
import pytest
import tiny_digan

from digan_jax import benchmark
from digan_jax.benchmark import cli, measure

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEASUREMENT = ("step_s", "step_s_min", "items_per_s")


def _positive(value, name):
  assert isinstance(value, (int, float)) and not isinstance(value, bool), (name, value)
  assert math.isfinite(value) and value > 0, (name, value)


def _check_measurement(m, name, repeats, items, compiled=True):
  """The shared fields of one timed function, and their arithmetic."""
  for key in MEASUREMENT + (("compile_s", "flops", "tflops_per_s") if compiled else ()):
    _positive(m[key], f"{name}.{key}")
  assert ("compile_s" in m) == compiled, name
  assert len(m["step_s_all"]) == repeats, name
  assert m["step_s"] == pytest.approx(sum(m["step_s_all"]) / repeats, rel=1e-12)
  assert m["step_s_min"] == min(m["step_s_all"])
  assert m["items"] == items and m["items_per_s"] == pytest.approx(items / m["step_s"], rel=1e-12)
  if compiled:
    assert m["tflops_per_s"] == pytest.approx(m["flops"] / m["step_s"] / 1e12, rel=1e-12)
    assert m["mfu"] is None  # no peak is known for a CPU


def _printed_json(stdout):
  """The JSON document that ends stdout (it starts at a line that is exactly '{')."""
  lines = stdout.splitlines()
  start = max(i for i, line in enumerate(lines) if line == "{")
  return json.loads("\n".join(lines[start:])), "\n".join(lines[:start])


def _run_main(argv, tmp_path, capsys, repeats):
  """benchmark.main in this process; stdout is exactly the JSON, which equals the --output file."""
  path = tmp_path / f"{argv[0]}.json"
  returned = benchmark.main([*argv, f"--repeats={repeats}", f"--output={path}"])
  printed, before = _printed_json(capsys.readouterr().out)
  with open(path) as f:
    written = json.load(f)
  assert printed == written
  assert written == json.loads(json.dumps(returned, default=float))
  assert not before.strip(), f"stdout has more than the JSON: {before.strip()[:120]!r}"
  assert written["benchmark"] == argv[0] and written["repeats"] == repeats
  assert written.get("peak_flops") is None  # CPU (data computes nothing on a device)
  _positive(written["peak_bytes"], "peak_bytes")
  return written


# ------------------------------------------------------------------------------ flags, references


def test_flags_on_a_fresh_flag_values_with_config_overrides():
  """Parsing registers nothing on absl's global FLAGS (digan_jax.main's flags live there)."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  importlib.import_module("digan_jax.main")  # defines --config on absl's FLAGS
  command, fv = cli.parse(
    [
      "render",
      "--config=configs/synthetic.py",
      "--batch_sizes=2,3",
      "--config.sample.num_frames=5",
      "--config.train.r1_every=4",
    ]
  )
  assert command == "render" and fv.batch_sizes == ["2", "3"] and fv.repeats == 3
  assert (fv.config.sample.num_frames, fv.config.train.r1_every) == (5, 4)
  assert fv.config.model.generator.resolution == 32  # the config file's networks
  assert "batch_sizes" not in flags.FLAGS and "repeats" not in flags.FLAGS
  assert flags.FLAGS["config"] is not fv["config"]
  command, fv = cli.parse(["data", "--config=configs/default.py", "--notf"])
  assert (command, fv.tf, fv.repeats, fv.warmup) == ("data", False, 30, 3)
  for argv in (
    ["train"],
    ["nope", "--config=configs/default.py"],
    ["train", "--config=configs/default.py", "--batch_sizes=1"],  # render's flag
    ["train", "--config=configs/default.py", "--config.train.no_such_field=1"],
  ):
    with pytest.raises(SystemExit) as e:
      cli.parse(argv)
    assert e.value.code == 2, argv


def test_reference_data_has_sources_and_peaks_match_devices():
  ref = measure.reference()
  entries = ref["peak_flops"]["entries"] + ref["train"]["entries"]
  assert entries and all(e["source"].strip() for e in entries)
  official = ref["train"]["entries"][0]
  assert official["phase_s"] == {"g": 51.0, "d": 77.0, "r1": 75.0}
  device = lambda kind, platform="gpu": types.SimpleNamespace(device_kind=kind, platform=platform)
  assert measure.peak_flops(device("NVIDIA H100 80GB HBM3"), "bfloat16") == 989e12
  assert measure.peak_flops(device("NVIDIA H200"), "float32") == 494e12
  assert measure.peak_flops(device("TPU v5 lite", "tpu"), "float32") == 197e12
  assert measure.peak_flops(device("TPU v5", "tpu"), "bfloat16") == 459e12
  assert measure.peak_flops(device("cpu", "cpu"), "float32") is None


# ------------------------------------------------------------------------------ train


@pytest.fixture
def cheap_train(monkeypatch):
  """The real DiganSteps with a cheap `run_phase` and the tiny test networks in the config."""
  from digan_jax import steps as steps_lib  # pylint: disable=g-import-not-at-top

  built = []
  tiny_model = tiny_digan.tiny_config(resolution=8).model
  # What the cheap class relies on must still be the API jit_phase / jit_train_step compile.
  for name in (
    "run_phase",
    "jit_phase",
    "jit_train_step",
    "lazy_phases",
    "step_variants",
    "create_train_state",
  ):
    assert callable(getattr(steps_lib.DiganSteps, name, None)), name

  class CheapSteps(steps_lib.DiganSteps):
    def __init__(self, config, mesh, *args, **kwargs):
      kwargs.setdefault("compiler_options", tiny_digan.COMPILER_OPTIONS)
      self.traced = []
      self.given_config = config
      config = config.copy_and_resolve_references()
      config.model = tiny_model
      super().__init__(config, mesh, *args, **kwargs)
      built.append(self)

    def run_phase(self, name, state, batch, inputs=None):
      del inputs
      self.traced.append(name)  # at trace time only
      loss = jnp.mean(batch["frames"] ** 2) + jnp.mean(batch["delta_t"])
      return state.replace(rng=state.rng + 1), {f"{name}_loss": loss}

  monkeypatch.setattr(steps_lib, "DiganSteps", CheapSteps)
  return built


def test_train_harness_json_and_arithmetic(cheap_train, tmp_path, capsys):
  out = _run_main(
    [
      "train",
      "--config=configs/synthetic.py",
      "--config.train.global_batch_size=16",
      "--config.train.num_micro_batches=2",
      "--config.model.compute_dtype=bfloat16",
      "--config.train.r1_every=4",
      "--warmup=1",
    ],
    tmp_path,
    capsys,
    repeats=2,
  )
  (steps,) = cheap_train
  # The flags and overrides reach the config the steps are built from.
  given = steps.given_config
  assert given.model.compute_dtype == "bfloat16" and given.train.r1_every == 4
  assert given.model.generator.channel_base == 2048  # configs/synthetic.py's networks
  assert steps.global_batch == 16 and steps.config.train.num_micro_batches == 2
  assert out["config"].endswith("configs/synthetic.py") and out["compute_dtype"] == "bfloat16"
  assert (out["global_batch"], out["num_micro_batches"], out["r1_every"]) == (16, 2, 4)
  assert out["per_device_batch"] == 16 / out["num_devices"]
  assert (out["warmup"], out["resolution"]) == (1, 8)
  # Every phase of the table is compiled on its own, then every fused variant traces its phases.
  assert steps.traced == ["g", "d", "r1", "g", "d", "g", "d", "r1"]
  assert steps.trace_counts[("train_step", ())] == steps.trace_counts[("train_step", ("r1",))] == 1

  ph, va = out["phases"], out["variants"]
  assert {k: v["every"] for k, v in ph.items()} == {"g": 1, "d": 1, "r1": 4}
  assert {k: (v["lazy"], v["share"]) for k, v in va.items()} == {
    "step": ([], 0.75),
    "step_r1": (["r1"], 0.25),
  }
  for section in (ph, va):
    for name, m in section.items():
      _check_measurement(m, name, repeats=2, items=16)
  _positive(out["init_s"], "init_s")
  # The README's numbers are these formulas: each lazy phase amortised over its interval.
  am = out["amortised"]
  assert am["phases"]["step_s"] == pytest.approx(
    ph["g"]["step_s"] + ph["d"]["step_s"] + ph["r1"]["step_s"] / 4, rel=1e-12
  )
  assert am["phases"]["flops"] == pytest.approx(
    ph["g"]["flops"] + ph["d"]["flops"] + ph["r1"]["flops"] / 4, rel=1e-12
  )
  assert am["variants"]["step_s"] == pytest.approx(
    (va["step"]["step_s"] * 3 + va["step_r1"]["step_s"]) / 4, rel=1e-12
  )
  assert am["variants"]["flops"] == pytest.approx(
    (va["step"]["flops"] * 3 + va["step_r1"]["flops"]) / 4, rel=1e-12
  )
  for it in am.values():
    assert it["steps_per_s"] == pytest.approx(1 / it["step_s"], rel=1e-12)
    assert it["items_per_s"] == pytest.approx(16 / it["step_s"], rel=1e-12)
    assert it["kimg_per_day"] == pytest.approx(it["items_per_s"] * 86.4, rel=1e-12)
    assert it["mfu"] is None
  assert (out["iteration_from"], out["iteration_s"]) == ("variants", am["variants"]["step_s"])
  assert "reference" not in out  # 32x32 networks: the official timings are for another setup


def test_train_harness_reference_phases_only(cheap_train, tmp_path, capsys):
  """--nofused: the iteration comes from the phases; the paper networks at per-device batch 4 on
  CPU add the comparison with the official per-phase seconds, R1 amortised over r1_every."""
  out = _run_main(
    [
      "train",
      "--config=configs/default.py",
      "--warmup=0",
      "--nofused",
      "--config.train.global_batch_size=32",
      "--config.train.r1_every=8",
    ],
    tmp_path,
    capsys,
    repeats=1,
  )
  assert out["num_devices"] == 8 and out["per_device_batch"] == 4  # tests/conftest.py
  assert "variants" not in out and set(out["amortised"]) == {"phases"}
  assert (out["iteration_from"], out["iteration_s"]) == (
    "phases",
    out["amortised"]["phases"]["step_s"],
  )
  ref = out["reference"]
  official = measure.reference()["train"]["entries"][0]
  assert (ref["phase_s"], ref["source"]) == (official["phase_s"], official["source"])
  assert ref["iteration_s"] == pytest.approx(51.0 + 77.0 + 75.0 / 8)
  for p in ("g", "d", "r1"):
    assert ref["speedup"][p] == pytest.approx(ref["phase_s"][p] / out["phases"][p]["step_s"])
  assert ref["speedup"]["iteration"] == pytest.approx(ref["iteration_s"] / out["iteration_s"])


# ------------------------------------------------------------------------------ render, i3d, data


def test_render(tmp_path, capsys):
  out = _run_main(
    [
      "render",
      "--config=configs/synthetic.py",
      "--config.sample.num_frames=2",
      "--batch_sizes=1,2",
      "--frames_per_chunk=1",
    ],
    tmp_path,
    capsys,
    repeats=2,
  )
  assert (out["resolution"], out["num_frames"], out["frames_per_chunk"]) == (32, 2, 1)
  assert [b["batch"] for b in out["batches"]] == [1, 2]
  for b in out["batches"]:
    _check_measurement(b, f"render.{b['batch']}", repeats=2, items=b["batch"])
    assert b["frames_per_s"] == pytest.approx(b["items_per_s"] * 2, rel=1e-12)
  one, two = out["batches"]
  assert two["flops"] == pytest.approx(2 * one["flops"], rel=0.05)  # per-video work


def test_i3d(tmp_path, capsys):
  """The smallest clip I3D accepts (9 frames at 224²), one timed call: ~15 s on the 2-core CPU."""
  out = _run_main(
    [
      "i3d",
      "--config=configs/default.py",
      "--config.eval.batch_size=1",
      "--config.data.num_frames=9",
      "--warmup=0",
      "--precision=default",
    ],
    tmp_path,
    capsys,
    repeats=1,
  )
  assert (out["batch_size"], out["num_frames"], out["precision"]) == (1, 9, "default")
  _check_measurement(out["forward"], "i3d.forward", repeats=1, items=1)
  assert out["flops_per_item"] == out["forward"]["flops"]
  # I3D at 224²: tens of GFLOPs per clip (README: 48.6 at 16 frames); a broken count is far off.
  assert 5e9 < out["flops_per_item"] < 200e9, out["flops_per_item"]


def test_data_cli_subprocess(tmp_path):
  """The module entry point as the README runs it (NumPy half; no TF, no dataset build)."""
  path = tmp_path / "data.json"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "digan_jax.benchmark",
      "data",
      "--config=configs/synthetic.py",
      "--config.model.generator.resolution=16",
      "--config.train.global_batch_size=2",
      "--num_videos=4",
      "--repeats=2",
      "--notf",
      f"--output={path}",
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr
  with open(path) as f:
    out = json.load(f)
  assert json.loads(proc.stdout) == out
  assert (out["resolution"], out["num_videos"], out["batch_size"], out["num_frames"]) == (
    16,
    4,
    2,
    16,
  )
  assert "tf" not in out and "build" not in out
  _check_measurement(out["generate"], "data.generate", repeats=1, items=4, compiled=False)
  _check_measurement(out["numpy"], "data.numpy", repeats=2, items=2, compiled=False)
  _positive(out["cpu_count"], "cpu_count")


def test_data_with_tf_dataset_build(tmp_path, capsys):
  """The tf.data half: builds a tiny synthetic TFDS dataset into --data_dir (kept) and times it."""
  data_dir = tmp_path / "data"
  out = _run_main(
    [
      "data",
      "--config=configs/synthetic.py",
      "--config.model.generator.resolution=16",
      "--config.train.global_batch_size=2",
      "--num_videos=2",
      "--warmup=1",
      f"--data_dir={data_dir}",
    ],
    tmp_path,
    capsys,
    repeats=1,
  )
  _check_measurement(out["build"], "data.build", repeats=1, items=2, compiled=False)
  _check_measurement(out["tf"], "data.tf", repeats=1, items=2, compiled=False)
  _positive(out["dataset_bytes"], "dataset_bytes")
  assert out["dataset"].startswith("synthetic_videos/")
  assert (data_dir / out["dataset"]).is_dir()  # --data_dir keeps the build
