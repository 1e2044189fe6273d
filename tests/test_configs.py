"""Every config in configs/ loads, passes config_checks.validate, locks, and builds its networks'
shapes."""

import importlib
import pathlib

import jax
import jax.numpy as jnp
import pytest

from digan_jax import config_checks
from digan_jax.models import factory

CONFIGS = sorted(
  p.stem
  for p in (pathlib.Path(__file__).resolve().parents[1] / "configs").glob("*.py")
  if p.stem != "__init__"
)


def test_all_expected_configs_exist():
  assert {
    "default",
    "smoke",
    "synthetic",
    "taichi128",
    "taichi128_long",
    "ucf101",
    "ucf101_traintest",
    "ucf101_cond",
    "sky128",
    "kinetics_food128",
  } <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  config_checks.validate(config, num_devices=1)
  config.lock()
  with pytest.raises(AttributeError):
    config.train.global_batch_sise = 3  # a typo must not silently add a field
  g, d = factory.build(config.model)
  gc = g.config
  b = 4
  shapes = jax.eval_shape(
    lambda: g.init(
      jax.random.key(0),
      jnp.zeros((b, gc.z_dim)),
      jnp.zeros((b, gc.motion_dim)),
      jnp.zeros((2,)),
      jnp.zeros((b, gc.c_dim)) if gc.c_dim else None,
    )
  )
  assert shapes["params"]["synthesis"]
  r = gc.resolution
  dshapes = jax.eval_shape(
    lambda: d.init(
      jax.random.key(0), jnp.zeros((b, r, r, 7)), jnp.zeros((b, gc.c_dim)) if gc.c_dim else None
    )
  )
  assert dshapes["params"]["motion_d"] and dshapes["params"]["image_d"]
  assert config.train.global_batch_size % config.model.discriminator.mbstd_group_size == 0


def test_paper_recipe_values():
  config = importlib.import_module("configs.taichi128").get_config()
  t = config.train
  assert (t.global_batch_size, t.r1_gamma, t.r1_every, t.ema_kimg, t.ema_rampup) == (
    64,
    1.0,
    16,
    20.0,
    0.05,
  )
  assert t.augment == "color,translation" and config.data.mirror
  assert config.model.generator.resolution == 128 and config.data.num_frames == 16
  long = importlib.import_module("configs.taichi128_long").get_config()
  assert long.data.num_frames == 128 and long.model.generator.motion_sigma == 0.5


def test_long_video_config_trains_the_same_program():
  """The pod plan uses taichi128's compiles for taichi128_long: their training iterations must
  lower to the same program, apart from the scalar σ_t (0.25 vs 0.5)."""
  from digan_jax import aot, sharding  # pylint: disable=g-import-not-at-top

  texts = {}
  for name in ("taichi128", "taichi128_long"):
    config = importlib.import_module(f"configs.{name}").get_config()
    config.train.global_batch_size = 8
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:4])
    _, ((_, lower, _),) = aot.train_functions(config, mesh, lazy_variants=False)
    texts[name] = lower().as_text().splitlines()
  short, long = texts["taichi128"], texts["taichi128_long"]
  assert len(short) == len(long) > 1000
  differing = [(a, b) for a, b in zip(short, long) if a != b]
  assert differing, "σ_t differs between the configs, so some constant must"
  for a, b in differing:
    assert "dense<2.500000e-01>" in a and "dense<5.000000e-01>" in b, (a, b)
