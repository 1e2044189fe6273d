"""FVD/KVD of a generator under a protocol, the result files, and the run's `Evaluator`.

- `evaluate`: real features (cached) and fake features per trial -> float64 FVD/KVD -> mean +-
  population std, as a result dict that carries the protocol card.
- `record_result`: results of one step side by side in <dir>/<step>.json (process 0 writes).
- `Evaluator`: built from a config; the training loop asks it which protocols are due at a step and
  calls it. `config.eval.protocol` lists one or more protocols, each with its own cadence:
  "proxy" (every config.eval_every_steps, plus config.eval.at_start / at_end), "proxy@5000"
  (every 5000 steps), "digan@end", "digan@start". The first one listed keeps the best checkpoint.
- `run_eval_mode`: `--mode=eval`, the Evaluator applied to a checkpoint's EMA generator.

Protocols live in protocols.py, their cadences in schedule.py, the feature graphs in features.py,
real clips and the feature cache in real_data.py.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging
from etils import epath
from jax.sharding import Mesh

from digan_jax import fileio, sharding
from digan_jax.errors import UserError
from digan_jax.evaluation import features, metrics, protocols, real_data
from digan_jax.evaluation.protocols import Protocol
from digan_jax.evaluation.schedule import Schedule, enabled, schedules  # noqa: F401 (API)


def fvd_kvd(real, fake, protocol: Protocol) -> tuple[float, float]:
  """(FVD, KVD) of one trial under the protocol's covariance and square-root conventions."""
  fvd = metrics.frechet_distance(
    real, fake, unbiased=protocol.covariance == "unbiased", method=protocol.sqrt_method
  )
  return fvd, metrics.kernel_distance(real, fake)


def _summary(values: list[float]) -> tuple[float, float]:
  return float(np.mean(values)), float(np.std(values))  # population std, as DIGAN reports


def evaluate(
  generator,
  g_ema_vars,
  protocol: Protocol | str,
  real_clips,
  *,
  dataset_fingerprint: str | None = None,
  step: int | None = None,
  mesh: Mesh | None = None,
  batch_size: int = 16,
  cache_dir=None,
  out_path=None,
  i3d_vars=None,
  frames_per_chunk: int | None = 16,
  progress: bool = True,
  floor_clips=None,
) -> dict[str, Any]:
  """FVD and KVD of a generator under a protocol: mean +- population std over its trials.

  generator: a Generator or GeneratorConfig; g_ema_vars its (EMA) variables. real_clips: see
  `real_feature_sets`. floor_clips: real clips disjoint from real_clips (another split), which
  stand in for the fakes to give the protocol's floor (`floor`). Returns the result dict (protocol
  card, per-trial values, summary, timing, floor) and, with out_path, writes it as JSON (atomically).
  """
  protocol = protocols.get_protocol(protocol)
  generator = features.as_generator(generator)
  mesh = mesh or sharding.data_parallel_mesh()
  i3d_vars = features.i3d_variables() if i3d_vars is None else i3d_vars
  wall_start = time.perf_counter()
  feature_kwargs = dict(mesh=mesh, batch_size=batch_size, i3d_vars=i3d_vars)
  real_sets, real_info = real_data.real_feature_sets(
    real_clips,
    protocol,
    dataset_fingerprint=dataset_fingerprint,
    cache_dir=cache_dir,
    progress=progress,
    **feature_kwargs,
  )
  fvds, kvds, fake_seconds = [], [], 0.0
  for trial in range(protocol.num_trials):
    start = time.perf_counter()
    fake = features.fake_features(
      generator,
      g_ema_vars,
      protocol,
      *protocol.fake_seeds(trial),
      mesh=mesh,
      batch_size=batch_size,
      i3d_vars=i3d_vars,
      frames_per_chunk=frames_per_chunk,
      progress=progress,
    )
    fake_seconds += time.perf_counter() - start
    fvd, kvd = fvd_kvd(real_sets[trial % len(real_sets)], fake, protocol)
    fvds.append(fvd)
    kvds.append(kvd)
  fvd_mean, fvd_std = _summary(fvds)
  kvd_mean, kvd_std = _summary(kvds)
  num_real_computed = 0 if real_info.get("cache_hit") else real_sets.shape[0] * real_sets.shape[1]
  floor_result = None
  if floor_clips is not None:
    floor_result, floor_info = floor(
      real_sets, floor_clips, protocol, cache_dir=cache_dir, progress=progress, **feature_kwargs
    )
    if not floor_info.get("cache_hit"):
      num_real_computed += floor_result["num_clips"] * floor_result["num_sets"]
  device = jax.devices()[0]
  result = {
    "protocol": protocol.name,
    "card": protocol.card(),
    "step": step,
    "dataset_fingerprint": real_info["dataset_fingerprint"],
    "real_selection": real_info.get("selection"),
    "real_cache": real_info["cache"],
    "real_cache_hit": bool(real_info.get("cache_hit")),
    "generator_resolution": generator.config.resolution,
    "fvd": fvd_mean,
    "fvd_std": fvd_std,
    "kvd": kvd_mean,
    "kvd_std": kvd_std,
    "fvd_trials": fvds,
    "kvd_trials": kvds,
    "floor": floor_result,
    "timing": {
      "wall_s": time.perf_counter() - wall_start,
      "fake_features_s": fake_seconds,
      "real_features_s": real_info["seconds"],
      "fake_clips": protocol.num_trials * protocol.num_fake,
      "real_clips_computed": num_real_computed,
      "fake_clips_per_s": protocol.num_trials * protocol.num_fake / max(fake_seconds, 1e-9),
    },
    "environment": {
      "backend": jax.default_backend(),
      "device": getattr(device, "device_kind", str(device)),
      "num_devices": int(mesh.size),
      "processes": jax.process_count(),
      "jax": jax.__version__,
      "batch_size": sharding.padded_batch(mesh, batch_size),
    },
  }
  if out_path is not None and jax.process_index() == 0:
    fileio.write_json(out_path, result)
  return result


