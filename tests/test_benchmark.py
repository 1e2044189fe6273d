"""Smoke runs of `python -m digan_jax.benchmark` (the README's speed numbers come from it).

Every subcommand runs end to end with the smallest arguments and must print and write (--output)
the same valid JSON with the expected keys and positive, finite measurements.

`train` is the exception in size: its real phases take minutes to compile even for the tiny test
networks (measured on the 2-core CPU beside another job: ~25 s per phase, 37 s / 60 s for the
fused step without / with R1, ~200 s in all), so here it runs the whole benchmark harness (argument parsing, config
presets, mesh, real train-state init, random sharded batch, lower/compile/warm-up/timing, XLA cost
analysis, the JSON and its arithmetic) on the real `DiganSteps` machinery (its `_jit` shardings and
donation) with the four step functions replaced by cheap ones, and the tiny test config in place of
the presets' networks.
"""

import copy
import json
import math
import os
import subprocess
import sys

import jax.numpy as jnp
import pytest
import tiny_digan

from digan_jax import benchmark

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _positive(value, name):
  assert isinstance(value, (int, float)) and not isinstance(value, bool), (name, value)
  assert math.isfinite(value) and value > 0, (name, value)


def _printed_json(stdout):
  """The JSON document that ends stdout (it starts at a line that is exactly '{')."""
  lines = stdout.splitlines()
  start = max(i for i, line in enumerate(lines) if line == "{")
  return json.loads("\n".join(lines[start:])), "\n".join(lines[:start])


def _run_main(argv, tmp_path, capsys, pure_stdout=True):
  """benchmark.main in this process; the JSON on stdout must equal the --output file.

  pure_stdout: stdout is that JSON and nothing else (so `... > result.json` works).
  """
  path = tmp_path / f"{argv[0]}.json"
  returned = benchmark.main([*argv, f"--output={path}"])
  stdout = capsys.readouterr().out
  printed, before = _printed_json(stdout)
  with open(path) as f:
    written = json.load(f)
  assert printed == written
  assert written == json.loads(json.dumps(returned, default=float))
  if pure_stdout:
    assert not before.strip(), f"stdout has more than the JSON: {before!r}"
  return written, before


# ------------------------------------------------------------------------------ train


def _cheap_phase(self, state, batch, inputs=None):
  del self, inputs
  loss = jnp.mean(batch["frames"] ** 2) + jnp.mean(batch["delta_t"])
  return state.replace(step=state.step + 1), {"loss": loss}


def _cheap_step(self, state, batch, do_r1, inputs=None):
  state, metrics = _cheap_phase(self, state, batch)
  return state, dict(metrics, r1=jnp.float32(do_r1))


@pytest.fixture
def cheap_train(monkeypatch):
  """The real DiganSteps with cheap step functions; the presets get the tiny test networks."""
  from configs import default, synthetic  # pylint: disable=g-import-not-at-top
  from digan_jax import steps as steps_lib  # pylint: disable=g-import-not-at-top

  built = []
  template = tiny_digan.tiny_config(resolution=8)  # before the presets are patched
  # The methods replaced below must still be the ones jit_phase / jit_train_step compile.
  for name in ("g_phase", "d_phase", "r1_phase", "train_step", "jit_phase", "jit_train_step",
               "create_train_state"):
    assert callable(getattr(steps_lib.DiganSteps, name, None)), name

  class CheapSteps(steps_lib.DiganSteps):
    g_phase = d_phase = r1_phase = _cheap_phase
    train_step = _cheap_step

    def __init__(self, config, mesh, *args, **kwargs):
      kwargs.setdefault("compiler_options", tiny_digan.COMPILER_OPTIONS)
      super().__init__(config, mesh, *args, **kwargs)
      built.append(self)

  def tiny(preset):
    """The preset's get_config with the tiny networks (keeping its R1 interval and dtype)."""
    def get_config():
      config = copy.deepcopy(template)
      config.train.r1_every = preset.train.r1_every
      config.model.compute_dtype = preset.model.compute_dtype
      return config
    return get_config

  monkeypatch.setattr(steps_lib, "DiganSteps", CheapSteps)
  presets = synthetic.get_config(), default.get_config()
  monkeypatch.setattr(synthetic, "get_config", tiny(presets[0]))
  monkeypatch.setattr(default, "get_config", tiny(presets[1]))
  return built


