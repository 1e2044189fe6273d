"""config_checks.validate: every bad setting is refused up front with one message style,
"config.<key>=<value>: <problem; fix>", as a ConfigError (a UserError and a ValueError)."""

import pytest

from configs import default
from digan_jax import config_checks
from digan_jax.errors import ConfigError, UserError

BAD = [
  ("model.compute_dtype", "float16", "choose one of"),
  ("model.generator_remat", "full", "nothing_saveable"),
  ("model.discriminator_remat", "dots", "dots_saveable"),
  ("train.global_batch_size", 0, "positive integer"),
  ("train.num_micro_batches", 3, "must divide train.global_batch_size=64"),
  ("train.r1_every", 0, "positive integer"),
  ("train.nonfinite_patience", 0, "positive integer"),
  ("train.augment", "color,flip", "unknown DiffAugment op 'flip'"),
  ("train.augment_cutout", 1.5, "choose a value in [0, 1]"),
  ("eval.protocol", "proxy@sometimes", "NAME@<steps>"),
  ("eval.protocol", "nope", "unknown FVD protocol"),
  ("eval.floor_split", "train", "the floor needs disjoint real sets"),  # eval_split is "train"
  ("train.freeze", "g/(unclosed", "is not a regular expression"),
]


def _set(config, key, value):
  section, name = key.rsplit(".", 1)
  parent = config
  for part in section.split("."):
    parent = parent[part]
  parent[name] = value


@pytest.mark.parametrize("key,value,problem", BAD, ids=[f"{k}={v}" for k, v, _ in BAD])
def test_bad_setting_is_named_with_its_fix(key, value, problem):
  config = default.get_config()
  _set(config, key, value)
  with pytest.raises(ConfigError) as info:
    config_checks.validate(config)
  message = str(info.value)
  assert message.startswith(f"config.{key}={value!r}: "), message
  assert problem in message, message
  assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)


def test_mesh_and_batch_against_the_devices():
  config = default.get_config()
  config_checks.validate(config, num_devices=8)  # 64 videos over 8 devices
  with pytest.raises(
    ConfigError,
    match=r"config.train.global_batch_size=64: .* 3 devices; use a "
    r"multiple of 3",
  ):
    config_checks.validate(config, num_devices=3)
  config.mesh.fsdp = 3
  with pytest.raises(ConfigError, match=r"config.mesh: 8 devices are not divisible"):
    config_checks.validate(config, num_devices=8)