def floor(
  real_sets, floor_clips, protocol: Protocol, *, cache_dir=None, progress=True, **feature_kwargs
) -> tuple[dict[str, Any], dict]:
  """The protocol's floor: FVD/KVD between its real sets and as many clips as it has fakes, drawn
  from a disjoint real source. A generator that samples the data distribution exactly scores
  this on average, so FVD differences are read against (initial - floor), not against 0: with
  a few hundred clips on 400 features the floor is far above 0."""
  stand_in = dataclasses.replace(protocol, num_real=protocol.num_fake)
  floor_sets, info = real_data.real_feature_sets(
    floor_clips, stand_in, cache_dir=cache_dir, progress=progress, **feature_kwargs
  )
  values = [
    fvd_kvd(real_sets[t % len(real_sets)], floor_sets[t % len(floor_sets)], protocol)
    for t in range(protocol.num_trials)
  ]
  fvd_mean, fvd_std = _summary([v[0] for v in values])
  kvd_mean, kvd_std = _summary([v[1] for v in values])
  result = {
    "fvd": fvd_mean,
    "fvd_std": fvd_std,
    "kvd": kvd_mean,
    "kvd_std": kvd_std,
    "fvd_trials": [v[0] for v in values],
    "num_clips": protocol.num_fake,
    "num_sets": len(floor_sets),
    "source": info.get("selection"),
    "dataset_fingerprint": info["dataset_fingerprint"],
  }
  return result, info


def gap_closed(initial_fvd: float, fvd: float, floor_fvd: float) -> float | None:
  """(initial - fvd) / (initial - floor): the share of the distance to the protocol's floor that
  training closed (1 = as close as two real sets; None when the initial FVD is at the floor)."""
  gap = initial_fvd - floor_fvd
  return None if gap <= 0 else float((initial_fvd - fvd) / gap)


def describe(result: Mapping[str, Any]) -> str:
  """One log line: FVD, KVD, the clip counts, and the floor and gap closed when known."""
  card = result["card"]
  text = (
    f"FVD {result['fvd']:.2f} +- {result['fvd_std']:.2f}, KVD {result['kvd']:.2f} "
    f"({result['protocol']}, {card['num_fake']} vs {card['num_real']} clips, "
    f"{card['num_trials']} trial(s))"
  )
  if result.get("floor"):
    text += (
      f"; floor FVD {result['floor']['fvd']:.2f}, KVD {result['floor']['kvd']:.2f} "
      "(two disjoint real sets of these sizes)"
    )
  gap = result.get("gap")
  if gap and gap.get("closed") is not None:
    text += (
      f"; closed {gap['closed']:.2f} of the gap from step {gap['initial_step']}'s "
      f"FVD {gap['initial_fvd']:.2f} to the floor"
    )
  return text


def record_result(out_dir, step: int, result: Mapping[str, Any]) -> epath.Path:
  """Adds `result` to <out_dir>/<step>.json ({"step": s, "results": {protocol: result}}), atomically.

  Several protocols of one step live side by side; only process 0 writes.
  """
  path = fileio.as_path(out_dir) / f"{step}.json"
  if jax.process_index() != 0:
    return path
  record = {"step": step, "results": {}}
  if path.is_file():
    try:
      record = fileio.read_json(path)
    except (OSError, json.JSONDecodeError):
      pass  # a damaged file is replaced, never merged into
  record.setdefault("results", {})[result["protocol"]] = dict(result)
  record["step"] = step
  fileio.write_json(path, record)
  return path


# ----------------------------------------------------------------------------------------------
# The run's evaluator.


