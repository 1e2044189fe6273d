"""Faults a long run meets, injected into real trainer runs: damaged checkpoints, a full disk, a
failed write, SIGKILL at random times, a damaged dataset record, a non-finite batch.

Each test prints what it injected and what came of it (`pytest -s` shows the lines)."""

import errno
import importlib
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from digan_jax import checkpointing, train
from digan_jax.errors import CorruptDataError, UserError
import tiny_digan

REPO = pathlib.Path(__file__).resolve().parents[1]


def _smoke(data_dir, num_steps=6, **overrides):
  config = importlib.import_module("configs.smoke").get_config()
  config.data.data_dir = str(data_dir)
  config.train.num_steps = num_steps
  for key, value in overrides.items():
    section, name = key.split("__") if "__" in key else (None, key)
    (config[section] if section else config)[name] = value
  return config


@pytest.fixture(scope="module", autouse=True)
def fast_compile():
  from digan_jax import steps as steps_lib

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(steps_lib, "DiganSteps", tiny_digan.fast_compile_steps())
    yield


@pytest.fixture
def report(record_property):
  """Prints an outcome and hands it to the terminal summary (conftest), also under xdist."""

  def write(text):
    print(f"\n[faults] {text}")
    record_property("faults", text)

  return write


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def six_steps(data_dir, tmp_path_factory):
  """An unhindered 6-step run: checkpoints 3 and 6."""
  workdir = tmp_path_factory.mktemp("six_steps")
  train.train_and_evaluate(_smoke(data_dir), workdir)
  return workdir


def _copy(workdir, tmp_path, name="run"):
  dst = tmp_path / name
  shutil.copytree(workdir, dst)
  return dst


def _entries(ckpt_dir):
  return sorted(p.name for p in pathlib.Path(ckpt_dir).iterdir())


def _state(ckpt_dir, step):
  return checkpointing.read_items(ckpt_dir, step, ("state",))["state"]


def _assert_same_state(a_dir, b_dir, step):
  a, b = _state(a_dir, step), _state(b_dir, step)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)  # bitwise on CPU


def _truncate_data_files(item_dir, count=3, size=100):
  """Truncates the `count` largest array data files of a checkpoint item (the user's report)."""
  files = sorted(
    (p for p in pathlib.Path(item_dir).rglob("*") if p.is_file() and p.parent.name == "d"),
    key=lambda p: p.stat().st_size,
    reverse=True,
  )[:count]
  for f in files:
    os.truncate(f, size)
  return files


# ---------------------------------------------------------------------------- damaged checkpoints


@pytest.mark.parametrize("item", ["state", "g_ema"])
def test_damaged_newest_checkpoint_is_set_aside_and_the_previous_one_resumes(
  item, six_steps, data_dir, tmp_path, caplog, report
):
  """Three data files of checkpoints/6/<item> truncated: the same command logs the damage, moves
  6 aside (kept), resumes from 3 and ends where the unhindered run ended, bitwise."""
  workdir = _copy(six_steps, tmp_path)
  damaged = _truncate_data_files(workdir / "checkpoints" / "6" / item)
  with caplog.at_level("ERROR"):
    train.train_and_evaluate(_smoke(data_dir), workdir)
  entries = _entries(workdir / "checkpoints")
  aside = [e for e in entries if e.startswith("6.corrupt-")]
  assert len(aside) == 1 and {"3", "6"} <= set(entries), entries
  for f in damaged:  # the damaged files are kept as they were, for inspection
    kept = workdir / "checkpoints" / aside[0] / f.relative_to(workdir / "checkpoints" / "6")
    assert kept.stat().st_size == 100
  message = next(r.getMessage() for r in caplog.records if "is damaged" in r.getMessage())
  assert "checkpoint 6" in message and "OUT_OF_RANGE" in message, message
  _assert_same_state(workdir / "checkpoints", six_steps / "checkpoints", 6)
  report(
    f"truncated {len(damaged)} files of checkpoints/6/{item}: resumed from 3, "
    f"6 kept aside as {aside[0]}, final state bitwise equal; checkpoints lost: 0"
  )


