"""Flax Linen networks of DIGAN: generator (INR + FMM), discriminators, official-weight import."""

from digan_jax.models.discriminator import Discriminator, DiscriminatorConfig, DualDiscriminator
from digan_jax.models.generator import Generator, GeneratorConfig
from digan_jax.models.inr import CoordGrid

__all__ = [
  "CoordGrid",
  "Discriminator",
  "DiscriminatorConfig",
  "DualDiscriminator",
  "Generator",
  "GeneratorConfig",
]
