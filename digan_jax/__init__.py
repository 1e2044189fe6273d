"""digan_jax: DIGAN (Dynamics-aware Implicit GAN, ICLR 2022) in JAX/Flax."""

__version__ = "0.1.0"