def test_no_checkpoint_reads_back_names_every_step_tried(six_steps, data_dir, tmp_path):
  workdir = _copy(six_steps, tmp_path)
  for step in ("3", "6"):
    _truncate_data_files(workdir / "checkpoints" / step / "state")
  with pytest.raises(UserError) as info:
    train.train_and_evaluate(_smoke(data_dir), workdir)
  message = str(info.value)
  assert "step 6: " in message and "step 3: " in message and "new --workdir" in message, message
  entries = _entries(workdir / "checkpoints")
  assert sorted(e.split(".")[0] for e in entries) == ["3", "6"], entries  # both kept, aside
  assert all(".corrupt-" in e for e in entries)


def test_sampling_and_eval_name_the_damaged_step(six_steps, tmp_path):
  workdir = _copy(six_steps, tmp_path)
  _truncate_data_files(workdir / "checkpoints" / "6" / "g_ema")
  with pytest.raises(UserError, match=r"checkpoint 6 .* is damaged .*--step=<one of \[3\]>"):
    checkpointing.restore_generator(workdir / "checkpoints")
  gcfg, g_ema, step = checkpointing.restore_generator(workdir / "checkpoints", 3)
  assert step == 3 and jax.tree.leaves(g_ema)


def test_checkpoint_of_another_config_is_refused_and_left_in_place(six_steps, data_dir, tmp_path):
  """Not damage: a shape mismatch names the fix and moves nothing aside."""
  workdir = _copy(six_steps, tmp_path)
  (workdir / "config.json").unlink()  # past the config.json check, to the checkpoint's own
  config = _smoke(data_dir)
  config.model.generator.channel_max = 16
  with pytest.raises(UserError, match="does not match this config"):
    train.train_and_evaluate(config, workdir)
  assert _entries(workdir / "checkpoints") == ["3", "6"]


def test_stop_after_the_last_checkpoint_still_gets_its_samples_and_fvd(
  six_steps, data_dir, tmp_path, report
):
  """A run killed after its final checkpoint, while writing its final samples and before its FVD:
  the same command restores that step and writes what is missing (also for a mid-run step)."""
  workdir = _copy(six_steps, tmp_path)
  config = _smoke(data_dir, sample_every_steps=3)
  config.eval.protocol, config.eval.at_end = "proxy", True
  config.eval.num_videos, config.eval.num_repeats, config.eval.batch_size = 8, 1, 8
  partial = workdir / "samples" / "6"  # killed while writing them: one file, no sampling.json
  partial.mkdir(parents=True)
  (partial / "video_0000.gif").write_bytes(b"partial")
  train.train_and_evaluate(config, workdir)
  assert (workdir / "samples" / "6" / "sampling.json").exists()
  assert (partial / "video_0000.gif").read_bytes() != b"partial"
  assert not (workdir / "samples" / "3").exists()
  assert "proxy" in json.loads((workdir / "eval" / "6.json").read_text())["results"]
  report("stopped after checkpoint 6, before its samples and FVD: both written on the rerun")


# ---------------------------------------------------------------------------- failed writes


@pytest.fixture
def tmpfs(tmp_path):
  """A 64 MB tmpfs (root with mount permission), shrunk and regrown by the test."""
  mount = tmp_path / "tmpfs"
  mount.mkdir()
  done = subprocess.run(
    ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True
  )
  if done.returncode:
    pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()[:100]})")
  try:
    yield mount
  finally:
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _resize(mount, kib):
  subprocess.run(["mount", "-o", f"remount,size={kib}k", str(mount)], check=True)