def test_train_harness_json_and_arithmetic(cheap_train, tmp_path, capsys):
  out, _ = _run_main(["train", "--preset=small", "--per_device_batch=2", "--num_micro_batches=2",
                   "--dtype=bfloat16", "--steps=2", "--warmup=1"], tmp_path, capsys)
  (steps,) = cheap_train
  # The CLI's settings reach the config the steps are built from.
  assert steps.config.model.compute_dtype == "bfloat16"
  assert steps.global_batch == out["num_devices"] * 2 and steps.num_micro == 2
  assert out["benchmark"] == "train" and out["preset"] == "small" and out["dtype"] == "bfloat16"
  assert (out["global_batch"], out["num_micro_batches"], out["r1_every"]) == (
      steps.global_batch, 2, steps.r1_every)
  assert out["r1_every"] == 16  # the preset's interval, not the tiny config's default
  assert (out["timed_steps"], out["warmup"], out["resolution"]) == (2, 1, 8)
  for section, names in (("phases", ("g", "d", "r1")), ("fused", ("step", "step_r1"))):
    assert set(out[section]) == set(names)
    for name in names:
      m = out[section][name]
      for key in ("compile_s", "seconds", "flops"):
        _positive(m[key], f"{section}.{name}.{key}")
      assert len(m["seconds_all"]) == 2
      for s in m["seconds_all"]:
        _positive(s, f"{section}.{name}.seconds_all")
      assert m["seconds"] == pytest.approx(sum(m["seconds_all"]) / 2, rel=1e-12)
  for key in ("init_s", "iteration_s", "iteration_s_from_phases", "steps_per_sec", "videos_per_sec",
              "kimg_per_day", "flops_per_iteration", "flops_per_iteration_from_phases",
              "peak_memory_bytes"):
    _positive(out[key], key)
  # The README's numbers are these formulas: R1 amortised over r1_every iterations.
  r, ph, fu = out["r1_every"], out["phases"], out["fused"]
  assert out["iteration_s_from_phases"] == pytest.approx(
      ph["g"]["seconds"] + ph["d"]["seconds"] + ph["r1"]["seconds"] / r, rel=1e-9)
  assert out["iteration_s"] == pytest.approx(
      (fu["step"]["seconds"] * (r - 1) + fu["step_r1"]["seconds"]) / r, rel=1e-9)
  assert out["flops_per_iteration"] == pytest.approx(
      (fu["step"]["flops"] * (r - 1) + fu["step_r1"]["flops"]) / r, rel=1e-9)
  assert out["steps_per_sec"] == pytest.approx(1 / out["iteration_s"], rel=1e-9)
  assert out["videos_per_sec"] == pytest.approx(out["global_batch"] / out["iteration_s"], rel=1e-9)
  assert out["kimg_per_day"] == pytest.approx(out["videos_per_sec"] * 86.4, rel=1e-9)
  assert out["peak_flops_per_device"] is None and "mfu" not in out  # no peak known for a CPU
  print({k: out[k] for k in ("init_s", "iteration_s", "iteration_s_from_phases")})


def test_train_harness_paper_phases_only(cheap_train, tmp_path, capsys):
  """--no-fused: the iteration comes from the phases, and the paper preset at per-device batch 4
  on CPU adds the comparison with the official per-phase seconds."""
  out, _ = _run_main(["train", "--preset=paper", "--per_device_batch=4", "--steps=1", "--warmup=0",
                   "--no-fused"], tmp_path, capsys)
  assert "fused" not in out and out["preset"] == "paper" and out["dtype"] == "float32"
  assert out["iteration_s"] == out["iteration_s_from_phases"]
  assert out["global_batch"] == 4 * out["num_devices"]
  official = benchmark.OFFICIAL_CPU_SECONDS
  assert out["official_cpu_seconds"]["iteration"] == pytest.approx(
      official["g"] + official["d"] + official["r1"] / 16)
  for p in ("g", "d", "r1"):
    assert out["speedup_vs_official"][p] == pytest.approx(official[p] / out["phases"][p]["seconds"])
  assert out["speedup_vs_official"]["iteration"] == pytest.approx(
      out["official_cpu_seconds"]["iteration"] / out["iteration_s"])


