"""Networks from an ml_collections config (`config.model`, see configs/default.py)."""

from __future__ import annotations

import jax.numpy as jnp

from digan_jax.models.discriminator import DiscriminatorConfig, DualDiscriminator
from digan_jax.models.generator import Generator, GeneratorConfig, generator_config_from

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(model_config):
  name = model_config.compute_dtype
  if name not in _DTYPES:
    raise ValueError(f"config.model.compute_dtype={name!r}; choose one of {sorted(_DTYPES)}")
  return _DTYPES[name]


def generator_config(model_config) -> GeneratorConfig:
  return generator_config_from(model_config.generator.to_dict())


def discriminator_config(model_config) -> DiscriminatorConfig:
  g = model_config.generator
  return DiscriminatorConfig(
    resolution=g.resolution, c_dim=g.c_dim, **model_config.discriminator.to_dict()
  )


def build(model_config) -> tuple[Generator, DualDiscriminator]:
  dtype = compute_dtype(model_config)
  return (
    Generator(generator_config(model_config), dtype=dtype, remat=model_config.generator_remat),
    DualDiscriminator(
      discriminator_config(model_config), dtype=dtype, remat=model_config.discriminator_remat
    ),
  )