def test_disk_full_at_the_last_save_stops_cleanly_and_resumes(six_steps, data_dir, tmpfs, report):
  """A real full filesystem: 3 steps are trained and checkpointed, then the tmpfs is shrunk to what
  is used plus 256 KB, so the save of step 6 fails with ENOSPC. The run ends with one message naming
  the step, the error and the intact checkpoint; after space is given back the same command resumes
  from 3 and ends where an unhindered run ends."""
  workdir = tmpfs / "run"
  train.train_and_evaluate(_smoke(data_dir, 3), workdir)
  used_kib = shutil.disk_usage(tmpfs).used // 1024
  _resize(tmpfs, used_kib + 256)
  with pytest.raises(UserError) as info:
    train.train_and_evaluate(_smoke(data_dir), workdir)
  message = str(info.value)
  assert "step 6" in message and "newest intact checkpoint" in message, message
  assert "RESOURCE_EXHAUSTED" in message or "No space left" in message, message
  committed = [e for e in _entries(workdir / "checkpoints") if e.isdigit()]
  assert committed == ["3"], _entries(workdir / "checkpoints")
  assert checkpointing.read_items(workdir / "checkpoints", 3, ("state", "g_ema", "model"))
  _resize(tmpfs, 64 * 1024)
  train.train_and_evaluate(_smoke(data_dir), workdir)
  assert [e for e in _entries(workdir / "checkpoints") if "tmp" in e] == []
  _assert_same_state(workdir / "checkpoints", six_steps / "checkpoints", 6)
  report(f"tmpfs full at the save of 6: stopped with {message!r}; resumed from 3, equal")


def test_failed_write_is_retried_at_the_next_save(
  six_steps, data_dir, tmp_path, monkeypatch, report
):
  """An OSError(ENOSPC) injected into Orbax's array writer for the save of step 3: logged, the run
  goes on, step 6 is saved and equals the unhindered run's."""
  real = ocp.type_handlers.ArrayHandler.serialize
  failures = []

  async def serialize(self, values, infos, args=None):
    if not failures:
      failures.append(infos[0].path)
      raise OSError(errno.ENOSPC, "No space left on device (injected)")
    return await real(self, values, infos, args)

  monkeypatch.setattr(ocp.type_handlers.ArrayHandler, "serialize", serialize)
  workdir = tmp_path / "run"
  train.train_and_evaluate(_smoke(data_dir), workdir)
  assert failures, "the injected failure was never reached"
  assert _entries(workdir / "checkpoints") == ["6"]
  _assert_same_state(workdir / "checkpoints", six_steps / "checkpoints", 6)
  report("injected ENOSPC at the save of 3: run went on, 6 saved and equal")


# ---------------------------------------------------------------------------- damaged data


def _damage_record(dataset_dir, split, video, garbage=b"\x89PNG\r\n\x1a\n not an image"):
  """Rewrites a split's shard with every encoded frame of one video replaced by bytes that do not
  decode (what a bad disk sector or a partial copy leaves)."""
  from array_record.python import array_record_module
  from tensorflow.core.example import example_pb2

  from digan_jax.data import storage

  files = storage.VideoDataset.split_files(dataset_dir, split)
  offset = 0
  for path in files:
    reader = array_record_module.ArrayRecordReader(path)
    records = reader.read_all()
    reader.close()
    if video < offset + len(records):
      example = example_pb2.Example.FromString(records[video - offset])
      frames = example.features.feature["frames"].bytes_list.value
      for i in range(len(frames)):
        frames[i] = garbage
      records[video - offset] = example.SerializeToString()
      tmp = path + ".tmp"
      writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
      for record in records:
        writer.write(record)
      writer.close()
      os.replace(tmp, path)
      return os.path.basename(path), video - offset
    offset += len(records)
  raise IndexError(video)


def test_damaged_frame_stops_the_run_naming_file_and_record(six_steps, data_dir, tmp_path, report):
  """Policy: stop, naming the dataset file, the record and the video (never a decoder traceback,
  never training on garbage)."""
  from digan_jax.data import clip_plans, storage

  data = tmp_path / "data"
  shutil.copytree(data_dir, data)
  config = _smoke(data)
  name = next(p for p in data.rglob("dataset_info.json")).parent
  dataset = storage.VideoDataset(str(data), str(name.relative_to(data).parent), "train")
  index = clip_plans.ClipIndex(dataset.lengths, config.data.num_frames)
  plan = clip_plans.train_plan(
    index, seed=config.train.seed, step=0, batch_size_per_process=config.train.global_batch_size
  )
  video = int(plan.video[0])  # drawn by the first step
  shard, record = _damage_record(dataset.dataset_dir, "train", video)
  with pytest.raises(CorruptDataError) as info:
    train.train_and_evaluate(config, tmp_path / "run")
  message = str(info.value)
  assert f"video {video} (record {record} of {shard})" in message, message
  assert "Prepare it again" in message and "Traceback" not in message
  assert not (tmp_path / "run" / "checkpoints" / "3").exists()  # nothing trained on it
  report(f"damaged record: {message[:160]}...")


