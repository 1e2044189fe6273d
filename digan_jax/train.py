"""Training driver: sharded state, loop, logging, checkpoints, samples, FVD, resume, preemption.

Workdir layout (DESIGN §6): config.json, checkpoints/<step>/ (Orbax: `state`, `g_ema`, `model`),
best/<step>/ (the EMA generator with the best FVD), TensorBoard events, samples/<step>/,
eval/<step>.json. A run restarts from the newest complete checkpoint in its workdir; the data
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
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from digan_jax import checkpointing, fileio, sharding
from digan_jax.errors import UserError
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
    raise UserError(f"cannot write to --workdir={workdir} ({e.strerror or e}); pass a writable "
                    "directory") from e
  return path


def write_manifest(workdir: epath.Path, config, mesh) -> dict:
  """Append this start (git hash, command, config, topology) to WORKDIR/manifest.json."""
  import subprocess
  import sys
  try:
    git = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                         cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    git = None
  entry = dict(
      time=time.strftime("%Y-%m-%dT%H:%M:%S%z"), git_commit=git, command=sys.argv,
      config=json.loads(config.to_json_best_effort()), jax_version=jax.__version__,
      backend=jax.default_backend(), device_kind=jax.devices()[0].device_kind,
      process_count=jax.process_count(), device_count=jax.device_count(),
      local_device_count=jax.local_device_count(), mesh=dict(mesh.shape))
  path = workdir / "manifest.json"
  starts = json.loads(path.read_text()) if path.exists() else []
  starts.append(entry)
  fileio.write_bytes(path, json.dumps(starts, indent=1).encode())
  return entry


def total_steps(config) -> int:
  if config.train.num_steps > 0:
    return int(config.train.num_steps)
  return int(math.ceil(config.train.total_kimg * 1000 / config.train.global_batch_size))


def resolve_dataset(config, workdir: epath.Path) -> tuple[str, str]:
  """(data_dir, name) of the training data; builds the embedded synthetic set when asked for."""
  data = config.data
  data_dir = data.data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser(
      "~/tensorflow_datasets")
  name = data.name
  if name == "synthetic_videos":
    from digan_jax.data import prepare, storage  # pylint: disable=g-import-not-at-top
    from digan_jax.data.builders import synthetic_videos  # pylint: disable=g-import-not-at-top
    if not data.data_dir:
      data_dir = os.fspath(workdir / "data")
    res = config.model.generator.resolution
    cfg_name = synthetic_videos.config_name(res, data.synthetic_num_videos,
                                            data.synthetic_num_test_videos, None, None, None)
    name = f"synthetic_videos/{cfg_name}"
    try:
      storage.find_dataset_dir(data_dir, name)
    except storage.DatasetNotFoundError:
      if jax.process_index() == 0:
        logging.info("Building %s in %s", name, data_dir)
        prepare.prepare_synthetic(data_dir, res, data.synthetic_num_videos,
                                  data.synthetic_num_test_videos)
      _sync("synthetic_dataset_built")
  return data_dir, name


def _sync(name: str):
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def _train_iterator(config, data_dir, name, mesh, start_step):
  from digan_jax.data import pipeline, storage  # pylint: disable=g-import-not-at-top
  data = config.data
  rows = sharding.process_rows(mesh, config.train.global_batch_size)
  try:
    return pipeline.make_train_iterator(
        data_dir, name, data.train_split, rows.stop - rows.start, num_frames=data.num_frames,
        resolution=config.model.generator.resolution, seed=config.train.seed, start_step=start_step,
        process_index=rows.start // (rows.stop - rows.start),
        process_count=config.train.global_batch_size // (rows.stop - rows.start),
        frame_stride=data.frame_stride, clip_hop=data.clip_hop, policy=data.clip_sampling,
        random_flip=data.mirror)
  except (storage.DatasetNotFoundError, FileNotFoundError, ValueError) as e:
    raise UserError(str(e)) from e


def _device_batch(batch, mesh, c_dim: int):
  keep = _BATCH_KEYS + (("label",) if c_dim else ())
  return sharding.global_batch_from_local({k: batch[k] for k in keep}, mesh)


# ---------------------------------------------------------------------------- checkpoints


def _check_compatible(workdir: epath.Path, config):
  """A workdir trained with other networks must not be resumed with this config."""
  saved = workdir / "config.json"
  if not saved.exists():
    return
  old = json.loads(saved.read_text())
  new = json.loads(config.to_json_best_effort())
  if old.get("model") != new.get("model"):
    diff = sorted(k for k in set(old.get("model", {})) | set(new["model"])
                  if old.get("model", {}).get(k) != new["model"].get(k))
    raise UserError(f"--workdir={workdir} holds a run of a different model (config.model.{diff} "
                    "differ); use a new --workdir or the original config")


class Checkpoints:
  """Orbax managers for the training state (last N) and the best EMA generator by FVD."""

  def __init__(self, workdir: epath.Path, config, gcfg, dcfg):
    options = ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True)
    self.last = ocp.CheckpointManager(workdir / "checkpoints", options=options)
    self.best = ocp.CheckpointManager(workdir / "best", options=ocp.CheckpointManagerOptions(
        max_to_keep=1, create=True))
    self.card = checkpointing.model_card(gcfg, dcfg)
    self.best_fvd = math.inf
    best_file = workdir / "best" / "best.json"
    if best_file.exists():
      self.best_fvd = json.loads(best_file.read_text())["fvd"]
    self.workdir = workdir

  def latest_step(self):
    return self.last.latest_step()

  def save(self, step: int, state):
    self.last.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), g_ema=ocp.args.StandardSave(state.g_ema),
        model=ocp.args.JsonSave(self.card)))

  def save_if_best(self, step: int, state, fvd: float):
    if not fvd < self.best_fvd:
      return
    self.best_fvd = fvd
    self.best.wait_until_finished()
    self.best.save(step, args=ocp.args.Composite(
        g_ema=ocp.args.StandardSave(state.g_ema), model=ocp.args.JsonSave(self.card)), force=True)
    self.best.wait_until_finished()
    if jax.process_index() == 0:
      fileio.write_json(self.workdir / "best" / "best.json", {"step": step, "fvd": fvd})

  def restore(self, step: int, abstract_state):
    target = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), abstract_state)
    try:
      out = self.last.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    except (ValueError, KeyError) as e:
      raise UserError(f"checkpoint {step} in {self.workdir / 'checkpoints'} does not match this "
                      f"config ({str(e).splitlines()[0][:200]}); use a new --workdir") from e
    return out["state"]

  def close(self):
    self.last.wait_until_finished()
    self.best.wait_until_finished()
    self.last.close()
    self.best.close()


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


def _host_metrics(metrics) -> dict[str, float]:
  return {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}


def train_and_evaluate(config, workdir) -> dict:
  """Train `config` in `workdir` (resuming if it holds a checkpoint); returns final metrics."""
  from clu import metric_writers, periodic_actions  # pylint: disable=g-import-not-at-top
  from digan_jax import steps as steps_lib  # pylint: disable=g-import-not-at-top

  workdir = _prepare_workdir(workdir)
  _check_compatible(workdir, config)
  try:
    mesh = sharding.make_mesh(config.mesh)
    steps = steps_lib.DiganSteps(config, mesh)
  except ValueError as e:
    raise UserError(str(e)) from e
  gcfg, dcfg = factory.generator_config(config.model), factory.discriminator_config(config.model)
  if jax.process_index() == 0:
    fileio.write_bytes(workdir / "config.json", config.to_json_best_effort(indent=1).encode())
    write_manifest(workdir, config, mesh)
  data_dir, name = resolve_dataset(config, workdir)
  ckpts = Checkpoints(workdir, config, gcfg, dcfg)
  num_steps = total_steps(config)

  start = ckpts.latest_step()
  start = sharding.from_process_0(-1 if start is None else start)
  start = None if start < 0 else start
  if start is None:
    state = steps.create_train_state()
    start = 0
  else:
    abstract = jax.eval_shape(steps.init, jax.random.PRNGKey(0))
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract, steps.state_shardings)
    state = ckpts.restore(start, abstract)
    logging.info("Resumed from step %d", start)
  batches = _train_iterator(config, data_dir, name, mesh, start)
  train_step = steps.jit_train_step()
  guard = steps_lib.NonFiniteGuard(config.train.nonfinite_patience)

  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0 or not config.tensorboard)
  hooks = [periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer,
                                           every_steps=config.log_every_steps)]
  if config.profile and jax.process_index() == 0:
    hooks.append(periodic_actions.Profile(num_profile_steps=5, logdir=os.fspath(workdir)))
  evaluator = (_Evaluator(config, workdir, data_dir, name, mesh, gcfg) if _eval_enabled(config)
               else None)
  if evaluator is not None and start == 0 and config.eval.at_start:
    _evaluate_and_record(evaluator, ckpts, writer, 0, state)
  preempt = PreemptionFlag(config.log_every_steps)
  final_metrics: dict[str, float] = {}
  step = start
  t_log, n_log = time.perf_counter(), 0
  try:
    while step < num_steps:
      batch = _device_batch(next(batches), mesh, gcfg.c_dim)
      state, metrics = train_step(state, batch, steps.should_r1(step))
      step += 1
      n_log += 1
      for hook in hooks:
        hook(step)
      if step % config.log_every_steps == 0 or step == num_steps:
        final_metrics = _host_metrics(metrics)
        guard.check(step, final_metrics)  # raises after nonfinite_patience bad checks in a row
        dt = time.perf_counter() - t_log
        final_metrics["perf/steps_per_sec"] = n_log / dt
        final_metrics["perf/videos_per_sec"] = n_log * config.train.global_batch_size / dt
        final_metrics["progress/kimg"] = step * config.train.global_batch_size / 1000
        writer.write_scalars(step, final_metrics)
        t_log, n_log = time.perf_counter(), 0
      if preempt.should_stop(step):
        saved = _save_if_finite(ckpts, step, state, guard)
        logging.warning("stopped at step %d after a termination signal; %s", step,
                        "checkpoint saved" if saved else "no checkpoint (non-finite state)")
        break
      if step % config.checkpoint_every_steps == 0 or step == num_steps:
        _save_if_finite(ckpts, step, state, guard)
      if config.sample_every_steps and (step % config.sample_every_steps == 0 or step == num_steps):
        write_samples(config, workdir, state, step, writer)
      if evaluator is not None and ((config.eval_every_steps and step % config.eval_every_steps == 0)
                                    or (step == num_steps and config.eval.at_end)):
        final_metrics.update(_evaluate_and_record(evaluator, ckpts, writer, step, state))
  finally:
    ckpts.close()
    writer.flush()
    preempt.restore()
  return final_metrics


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


def _eval_enabled(config) -> bool:
  return bool(config.eval_every_steps) or bool(config.eval.at_start) or bool(config.eval.at_end)


class _Evaluator:
  """FVD/KVD of the EMA generator under config.eval, real features computed once (and cached).

  config.eval.num_videos / num_repeats (> 0) scale the protocol down; the result card records it.
  Results go to WORKDIR/eval/<step>.json, real features to WORKDIR/eval/real_cache/.
  """

  def __init__(self, config, workdir, data_dir, name, mesh, gcfg):
    from digan_jax.data import storage  # pylint: disable=g-import-not-at-top
    from digan_jax.evaluation import evaluator  # pylint: disable=g-import-not-at-top
    from digan_jax.models.generator import Generator  # pylint: disable=g-import-not-at-top
    ev = config.eval
    overrides = {}
    if ev.num_videos > 0:
      overrides.update(num_fake=int(ev.num_videos), num_real=int(ev.num_videos))
    if ev.num_repeats > 0:
      overrides["num_trials"] = int(ev.num_repeats)
    try:
      self.protocol = evaluator.get_protocol(ev.protocol, **overrides)
      self.real = evaluator.clip_source_from_dataset(
          data_dir, name, config.data.eval_split, self.protocol, resolution=gcfg.resolution,
          batch_size=ev.batch_size)
    except (ValueError, storage.DatasetNotFoundError, FileNotFoundError) as e:
      raise UserError(f"evaluation: {e}") from e
    self.module, self.mesh, self.batch_size = evaluator, mesh, int(ev.batch_size)
    self.out_dir = workdir / "eval"
    self.generator = Generator(gcfg)  # one instance: its compiled graph is reused across calls

  def __call__(self, g_ema, step: int) -> dict:
    result = self.module.evaluate(
        self.generator, g_ema, self.protocol, self.real, step=step, mesh=self.mesh,
        batch_size=self.batch_size, cache_dir=os.fspath(self.out_dir / "real_cache"),
        progress=False)
    self.module.record_result(os.fspath(self.out_dir), step, result)
    return result


def _evaluate_and_record(evaluator, ckpts, writer, step, state) -> dict:
  result = evaluator(state.g_ema, step)
  scalars = {"eval/fvd": result["fvd"], "eval/kvd": result.get("kvd", float("nan"))}
  writer.write_scalars(step, scalars)
  logging.info("step %d: FVD %.2f (%s)", step, result["fvd"], result.get("protocol"))
  ckpts.save_if_best(step, state, result["fvd"])
  return scalars


def write_samples(config, workdir, state, step: int, writer=None):
  """Sample videos of the EMA generator under samples/<step>/ (process 0 only)."""
  from digan_jax import sampling  # pylint: disable=g-import-not-at-top
  if jax.process_index() != 0:
    return None
  s = config.sample
  g_ema = jax.device_get(state.g_ema)
  out = sampling.sample_to_dir(
      factory.generator_config(config.model), g_ema, os.fspath(workdir / "samples" / str(step)),
      num_videos=s.num_videos, num_frames=s.num_frames, t_end=s.t_end, seed=s.seed,
      motion_seed=s.motion_seed, scale=s.scale, zoom=s.zoom, fps=s.fps)
  if writer is not None:
    grid = sampling.video_grid(out["videos"])
    writer.write_images(step, {"samples/first_frame": grid[None, 0],
                               "samples/last_frame": grid[None, -1]})
  return out


# ---------------------------------------------------------------------------- other modes


def evaluate(config, workdir) -> dict:
  """--mode=eval: FVD of a checkpoint's EMA generator, added to WORKDIR/eval/<step>.json."""
  workdir = fileio.as_path(workdir)
  step = None if config.eval.step < 0 else int(config.eval.step)
  try:
    gcfg, g_ema, step = checkpointing.restore_generator(workdir / "checkpoints", step)
  except FileNotFoundError as e:
    raise UserError(f"{e}; train first or point --workdir at a run") from e
  data_dir, name = resolve_dataset(config, _prepare_workdir(workdir))
  try:
    mesh = sharding.make_mesh(config.mesh)
  except ValueError as e:
    raise UserError(str(e)) from e
  result = _Evaluator(config, workdir, data_dir, name, mesh, gcfg)(g_ema, step)
  logging.info("step %d: FVD %.2f +- %.2f, KVD %.2f (%s, %d vs %d clips, %d trials)", step,
               result["fvd"], result["fvd_std"], result["kvd"], result["protocol"],
               result["card"]["num_fake"], result["card"]["num_real"], result["card"]["num_trials"])
  return result


def sample(config, workdir):
  """--mode=sample: videos from the latest checkpoint's EMA generator per config.sample."""
  from digan_jax import sampling  # pylint: disable=g-import-not-at-top
  workdir = fileio.as_path(workdir)
  try:
    gcfg, g_ema, step = checkpointing.restore_generator(workdir / "checkpoints")
  except FileNotFoundError as e:
    raise UserError(f"{e}; train first or point --workdir at a run") from e
  s = config.sample
  out_dir = os.fspath(workdir / "samples" / f"{step}_cli")
  sampling.sample_to_dir(gcfg, g_ema, out_dir, num_videos=s.num_videos, num_frames=s.num_frames,
                         t_end=s.t_end, seed=s.seed, motion_seed=s.motion_seed, scale=s.scale,
                         zoom=s.zoom, fps=s.fps)
  logging.info("wrote samples of step %d to %s", step, out_dir)
  return out_dir
