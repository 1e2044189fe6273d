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

from digan_jax import train
from digan_jax.errors import UserError

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
  return [sys.executable, "-m", "digan_jax.main", "--config=configs/smoke.py", f"--workdir={workdir}",
          f"--config.data.data_dir={data_dir}", f"--config.train.num_steps={NUM_STEPS}", *extra]


def _env():
  # The same 8 fake devices as this process (conftest): resumed and uninterrupted runs compile the
  # same sharded program, so their results agree bitwise.
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _restore_state(ckpt_dir, step):
  mngr = ocp.CheckpointManager(ckpt_dir)
  out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  mngr.close()
  return jax.tree.map(np.asarray, out["state"])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  metrics = train.train_and_evaluate(_smoke(data_dir), workdir)
  return workdir, metrics


def test_uninterrupted_run_writes_workdir(uninterrupted):
  workdir, metrics = uninterrupted
  assert np.isfinite(metrics["train/loss_g"]) and np.isfinite(metrics["train/loss_d"])
  for name in ("config.json", "manifest.json", "checkpoints/12", "checkpoints/9"):
    assert (workdir / name).exists(), name
  assert not (workdir / "checkpoints" / "3").exists()  # keep_checkpoints=3: 6, 9, 12 remain


def test_preempted_run_resumes_to_identical_parameters(uninterrupted, data_dir, tmp_path):
  workdir = tmp_path / "preempted"
  proc = subprocess.Popen(_main_cmd(workdir, data_dir, "--config.checkpoint_every_steps=3"),
                          cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
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
  workdir, _ = uninterrupted
  config = _smoke(data_dir)
  config.eval.num_videos, config.eval.num_repeats, config.eval.batch_size = 8, 2, 8
  first = train.evaluate(config, workdir)
  record = json.loads((workdir / "eval" / f"{NUM_STEPS}.json").read_text())
  assert record["step"] == NUM_STEPS and set(record["results"]) == {"proxy"}
  result = record["results"]["proxy"]
  assert result["card"]["overrides"] == {"num_fake": 8, "num_real": 8, "num_trials": 2}
  assert len(result["fvd_trials"]) == 2 and result["fvd"] > 0 and np.isfinite(result["kvd"])
  assert not result["real_cache_hit"]
  again = train.evaluate(config, workdir)  # reals from the cache, same fakes: the same number
  assert again["real_cache_hit"] and again["fvd"] == first["fvd"]


def test_unfinished_checkpoint_is_ignored_on_resume(uninterrupted, data_dir, tmp_path, monkeypatch):
  """A process killed mid-save leaves only an Orbax tmp dir, which must never be restored."""
  monkeypatch.chdir(tmp_path)
  workdir = pathlib.Path("killed")  # relative, as users type it (Orbax itself needs absolute paths)
  config = _smoke(data_dir, num_steps=3)
  train.train_and_evaluate(config, workdir)
  junk = workdir / "checkpoints" / "6.orbax-checkpoint-tmp-1234"
  (junk / "state").mkdir(parents=True)
  (junk / "state" / "garbage").write_text("half-written")
  assert train.Checkpoints(workdir, config, *_model_configs(config)).latest_step() == 3
  config = _smoke(data_dir, num_steps=4)
  train.train_and_evaluate(config, workdir)
  assert (workdir / "checkpoints" / "4").exists()


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
  with pytest.raises(UserError, match="num_micro_batches"):
    train.train_and_evaluate(config, tmp_path / "wd")


@pytest.mark.parametrize("flag,message", [
    ("--config.train.global_batch_sise=3", "global_batch_sise"),
    ("--config.data.name=no_such_dataset", "no_such_dataset"),
])
def test_cli_errors_are_one_clear_message(tmp_path, data_dir, flag, message):
  proc = subprocess.run(_main_cmd(tmp_path / "wd", tmp_path / "empty_data", flag), cwd=REPO,
                        env=_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert message in proc.stderr
  assert "Traceback" not in proc.stderr or "global_batch_sise" in message
