"""Training driver: sharded state, loop, logging, checkpoints, samples, FVD, resume, preemption.

Workdir layout: config.json, manifest.json (one entry per start), checkpoints/<step>/ (Orbax:
`state`, `g_ema`, `model`), best/<step>/ (the EMA generator with the best FVD), TensorBoard events,
samples/<step>/, eval/<step>.json. A run restarts from the newest complete checkpoint in its workdir; the data
sequence and the latents are pure functions of (seed, step), so an interrupted and resumed run ends
where an uninterrupted one does.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time

import jax
import numpy as np
from absl import logging
from etils import epath

from digan_jax import checkpointing, config_checks, fileio, run_clock, sampling, sharding
from digan_jax.data import resolve
from digan_jax.errors import NonFiniteLossError, UserError
from digan_jax.evaluation import evaluator as evaluator_lib
from digan_jax.models import factory

_BATCH_KEYS = ("frames", "delta_t")


# ---------------------------------------------------------------------------- workdir & data


def _prepare_workdir(workdir) -> epath.Path:
  path = fileio.as_path(workdir)
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".write_test_{jax.process_index()}"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise UserError(
      f"cannot write to --workdir={workdir} ({e.strerror or e}); pass a writable directory"
    ) from e
  return path


def write_manifest(workdir: epath.Path, config, mesh) -> dict:
  """Append this start (git hash, command, config, topology) to WORKDIR/manifest.json."""
  import subprocess
  import sys

  try:
    git = (
      subprocess.run(
        ["git", "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        timeout=10,
        cwd=os.path.dirname(os.path.abspath(__file__)),
      ).stdout.strip()
      or None
    )
  except (OSError, subprocess.SubprocessError):
    git = None
  entry = dict(
    time=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    git_commit=git,
    command=sys.argv,
    config=json.loads(config.to_json_best_effort()),
    jax_version=jax.__version__,
    backend=jax.default_backend(),
    device_kind=jax.devices()[0].device_kind,
    process_count=jax.process_count(),
    device_count=jax.device_count(),
    local_device_count=jax.local_device_count(),
    mesh=dict(mesh.shape),
  )
  path = workdir / "manifest.json"
  starts = json.loads(path.read_text()) if path.exists() else []
  starts.append(entry)
  fileio.write_bytes(path, json.dumps(starts, indent=1).encode())
  return entry


def total_steps(config) -> int:
  if config.train.num_steps > 0:
    return int(config.train.num_steps)
  return int(math.ceil(config.train.total_kimg * 1000 / config.train.global_batch_size))


def _train_iterator(config, data_dir, name, mesh, start_step):
  from digan_jax.data import pipeline, storage  # pylint: disable=g-import-not-at-top

  data = config.data
  rows = sharding.process_rows(mesh, config.train.global_batch_size)
  try:
    return pipeline.make_train_iterator(
      data_dir,
      name,
      data.train_split,
      rows.stop - rows.start,
      num_frames=data.num_frames,
      resolution=config.model.generator.resolution,
      seed=config.train.seed,
      start_step=start_step,
      process_index=rows.start // (rows.stop - rows.start),
      process_count=config.train.global_batch_size // (rows.stop - rows.start),
      frame_stride=data.frame_stride,
      clip_hop=data.clip_hop,
      policy=data.clip_sampling,
      random_flip=data.mirror,
    )
  except (storage.DatasetNotFoundError, FileNotFoundError, ValueError) as e:
    raise UserError(str(e)) from e


def _device_batch(batch, mesh, c_dim: int):
  keep = _BATCH_KEYS + (("label",) if c_dim else ())
  return sharding.global_batch_from_local({k: batch[k] for k in keep}, mesh)


# ---------------------------------------------------------------------------- checkpoints


# ---------------------------------------------------------------------------- preemption


class PreemptionFlag:
  """SIGTERM/SIGINT -> save a checkpoint at the next step boundary and exit cleanly.

  With several processes the flag is agreed on collectively every `sync_every` steps, so all
  processes stop (and save) at the same step.
  """

  def __init__(self, sync_every: int):
    self.local = False
    self.sync_every = max(1, sync_every)
    self._previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handler)
      except ValueError:  # not the main thread (e.g. called from a test runner thread)
        pass

  def _handler(self, signum, frame):
    del frame
    logging.warning("signal %d received: saving a checkpoint and stopping", signum)
    self.local = True

  def should_stop(self, step: int) -> bool:
    if jax.process_count() == 1:
      return self.local
    if step % self.sync_every:
      return False
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    flags = multihost_utils.process_allgather(np.array([self.local], np.int32))
    return bool(np.any(flags))

  def restore(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


# ---------------------------------------------------------------------------- loop


class NonFiniteGuard:
  """Stops a run whose losses stay non-finite (after the official per-step gradient sanitising).

  Call `check(step, metrics)` with every fetched metrics dict; after `patience` consecutive checks
  with a non-finite `train/loss_*` it raises NonFiniteLossError. The trainer writes no checkpoint
  while `count > 0` nor from a state with a non-finite value (`state_is_finite`), so the last good
  checkpoint stays the newest.
  """

  def __init__(self, patience: int):
    if patience < 1:
      raise ValueError(f"patience must be >= 1, got {patience}")
    self.patience = int(patience)
    self.count = 0
    self.first_bad_step = None

  def _strike(self, step: int) -> bool:
    """Counts one bad check; True once `patience` of them came in a row."""
    self.count += 1
    if self.first_bad_step is None:
      self.first_bad_step = step
    return self.count >= self.patience

  def check(self, step: int, metrics) -> bool:
    """True when all losses are finite; raises after `patience` non-finite checks in a row."""
    bad = {
      k: float(v)
      for k, v in metrics.items()
      if k.startswith("train/loss") and not math.isfinite(float(np.asarray(v)))
    }
    if not bad:
      self.count, self.first_bad_step = 0, None
      return True
    if self._strike(step):
      raise NonFiniteLossError(
        f"training stopped at step {step}: losses have been non-finite for {self.count} "
        f"consecutive checks since step {self.first_bad_step} ({bad}). The last checkpoint "
        "written before that is intact; resume from it with a lower config.train.base_lr, "
        "config.model.compute_dtype='float32', or a larger config.train.r1_gamma."
      )
    return False

  def check_skipped(self, step: int, skipped: int, steps: int) -> None:
    """Policy "skip": raises after `patience` log intervals in a row in which all steps were
    skipped (nothing trains any more)."""
    if skipped:
      logging.warning(
        "step %d: %d of the last %d iterations had non-finite losses or state and were skipped",
        step,
        skipped,
        steps,
      )
    if skipped < steps:
      self.count, self.first_bad_step = 0, None
      return
    if self._strike(step):
      raise NonFiniteLossError(
        f"training stopped at step {step}: every iteration since step {self.first_bad_step} was "
        "non-finite and skipped. The state is the last finite one; resume from the last "
        "checkpoint with a lower config.train.base_lr, config.model.compute_dtype='float32', or "
        "a larger config.train.r1_gamma."
      )


def _host_metrics(metrics) -> dict[str, float]:
  return {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}


def train_and_evaluate(config, workdir) -> dict:
  """Train `config` in `workdir` (resuming if it holds a checkpoint); returns final metrics."""
  from clu import metric_writers, periodic_actions  # pylint: disable=g-import-not-at-top
  from digan_jax import steps as steps_lib  # pylint: disable=g-import-not-at-top

  config_checks.validate(config, jax.device_count())  # before anything is written
  workdir = _prepare_workdir(workdir)
  checkpointing.check_compatible(workdir, config)
  mesh = sharding.make_mesh(config.mesh)
  digan_steps = steps_lib.DiganSteps(config, mesh)
  gcfg, dcfg = factory.generator_config(config.model), factory.discriminator_config(config.model)
  if jax.process_index() == 0:
    fileio.write_bytes(workdir / "config.json", config.to_json_best_effort(indent=1).encode())
    write_manifest(workdir, config, mesh)
  data_dir, name = resolve.resolve_dataset(config, workdir)
  ckpts = checkpointing.TrainCheckpoints(workdir, config, gcfg, dcfg)
  num_steps = total_steps(config)

  state, start = ckpts.restore_newest(digan_steps.abstract_state)
  if start is None:
    state = digan_steps.create_train_state()
    start = 0
  else:
    logging.info("Resumed from step %d", start)
  batches = _train_iterator(config, data_dir, name, mesh, start)
  train_step = digan_steps.jit_train_step()
  guard = NonFiniteGuard(config.train.nonfinite_patience)

  writer = metric_writers.create_default_writer(
    workdir, just_logging=jax.process_index() > 0 or not config.tensorboard
  )
  hooks = [
    periodic_actions.ReportProgress(
      num_train_steps=num_steps, writer=writer, every_steps=config.log_every_steps
    )
  ]
  if config.profile and jax.process_index() == 0:
    hooks.append(periodic_actions.Profile(num_profile_steps=5, logdir=os.fspath(workdir)))
  evaluator = (
    evaluator_lib.Evaluator(config, workdir, data_dir, name, mesh, gcfg)
    if evaluator_lib.enabled(config)
    else None
  )
  clock = run_clock.RunClock(
    num_steps, config.sample_every_steps, evaluator.schedules if evaluator else ()
  )
  if evaluator is not None and start == 0:
    _evaluate_and_record(evaluator, evaluator.due(0, start=True), ckpts, writer, 0, state, clock)
  final_metrics: dict[str, float] = {}
  if start > 0:  # what a stop right after the checkpoint of `start` left undone
    done = workdir / "samples" / str(start) / "sampling.json"  # written last by sample_to_dir
    if _samples_due(config, start, num_steps) and not done.exists():
      _write_samples_logged(config, workdir, state, start, writer)
    if evaluator is not None:
      due = evaluator.missing(start, end=start == num_steps)
      final_metrics.update(_evaluate_and_record(evaluator, due, ckpts, writer, start, state, clock))
  preempt = PreemptionFlag(config.log_every_steps)
  step = start
  interval, n_log, first_interval = run_clock.IntervalTimer(), 0, True
  skipped, skipped_total = 0, 0  # iterations skipped (policy "skip"): this interval, this start
  try:
    while step < num_steps:
      batch = _device_batch(next(batches), mesh, gcfg.c_dim)
      state, metrics = train_step(state, batch, digan_steps.lazy_phases(step))
      if digan_steps.skip_nonfinite:  # summed on device: no host sync per step
        skipped = metrics["train/skipped"] + (skipped if n_log else 0)
      step += 1
      n_log += 1
      for hook in hooks:
        hook(step)
      if step % config.log_every_steps == 0 or step == num_steps:
        final_metrics = _host_metrics(metrics)
        if digan_steps.skip_nonfinite:
          n_skipped = int(jax.device_get(skipped))
          skipped_total += n_skipped
          final_metrics["train/skipped"] = float(n_skipped)
          final_metrics["train/skipped_steps"] = float(skipped_total)
          guard.check_skipped(step, n_skipped, n_log)
        else:
          guard.check(step, final_metrics)  # raises after nonfinite_patience bad checks in a row
        dt = interval.seconds()
        final_metrics["perf/steps_per_sec"] = n_log / dt
        final_metrics["perf/videos_per_sec"] = n_log * config.train.global_batch_size / dt
        final_metrics["progress/kimg"] = step * config.train.global_batch_size / 1000
        writer.write_scalars(step, final_metrics)
        if jax.process_index() == 0:
          rate = final_metrics["perf/steps_per_sec"]
          logging.info("%s", clock.describe(step, rate, compiling=first_interval))
        n_log, first_interval = 0, False
        interval.reset()
      if preempt.should_stop(step):
        saved = _save_if_finite(ckpts, step, state, guard)
        logging.warning(
          "stopped at step %d after a termination signal; %s",
          step,
          "checkpoint saved" if saved else "no checkpoint (non-finite state)",
        )
        break
      if step % config.checkpoint_every_steps == 0 or step == num_steps:
        _save_if_finite(ckpts, step, state, guard)
      with interval.excluded():
        if _samples_due(config, step, num_steps):
          clock.timed("samples", _write_samples_logged, config, workdir, state, step, writer)
        if evaluator is not None:
          due = evaluator.due(step, end=step == num_steps)
          final_metrics.update(
            _evaluate_and_record(evaluator, due, ckpts, writer, step, state, clock)
          )
    ckpts.finish()  # raises when the last save failed, naming the newest intact checkpoint
  finally:
    ckpts.close()
    writer.flush()
    preempt.restore()
  return final_metrics


def _samples_due(config, step: int, num_steps: int) -> bool:
  every = config.sample_every_steps
  return bool(every) and (step % every == 0 or step == num_steps)


def _write_samples_logged(config, workdir, state, step: int, writer) -> None:
  try:
    write_samples(config, workdir, state, step, writer)
  except OSError as e:  # samples are a by-product: a full disk must not end the run
    logging.error("step %d: samples could not be written (%s)", step, e)


def _save_if_finite(ckpts, step: int, state, guard) -> bool:
  """Checkpoint unless the last checked losses or any value of the state are non-finite, so the
  newest checkpoint is always one that training can resume from."""
  from digan_jax import steps as steps_lib  # pylint: disable=g-import-not-at-top

  if guard.count > 0:
    return False
  if not bool(jax.device_get(steps_lib.state_is_finite(state))):
    logging.error("step %d: the training state holds non-finite values; not checkpointed", step)
    return False
  ckpts.save(step, state)
  return True


def _evaluate_and_record(evaluator, due, ckpts, writer, step, state, clock=None) -> dict:
  """FVD/KVD of the due protocols as scalars: eval/fvd for the primary protocol (which also keeps
  the best checkpoint), eval/<protocol>/fvd for the others."""
  if not due:
    return {}
  scalars = {}
  for name, result in evaluator(state.g_ema, step, due).items():
    if clock is not None:  # later evaluations reuse the cached real features: fakes only
      clock.record(name, result["timing"]["fake_features_s"])
    prefix = "eval" if name == evaluator.primary else f"eval/{name}"
    scalars.update({f"{prefix}/fvd": result["fvd"], f"{prefix}/kvd": result["kvd"]})
    logging.info("step %d: %s", step, evaluator_lib.describe(result))
    if name == evaluator.primary:
      ckpts.save_if_best(step, state, result["fvd"])
  writer.write_scalars(step, scalars)
  return scalars


def write_samples(config, workdir, state, step: int, writer=None):
  """Sample videos of the EMA generator under samples/<step>/ (process 0 only)."""
  if jax.process_index() != 0:
    return None
  g_ema = jax.device_get(state.g_ema)
  out = sampling.sample_to_dir(
    factory.generator_config(config.model),
    g_ema,
    workdir / "samples" / str(step),
    **sampling.config_kwargs(config.sample),
  )
  if writer is not None:
    grid = sampling.video_grid(out["videos"])
    writer.write_images(
      step, {"samples/first_frame": grid[None, 0], "samples/last_frame": grid[None, -1]}
    )
  return out
