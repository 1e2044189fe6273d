"""Every check of a run's configuration, in one place and one message style.

`validate(config, num_devices)` raises a ConfigError "config.<key>=<value>: <problem>; <fix>" for
the first bad value, before anything is built, compiled or written. The trainer, the step builder
and the eval mode call it; library functions below it keep only argument checks of their own.
"""

from __future__ import annotations

import re

from digan_jax.errors import ConfigError

_DTYPES = ("float32", "bfloat16")
NONFINITE_POLICIES = ("stop", "skip")


def _fail(key: str, value, problem: str):
  raise ConfigError(f"config.{key}={value!r}: {problem}")


def _positive_int(section, key: str, path: str):
  value = section[key]
  if int(value) != value or value < 1:
    _fail(path, value, "must be a positive integer")
  return int(value)


def validate(config, num_devices: int | None = None) -> None:
  """Raises ConfigError for the first invalid setting; num_devices adds the mesh/batch checks."""
  from digan_jax import augment, sharding  # pylint: disable=g-import-not-at-top
  from digan_jax.evaluation import schedule  # pylint: disable=g-import-not-at-top

  model = config.model
  if model.compute_dtype not in _DTYPES:
    _fail("model.compute_dtype", model.compute_dtype, f"choose one of {list(_DTYPES)}")
  from digan_jax.models.layers import REMAT_POLICIES  # pylint: disable=g-import-not-at-top

  for key in ("generator_remat", "discriminator_remat"):
    if model[key] not in REMAT_POLICIES:
      _fail(f"model.{key}", model[key], f"choose one of {list(REMAT_POLICIES)}")

  tc = config.train
  batch = _positive_int(tc, "global_batch_size", "train.global_batch_size")
  micro = _positive_int(tc, "num_micro_batches", "train.num_micro_batches")
  if batch % micro:
    _fail(
      "train.num_micro_batches",
      micro,
      f"must divide train.global_batch_size={batch}; change one of them",
    )
  _positive_int(tc, "r1_every", "train.r1_every")
  if "nonfinite_patience" in tc:
    _positive_int(tc, "nonfinite_patience", "train.nonfinite_patience")
  policy = tc.get("nonfinite_policy", "stop")
  if policy not in NONFINITE_POLICIES:
    _fail("train.nonfinite_policy", policy, f"choose one of {list(NONFINITE_POLICIES)}")
  try:
    re.compile(tc.get("freeze", ""))
  except re.error as e:
    _fail("train.freeze", tc.freeze, f"is not a regular expression ({e})")
  try:
    augment.parse_policy(tc.augment)
  except ValueError as e:
    _fail("train.augment", tc.augment, str(e))
  for key in ("augment_translation", "augment_cutout"):
    if not 0.0 <= float(tc[key]) <= 1.0:
      _fail(f"train.{key}", tc[key], "is a fraction of the frame size; choose a value in [0, 1]")

  if "eval" in config:
    schedule.schedules(config)  # raises ConfigError for a bad config.eval.protocol
    floor_split = config.eval.get("floor_split", "")
    shared = set(str(floor_split).split("+")) & set(str(config.data.eval_split).split("+"))
    if floor_split and shared:
      _fail(
        "eval.floor_split",
        floor_split,
        f"shares {sorted(shared)} with data.eval_split={config.data.eval_split!r}; the floor "
        "needs disjoint real sets: name another split (e.g. 'train' when evaluating on 'test')",
      )

  if num_devices is not None:
    try:
      sharding.mesh_shape(config.mesh, num_devices)
    except ValueError as e:
      raise ConfigError(str(e)) from e
    if (batch // micro) % num_devices:
      _fail(
        "train.global_batch_size",
        batch,
        f"the micro-batch {batch // micro} (/ num_micro_batches={micro}) does not split over "
        f"the {num_devices} devices; use a multiple of {num_devices * micro}",
      )
