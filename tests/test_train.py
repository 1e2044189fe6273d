"""End-to-end trainer: exact resume after preemption, checkpoint safety, and one-line user errors."""

import importlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from digan_jax import checkpointing, sampling, train
from digan_jax.evaluation import evaluator
from digan_jax.errors import UserError
import tiny_digan

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_STEPS = 12


def _smoke(data_dir, **train_overrides):
  config = importlib.import_module("configs.smoke").get_config()
  config.data.data_dir = str(data_dir)
  config.train.num_steps = NUM_STEPS
  for k, v in train_overrides.items():
    config.train[k] = v
  return config


def _main_cmd(workdir, data_dir, *extra):
  return [
    sys.executable,
    "-m",
    "digan_jax.main",
    "--config=configs/smoke.py",
    f"--workdir={workdir}",
    f"--config.data.data_dir={data_dir}",
    f"--config.train.num_steps={NUM_STEPS}",
    *extra,
  ]


def _env():
  # The same 8 fake devices as this process (conftest): resumed and uninterrupted runs compile the
  # same sharded program, so their results agree bitwise.
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  return env


# `python -m digan_jax.main` with the train steps compiled like this process's (fast_compile): the
# same programs, so the subprocess reads them from the shared persistent compilation cache.
_FAST_COMPILE_MAIN = """
import runpy, sys
sys.path.insert(0, "tests")
import tiny_digan
from digan_jax import steps
steps.DiganSteps = tiny_digan.fast_compile_steps()
runpy.run_module("digan_jax.main", run_name="__main__")
"""


@pytest.fixture(scope="module", autouse=True)
def fast_compile():
  """The trainer's own runs in this process compile their train steps at LLVM -O0 (tiny networks
  are compile-bound on CPU); evaluation and sampling keep the default level (I3D at 224x224 is
  run-time bound)."""
  from digan_jax import steps as steps_lib

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(steps_lib, "DiganSteps", tiny_digan.fast_compile_steps())
    yield


def _restore_state(ckpt_dir, step):
  mngr = ocp.CheckpointManager(ckpt_dir)
  out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  mngr.close()
  return jax.tree.map(np.asarray, out["state"])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("data")


def _with_eval(config):
  """The demo's own path, scaled down: FVD inside the loop (so a best/ checkpoint) and samples;
  a second protocol at the end only."""
  config.eval.protocol = "proxy,digan@end"
  config.eval_every_steps = 6
  config.eval.at_end = True
  config.eval.num_videos, config.eval.num_repeats, config.eval.batch_size = 8, 1, 8
  config.eval.floor_split = "train"  # eval_split is "test"
  config.sample_every_steps = NUM_STEPS
  return config


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  metrics = train.train_and_evaluate(_with_eval(_smoke(data_dir)), workdir)
  return workdir, metrics