class Evaluator:
  """FVD/KVD of a run's EMA generator under its scheduled protocols, with results in
  WORKDIR/eval/<step>.json and real features cached in WORKDIR/eval/real_cache/."""

  def __init__(self, config, workdir, data_dir: str, name: str, mesh: Mesh, gcfg):
    from digan_jax.data import storage  # pylint: disable=g-import-not-at-top
    from digan_jax.models.generator import Generator  # pylint: disable=g-import-not-at-top

    self.schedules = schedules(config)
    floor_split = config.eval.get("floor_split", "")

    def sources(split):
      return {
        s.protocol.name: real_data.clip_source_from_dataset(
          data_dir,
          name,
          split,
          s.protocol,
          resolution=gcfg.resolution,
          batch_size=config.eval.batch_size,
        )
        for s in self.schedules
      }

    try:
      self.sources = sources(config.data.eval_split)
      self.floor_sources = sources(floor_split) if floor_split else {}
    except (ValueError, storage.DatasetNotFoundError, FileNotFoundError) as e:
      raise UserError(f"evaluation: {e}") from e
    self.mesh, self.batch_size = mesh, int(config.eval.batch_size)
    self.out_dir = fileio.as_path(workdir) / "eval"
    self.generator = Generator(gcfg)  # one instance: its compiled graph is reused across calls

  @property
  def primary(self) -> str:
    """The protocol whose FVD picks the best checkpoint."""
    return self.schedules[0].protocol.name

  def due(self, step: int, *, start: bool = False, end: bool = False) -> list[Protocol]:
    return [s.protocol for s in self.schedules if s.due(step, start=start, end=end)]

  def missing(self, step: int, *, end: bool = False) -> list[Protocol]:
    """The protocols due at `step` with no result in eval/<step>.json (a run stopped between its
    checkpoint of `step` and their end)."""
    path = self.out_dir / f"{step}.json"
    try:
      done = set(fileio.read_json(path).get("results", {})) if path.is_file() else set()
    except (OSError, ValueError):
      done = set()
    due = self.due(step, end=end)
    # One decision for all processes (the evaluation is collective): process 0's reading.
    mask = sharding.from_process_0(sum(1 << i for i, p in enumerate(due) if p.name not in done))
    return [p for i, p in enumerate(due) if mask >> i & 1]

  def __call__(self, g_ema, step: int, due: list[Protocol] | None = None) -> dict[str, dict]:
    """{protocol name: result} for `due` (default: every scheduled protocol), each recorded."""
    results = {}
    for protocol in due if due is not None else [s.protocol for s in self.schedules]:
      result = evaluate(
        self.generator,
        g_ema,
        protocol,
        self.sources[protocol.name],
        step=step,
        mesh=self.mesh,
        batch_size=self.batch_size,
        cache_dir=self.out_dir / "real_cache",
        progress=False,
        floor_clips=self.floor_sources.get(protocol.name),
      )
      if step and result["floor"]:
        result["gap"] = self._gap(protocol.name, result)
      try:
        record_result(self.out_dir, step, result)
      except OSError as e:  # the FVD still reaches the metrics; a full disk must not end the run
        logging.error("step %d: %s could not be written (%s)", step, self.out_dir, e)
      results[protocol.name] = result
    return results

  def _gap(self, name: str, result) -> dict[str, Any] | None:
    """The gap closed since step 0's result of the same protocol (config.eval.at_start)."""
    path = self.out_dir / "0.json"
    try:
      initial = fileio.read_json(path)["results"][name] if path.is_file() else None
    except (OSError, ValueError, KeyError):
      initial = None
    if initial is None or initial["card"] != result["card"]:
      return None
    return {
      "initial_step": 0,
      "initial_fvd": initial["fvd"],
      "floor_fvd": result["floor"]["fvd"],
      "closed": gap_closed(initial["fvd"], result["fvd"], result["floor"]["fvd"]),
    }


def run_eval_mode(config, workdir) -> dict[str, dict]:
  """--mode=eval: the configured protocols on a checkpoint's EMA generator (config.eval.step, or the
  latest), added to WORKDIR/eval/<step>.json."""
  from digan_jax import checkpointing, config_checks  # pylint: disable=g-import-not-at-top
  from digan_jax.data import resolve  # pylint: disable=g-import-not-at-top

  config_checks.validate(config, jax.device_count())
  workdir = fileio.as_path(workdir)
  step = None if config.eval.step < 0 else int(config.eval.step)
  try:
    gcfg, g_ema, step = checkpointing.restore_generator(
      workdir / "checkpoints", step, step_flag="--config.eval.step"
    )
  except FileNotFoundError as e:
    raise UserError(f"{e}; train first or point --workdir at a run") from e
  data_dir, name = resolve.resolve_dataset(config, workdir)
  mesh = sharding.make_mesh(config.mesh)
  results = Evaluator(config, workdir, data_dir, name, mesh, gcfg)(g_ema, step)
  for result in results.values():
    logging.info("step %d: %s", step, describe(result))
  return results