# ------------------------------------------------------------------------------ render, i3d, data


def test_render(tmp_path, capsys):
  out, _ = _run_main(["render", "--preset=small", "--batch_sizes=1,2", "--num_frames=2", "--repeats=2",
                   "--frames_per_chunk=1"], tmp_path, capsys)
  assert (out["preset"], out["resolution"], out["num_frames"], out["frames_per_chunk"]) == ("small", 32, 2, 1)
  assert [b["batch"] for b in out["batches"]] == [1, 2]
  for b in out["batches"]:
    assert len(b["seconds_per_call"]) == 2
    for key in ("first_call_s", "frames_per_s"):
      _positive(b[key], f"render.{key}")
    # Seconds are rounded to 3 decimals in the JSON (frames/s from the unrounded best call).
    best = min(b["seconds_per_call"])
    assert abs(b["batch"] * 2 / b["frames_per_s"] - best) <= 6e-4, b
    assert abs(b["seconds_per_video"] * b["batch"] - best) <= 5e-4 * (b["batch"] + 1) + 1e-9, b
  _positive(out["peak_memory_bytes"], "peak_memory_bytes")
  print(out["batches"])


def test_i3d(tmp_path, capsys):
  """The smallest clip I3D accepts (9 frames at 224²), one timed call: ~15 s on the 2-core CPU."""
  out, _ = _run_main(["i3d", "--batch_size=1", "--num_frames=9", "--iters=1", "--precision=default"],
                  tmp_path, capsys)
  assert (out["batch_size"], out["num_frames"], out["precision"]) == (1, 9, "default")
  for key in ("compile_and_first_call_s", "step_s", "step_s_min", "clips_per_sec", "gflops_per_clip",
              "achieved_tflops", "peak_memory_bytes"):
    _positive(out[key], f"i3d.{key}")
  assert out["clips_per_sec"] == pytest.approx(out["batch_size"] / out["step_s"], rel=1e-9)
  assert out["achieved_tflops"] == pytest.approx(
      out["gflops_per_clip"] * out["clips_per_sec"] / 1e3, rel=1e-9)
  # I3D at 224²: tens of GFLOPs per clip (README: 48.6 at 16 frames); a broken count is far off.
  assert 5 < out["gflops_per_clip"] < 200, out["gflops_per_clip"]
  print({k: out[k] for k in ("compile_and_first_call_s", "step_s", "gflops_per_clip")})


def test_data_cli_subprocess(tmp_path):
  """The module entry point as the README runs it (NumPy half; no TF, no dataset build)."""
  path = tmp_path / "data.json"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run(
      [sys.executable, "-m", "digan_jax.benchmark", "data", "--resolution=16", "--num_videos=4",
       "--batch_size=2", "--num_steps=2", "--no-tf", f"--output={path}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  with open(path) as f:
    out = json.load(f)
  assert json.loads(proc.stdout) == out
  assert (out["resolution"], out["num_videos"], out["batch_size"]) == (16, 4, 2)
  assert "tf_train_clips_per_sec" not in out
  for key in ("numpy_generate_seconds", "numpy_train_clips_per_sec", "cpu_count"):
    _positive(out[key], f"data.{key}")


def test_data_with_tf_dataset_build(tmp_path, capsys):
  """The tf.data half: builds a tiny synthetic TFDS dataset into --data_dir (kept) and times it."""
  data_dir = tmp_path / "data"
  out, before = _run_main(["data", "--resolution=16", "--num_videos=2", "--batch_size=2", "--num_steps=1",
                        f"--data_dir={data_dir}"], tmp_path, capsys, pure_stdout=False)
  for key in ("numpy_generate_seconds", "numpy_train_clips_per_sec", "build_seconds", "dataset_bytes",
              "tf_train_clips_per_sec"):
    _positive(out[key], f"data.{key}")
  assert out["dataset"].startswith("synthetic_videos/")
  assert (data_dir / out["dataset"]).is_dir()  # --data_dir keeps the build
  print({k: out[k] for k in ("build_seconds", "dataset_bytes", "tf_train_clips_per_sec")})
  assert not before.strip(), f"stdout has more than the JSON: {before.strip()[:120]!r}"