# ---------------------------------------------------------------------------- SIGKILL


# The trainer as `python -m digan_jax.main` with the test's fast-compile train steps (same programs
# as this process's, read from the persistent compilation cache).
_MAIN = """
import runpy, sys
sys.path.insert(0, "tests")
import tiny_digan
from digan_jax import steps
steps.DiganSteps = tiny_digan.fast_compile_steps()
runpy.run_module("digan_jax.main", run_name="__main__")
"""
KILL_STEPS = 12


def _kill_config(data_dir):
  """Checkpoints and samples every 3 steps, an FVD (proxy, 8 videos) after the last step."""
  config = _smoke(data_dir, KILL_STEPS, sample_every_steps=3)
  config.eval.protocol, config.eval.at_end = "proxy", True
  config.eval.num_videos, config.eval.num_repeats, config.eval.batch_size = 8, 1, 8
  return config


def _kill_cmd(workdir, data_dir):
  return [
    sys.executable,
    "-c",
    _MAIN,
    "--config=configs/smoke.py",
    f"--workdir={workdir}",
    f"--config.data.data_dir={data_dir}",
    f"--config.train.num_steps={KILL_STEPS}",
    "--config.sample_every_steps=3",
    "--config.eval.at_end=True",
    "--config.eval.protocol=proxy",
    "--config.eval.num_videos=8",
    "--config.eval.num_repeats=1",
    "--config.eval.batch_size=8",
  ]


def _committed(workdir):
  path = workdir / "checkpoints"
  return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit()) if path.exists() else []