def _host_tree(tree):
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def _max_diff(a, b):
  return max(float(np.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_uninterrupted_run_writes_workdir(uninterrupted, data_dir):
  workdir, metrics = uninterrupted
  assert np.isfinite(metrics["train/loss_g"]) and np.isfinite(metrics["train/loss_d"])
  for name in (
    "config.json",
    "manifest.json",
    "checkpoints/12",
    "checkpoints/9",
    "eval/6.json",
    "eval/12.json",
    "best/best.json",
    "samples/12/grid.gif",
    "samples/12/sampling.json",
  ):
    assert (workdir / name).exists(), name
  assert not (workdir / "checkpoints" / "3").exists()  # keep_checkpoints=3: 6, 9, 12 remain
  assert np.isfinite(metrics["eval/fvd"]) and metrics["eval/fvd"] > 0
  assert np.isfinite(metrics["eval/digan/fvd"])
  # Each protocol at its cadence: proxy at 6 and 12, digan at the end only.
  protocols_at = {
    s: sorted(json.loads((workdir / "eval" / f"{s}.json").read_text())["results"])
    for s in (6, NUM_STEPS)
  }
  assert protocols_at == {6: ["proxy"], NUM_STEPS: ["digan", "proxy"]}
  # Every result carries its floor: 8 train clips against the protocol's 8 test clips, the same
  # at every step (cached features).
  results = [
    json.loads((workdir / "eval" / f"{s}.json").read_text())["results"] for s in (6, NUM_STEPS)
  ]
  floors = [r["proxy"]["floor"] for r in results]
  assert floors[0]["num_clips"] == 8 and floors[0]["fvd"] > 0 and floors[0] == floors[1]
  assert "synthetic_videos" in floors[0]["dataset_fingerprint"]
  assert "/train:" in floors[0]["dataset_fingerprint"]
  assert results[1]["digan"]["floor"]["num_clips"] == 8

  # Training moved both networks away from the seed's initial state.
  from digan_jax import sharding, steps as steps_lib

  config = _smoke(data_dir)
  init = _host_tree(
    steps_lib.DiganSteps(config, sharding.make_mesh(config.mesh)).create_train_state()
  )
  state = _restore_state(workdir / "checkpoints", NUM_STEPS)
  moved_g, moved_d = (
    _max_diff(state["g_params"], init.g_params),
    _max_diff(state["d_params"], init.d_params),
  )
  # The EMA generator is a blend, neither the current G nor a copy of the initial one.
  ema_vs_g = _max_diff(state["g_ema"]["params"], state["g_params"])
  ema_vs_init = _max_diff(state["g_ema"]["params"], init.g_ema["params"])
  print(
    f"after {NUM_STEPS} steps: |G - G0| {moved_g:.3g}, |D - D0| {moved_d:.3g}, "
    f"|G_ema - G| {ema_vs_g:.3g}, |G_ema - G_ema0| {ema_vs_init:.3g}"
  )
  assert moved_g > 1e-3 and moved_d > 1e-3 and ema_vs_g > 1e-4 and ema_vs_init > 1e-4
  # The separately saved EMA generator (what sampling and --mode=eval read) is the state's G_ema.
  from digan_jax import checkpointing

  saved = checkpointing.restore_numpy(workdir / "checkpoints", NUM_STEPS, "g_ema")
  for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(state["g_ema"])):
    np.testing.assert_array_equal(a, b)

  # best/ holds the EMA generator of the step with the lowest in-loop FVD.
  fvds = {
    s: json.loads((workdir / "eval" / f"{s}.json").read_text())["results"]["proxy"]["fvd"]
    for s in (6, NUM_STEPS)
  }
  best = json.loads((workdir / "best" / "best.json").read_text())
  assert best["fvd"] == min(fvds.values()) and best["step"] == min(fvds, key=fvds.get)
  best_g_ema = checkpointing.restore_numpy(workdir / "best", best["step"], "g_ema")
  ckpt_g_ema = checkpointing.restore_numpy(workdir / "checkpoints", best["step"], "g_ema")
  for a, b in zip(jax.tree.leaves(best_g_ema), jax.tree.leaves(ckpt_g_ema)):
    np.testing.assert_array_equal(a, b)


def test_sample_mode_renders_what_the_loop_rendered(uninterrupted, data_dir):
  """--mode=sample reads the saved G_ema; the loop's write_samples used the live state.g_ema: the
  same generator and seeds, so the same videos, byte for byte."""
  workdir, _ = uninterrupted
  out_dir = pathlib.Path(sampling.run_sample_mode(_smoke(data_dir), workdir))
  assert out_dir == workdir / "samples" / f"{NUM_STEPS}_cli"
  loop_dir = workdir / "samples" / str(NUM_STEPS)
  for name in ("grid.gif", "video_0000.gif", "video_0003.gif"):
    assert (out_dir / name).read_bytes() == (loop_dir / name).read_bytes(), name


def test_real_vs_generated_gif_of_the_last_samples(uninterrupted, data_dir, tmp_path):
  """python -m digan_jax.real_vs_fake: eval-split clips beside the run's last samples."""
  workdir, _ = uninterrupted
  out = tmp_path / "real_vs_generated.gif"
  cmd = [sys.executable, "-m", "digan_jax.real_vs_fake", "--config=configs/smoke.py"]
  cmd += [f"--config.data.data_dir={data_dir}", f"--workdir={workdir}", f"--output={out}"]
  proc = subprocess.run(
    cmd + ["--num_videos=4", "--scale=2"], cwd=REPO, env=_env(), capture_output=True, text=True
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert f"4 real and 4 generated videos, step {NUM_STEPS}" in proc.stdout
  import imageio.v3 as iio

  frames = iio.imread(out, index=None)[..., :3]
  loop = iio.imread(workdir / "samples" / str(NUM_STEPS) / "video_0000.gif", index=None)[..., :3]
  assert (
    frames.shape[0]
    == loop.shape[0]
    == importlib.import_module("configs.smoke").get_config().sample.num_frames
  )
  # The right grid's first video is the loop's first sample, magnified 2x (below the title);
  # GIF palettes differ, so the pixels agree to a few levels.
  res = loop.shape[1]
  grid_width = 2 * (2 * res + 2)  # two videos and their 2-pixel gap, magnified
  right = frames[:, 22 : 22 + 2 * res, -grid_width:][:, :, : 2 * res]
  error = np.abs(right[:, ::2, ::2].astype(int) - loop).mean()
  left = frames[:, 22 : 22 + 2 * res, : 2 * res]  # the first real clip
  other = np.abs(left[:, ::2, ::2].astype(int) - loop).mean()
  print(f"loop's sample vs the generated side: {error:.2f} levels, vs the real side: {other:.2f}")
  assert error < 16 and error < 0.5 * other  # palette dithering only
  bad = subprocess.run(
    cmd[:-1] + [f"--output={out}", "--workdir=" + str(tmp_path)],
    cwd=REPO,
    env=_env(),
    capture_output=True,
    text=True,
  )
  assert bad.returncode == 2 and "no samples in" in bad.stderr


def test_preempted_run_resumes_to_identical_parameters(uninterrupted, data_dir, tmp_path):
  workdir = tmp_path / "preempted"
  cmd = _main_cmd(workdir, data_dir, "--config.checkpoint_every_steps=3")
  assert cmd[1:3] == ["-m", "digan_jax.main"]
  cmd[1:3] = ["-c", _FAST_COMPILE_MAIN]
  proc = subprocess.Popen(
    cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )
  deadline = time.time() + 600
  while not (workdir / "checkpoints" / "3").exists():
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    assert time.time() < deadline, "no checkpoint within 10 minutes"
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out[-3000:]
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  stopped_at = steps[-1]
  assert 3 <= stopped_at < NUM_STEPS, f"run was not interrupted mid-way: {steps}"
  # Resume in this (new) process: it must end exactly where the uninterrupted run ended.
  train.train_and_evaluate(_smoke(data_dir), workdir)
  resumed = _restore_state(workdir / "checkpoints", NUM_STEPS)
  reference = _restore_state(uninterrupted[0] / "checkpoints", NUM_STEPS)
  assert int(resumed["step"]) == NUM_STEPS
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(reference)):
    np.testing.assert_array_equal(a, b)  # bitwise on CPU


def test_eval_mode_adds_fvd_of_the_latest_checkpoint(uninterrupted, data_dir):
  """--mode=eval of the saved G_ema gives exactly the FVD that the loop measured on state.g_ema."""
  workdir, _ = uninterrupted
  path = workdir / "eval" / f"{NUM_STEPS}.json"
  in_loop = json.loads(path.read_text())["results"]["proxy"]
  assert not json.loads((workdir / "eval" / "6.json").read_text())["results"]["proxy"][
    "real_cache_hit"
  ]  # the first evaluation computed the real features
  in_loop_digan = json.loads(path.read_text())["results"]["digan"]
  path.unlink()
  config = _with_eval(_smoke(data_dir))
  both = evaluator.run_eval_mode(config, workdir)
  first = both["proxy"]
  record = json.loads(path.read_text())
  assert record["step"] == NUM_STEPS and set(record["results"]) == {"proxy", "digan"}
  assert both["digan"]["fvd_trials"] == in_loop_digan["fvd_trials"]
  result = record["results"]["proxy"]
  assert result["card"]["overrides"] == {"num_fake": 8, "num_real": 8, "num_trials": 1}
  assert len(result["fvd_trials"]) == 1 and result["fvd"] > 0 and np.isfinite(result["kvd"])
  assert result["real_cache_hit"]  # reals computed in the loop, read from the cache
  print(
    f"FVD at step {NUM_STEPS}: in the loop {in_loop['fvd']:.6f}, --mode=eval {first['fvd']:.6f}"
  )
  assert result["fvd_trials"] == in_loop["fvd_trials"] and first["fvd"] == in_loop["fvd"]


def test_unfinished_checkpoint_is_ignored_on_resume(uninterrupted, data_dir, tmp_path, monkeypatch):
  """A process killed mid-save leaves only an Orbax tmp dir, which must never be restored."""
  monkeypatch.chdir(tmp_path)
  workdir = pathlib.Path("killed")  # relative, as users type it (Orbax itself needs absolute paths)
  config = _smoke(data_dir, num_steps=3)
  train.train_and_evaluate(config, workdir)
  junk = workdir / "checkpoints" / "6.orbax-checkpoint-tmp-1234"
  (junk / "state").mkdir(parents=True)
  (junk / "state" / "garbage").write_text("half-written")
  assert checkpointing.TrainCheckpoints(workdir, config, *_model_configs(config)).latest_step() == 3
  config = _smoke(data_dir, num_steps=4)
  train.train_and_evaluate(config, workdir)
  assert (workdir / "checkpoints" / "4").exists()


def test_state_with_a_non_finite_value_is_never_checkpointed(tmp_path, data_dir):
  """Losses are computed before the update, so finite losses do not prove a finite state: the save
  itself checks every value of the state (networks, EMA, Adam moments)."""
  from digan_jax import sharding, steps as steps_lib

  config = _smoke(data_dir)
  steps = steps_lib.DiganSteps(config, sharding.make_mesh(config.mesh))
  good = steps.create_train_state()
  ckpts = checkpointing.TrainCheckpoints(tmp_path, config, *_model_configs(config))
  guard = train.NonFiniteGuard(3)
  # One value of an Adam second moment, deep inside the state, overflowed.
  leaves, treedef = jax.tree.flatten(good.d_opt_state)
  i = max(k for k, x in enumerate(leaves) if x.dtype.kind == "f" and x.size > 1)
  leaves[i] = leaves[i].at[(0,) * leaves[i].ndim].set(np.inf)
  bad = good.replace(d_opt_state=jax.tree.unflatten(treedef, leaves))
  assert not train._save_if_finite(ckpts, 1, bad, guard)
  assert train._save_if_finite(ckpts, 2, good, guard)
  guard.check(3, {"train/loss_g": float("nan")})  # last checked losses non-finite: no save either
  assert not train._save_if_finite(ckpts, 3, good, guard)
  ckpts.close()
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [2]


def _model_configs(config):
  from digan_jax.models import factory

  return factory.generator_config(config.model), factory.discriminator_config(config.model)


def test_incompatible_workdir_is_refused(uninterrupted, data_dir):
  config = _smoke(data_dir)
  config.model.generator.channel_max = 16
  with pytest.raises(UserError, match="different model"):
    train.train_and_evaluate(config, uninterrupted[0])


def test_missing_dataset_names_the_fix(tmp_path):
  config = _smoke(tmp_path / "no_data")
  config.data.name = "ucf101"
  with pytest.raises(UserError, match="Prepare it with"):
    train.train_and_evaluate(config, tmp_path / "wd")


def test_unwritable_workdir(tmp_path, data_dir):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(UserError, match="cannot write to --workdir"):
    train.train_and_evaluate(_smoke(data_dir), blocker / "wd")


def test_bad_batch_for_mesh(tmp_path, data_dir):
  config = _smoke(data_dir)
  config.train.num_micro_batches = 3
  with pytest.raises(UserError, match=r"config.train.num_micro_batches=3: must divide"):
    train.train_and_evaluate(config, tmp_path / "wd")
  assert not (tmp_path / "wd").exists()  # refused before anything is written


@pytest.mark.parametrize(
  "flag,message",
  [
    ("--config.train.global_batch_sise=3", "global_batch_sise"),
    ("--config.train.global_batch_size=abc", "invalid literal"),
    ("--config=configs/no_such_config.py", "no_such_config.py"),
    ("--no_such_flag=1", "no_such_flag"),
    ("--config.data.name=no_such_dataset", "no_such_dataset"),
  ],
)
def test_cli_errors_are_one_clear_message(tmp_path, data_dir, flag, message):
  proc = subprocess.run(
    _main_cmd(tmp_path / "wd", tmp_path / "empty_data", flag),
    cwd=REPO,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode != 0
  assert message in proc.stderr, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
