"""The optimisers of G and D: Adam with StyleGAN2-ADA's lazy-regularisation correction, and the
official optimiser step (non-finite gradients sanitised, then Adam)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def adam_hparams(train_config) -> dict[str, dict[str, float]]:
  """Effective Adam settings with the lazy-regularisation correction (StyleGAN2-ADA).

  ratio = interval / (interval + 1); lr·ratio, β1^ratio, β2^ratio; ε unchanged. The G correction
  applies although path-length regularisation is off, as in the official code.
  """
  out = {}
  for name, interval in (("g", train_config.g_reg_interval), ("d", train_config.d_reg_interval)):
    ratio = interval / (interval + 1) if interval and interval > 0 else 1.0
    out[name] = dict(
      learning_rate=train_config.base_lr * ratio,
      b1=train_config.beta1**ratio,
      b2=train_config.beta2**ratio,
      eps=train_config.eps,
    )
  return out


def make_optimizers(train_config) -> dict[str, optax.GradientTransformation]:
  """{'g': Adam of G, 'd': Adam of the discriminator pair} (one D state for Dmain and Dreg)."""
  return {name: optax.adam(**hp) for name, hp in adam_hparams(train_config).items()}


def sanitize_grads(grads):
  """Official non-finite gradient handling before every optimiser step: nan→0, ±inf→±1e5."""
  return jax.tree.map(lambda g: jnp.nan_to_num(g, nan=0.0, posinf=1e5, neginf=-1e5), grads)


def step(tx: optax.GradientTransformation, grads, opt_state, params):
  """One official optimiser step: (new params, new optimiser state)."""
  updates, opt_state = tx.update(sanitize_grads(grads), opt_state, params)
  return optax.apply_updates(params, updates), opt_state