class _Run:
  """The trainer command in a subprocess, its output collected line by line."""

  def __init__(self, cmd, env):
    import threading

    self.lines, self.t0 = [], time.monotonic()
    self.proc = subprocess.Popen(
      cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
    self.reader.start()

  def wait_for(self, needle: str, timeout: float) -> bool:
    """True once a line holds `needle`; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      if any(needle in line for line in list(self.lines)):
        return True
      if self.proc.poll() is not None:
        self.reader.join(5)
        return any(needle in line for line in self.lines)
      time.sleep(0.05)
    raise AssertionError(f"no {needle!r} within {timeout} s: {''.join(self.lines)[-3000:]}")

  def kill_after(self, seconds: float) -> bool:
    """SIGKILL after `seconds` (True), unless the process ends first (False)."""
    try:
      self.proc.wait(timeout=seconds)
      self.reader.join(5)
      return False
    except subprocess.TimeoutExpired:
      self.proc.send_signal(signal.SIGKILL)
      self.proc.wait(timeout=60)
      self.reader.join(5)
      return True


def _last_logged_step(lines):
  import re

  steps = [int(m.group(1)) for line in lines for m in [re.search(r"\] \[(\d+)\] perf/", line)] if m]
  return steps[-1] if steps else None


def test_sigkill_at_random_times_always_resumes_to_the_same_result(data_dir, tmp_path, report):
  """10 SIGKILLs, each followed by the same command again. Each kill lands at a random moment:
  during start-up (imports, compiling: a random time after the start) or a random 0-6 s after a
  random step logged (training, checkpoint writes and samples every 3 steps, the FVD at the end).
  Every start resumes from the newest committed checkpoint; a start that reaches the end (the
  next trial then starts a new workdir) and the last one end bitwise where the unhindered run
  ends. The clip sequence is a pure function of (seed, step): equal parameters also mean that no
  clip was repeated or skipped."""
  reference = tmp_path / "reference"
  train.train_and_evaluate(_kill_config(data_dir), reference)
  workdir = tmp_path / "killed"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  rng = random.Random(0)
  outcomes, kills = [], 0
  for start in range(20):
    before = _committed(workdir)
    run = _Run(_kill_cmd(workdir, data_dir), env)
    if kills >= 10:
      killed, when = run.kill_after(900), "to the end"
      assert not killed, "the last start did not finish within 15 minutes"
    elif rng.random() < 0.2 or before[-1:] == [KILL_STEPS]:
      delay = rng.uniform(1.0, 15.0)
      killed, when = run.kill_after(delay), f"{delay:.1f} s after the start"
    else:
      step = rng.randint((before[-1] if before else 0) + 1, KILL_STEPS)
      delay = rng.uniform(0.0, 6.0)
      killed = run.wait_for(f"] [{step}] perf/", 600) and run.kill_after(delay)
      when = f"{delay:.2f} s after step {step} was logged"
    at_kill = _entries(workdir / "checkpoints") if (workdir / "checkpoints").exists() else []
    text = "".join(run.lines)
    resumed = [int(line.rsplit(" ", 1)[1]) for line in run.lines if "Resumed from step" in line]
    if before:  # a start that got as far as restoring resumed from the newest checkpoint
      assert resumed in ([], [before[-1]]), (before, resumed, text[-2000:])
    outcome = (
      f"start {start}: from {before[-1] if before else 0}, "
      f"{'SIGKILL ' + when if killed else 'finished'} (last step logged "
      f"{_last_logged_step(run.lines)}, checkpoints/ then {at_kill})"
    )
    outcomes.append(outcome)
    if killed:
      kills += 1
      continue
    assert run.proc.returncode == 0, text[-3000:]
    assert [e for e in _entries(workdir / "checkpoints") if not e.isdigit()] == []
    _assert_same_state(workdir / "checkpoints", reference / "checkpoints", KILL_STEPS)
    # The final samples and FVD exist even when a kill came after the last checkpoint.
    fvd = [
      json.loads((w / "eval" / f"{KILL_STEPS}.json").read_text())["results"]["proxy"]["fvd"]
      for w in (workdir, reference)
    ]
    assert fvd[0] == fvd[1] and (workdir / "samples" / str(KILL_STEPS) / "sampling.json").exists()
    outcomes[-1] += ", end state bitwise equal, same final FVD"
    if kills >= 10:
      break
    shutil.rmtree(workdir)
  report("SIGKILL trials:\n  " + "\n  ".join(outcomes))
  assert kills >= 10 and outcomes[-1].endswith("same final FVD"), outcomes


# ---------------------------------------------------------------------------- two processes

_WORKER = """
import importlib, sys
import jax

from absl import logging

logging.set_verbosity(logging.INFO)  # "Resumed from step N"
pid, port, workdir, data_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
sys.path.insert(0, "tests")
import tiny_digan
from digan_jax import checkpointing, steps, train

steps.DiganSteps = tiny_digan.fast_compile_steps()
if pid == 1:  # this process alone sees step 6 damaged (a bad cache, a flaky mount)
  real = checkpointing.read_items

  def read_items(directory, step, items):
    if int(step) == 6:
      raise ValueError("DATA_LOSS: injected on process 1 only")
    return real(directory, step, items)

  checkpointing.read_items = read_items
config = importlib.import_module("configs.smoke").get_config()
config.data.data_dir = data_dir
config.train.num_steps = 3  # the restore is what is tested: nothing left to train after it
train.train_and_evaluate(config, workdir)
"""


def test_damage_seen_by_one_process_is_decided_by_all(six_steps, data_dir, tmp_path, report):
  """Two processes (gloo) resume a workdir whose step 6 reads back on process 0 but not on process
  1: both set it aside and restore 3, instead of hanging in mismatched collectives."""
  port = tiny_digan.free_port()
  workdir = _copy(six_steps, tmp_path)
  env = dict(
    os.environ,
    XLA_FLAGS="--xla_force_host_platform_device_count=2",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=str(REPO),
  )
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", _WORKER, str(i), str(port), str(workdir), str(data_dir)],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  try:
    outputs = [p.communicate(timeout=600)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-4000:]
    assert "Resumed from step 3" in out, out[-3000:]
  assert "is damaged (ValueError: DATA_LOSS: injected on process 1 only)" in outputs[1]
  assert "is damaged (unreadable on another process)" in outputs[0]
  entries = _entries(workdir / "checkpoints")
  assert entries[0] == "3" and entries[1].startswith("6.corrupt-") and len(entries) == 2, entries
  report("step 6 unreadable on process 1 only: both processes resumed from 3")
