"""The optimisers of G and D: Adam with StyleGAN2-ADA's lazy-regularisation correction, and the
official optimiser step (non-finite gradients sanitised, then Adam)."""

from __future__ import annotations

import re

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
  """{'g': Adam of G, 'd': Adam of the discriminator pair} (one D state for Dmain and Dreg).

  With train_config.freeze (a regex), the parameters whose name matches keep their values:
  Adam's update is zeroed for them (ablations, fine-tuning part of a network).
  """
  pattern = train_config.get("freeze", "")
  out = {}
  for name, hp in adam_hparams(train_config).items():
    tx = optax.adam(**hp)
    if pattern:
      mask = lambda params, name=name: frozen_mask(pattern, name, params)
      tx = optax.chain(tx, optax.masked(optax.set_to_zero(), mask))
    out[name] = tx
  return out


def param_names(network: str, params) -> list[str]:
  """'g/synthesis/b4_coord_fuser/affine/weight'-style names of a parameter tree's leaves."""
  paths = jax.tree_util.tree_flatten_with_path(params)[0]
  return [
    "/".join([network] + [str(getattr(k, "key", getattr(k, "idx", k))) for k in path])
    for path, _ in paths
  ]


def frozen_mask(pattern: str, network: str, params):
  """A tree of bools like `params`: True where the leaf's name (`param_names`) matches."""
  regex = re.compile(pattern)
  flags = [bool(regex.search(n)) for n in param_names(network, params)]
  return jax.tree.unflatten(jax.tree.structure(params), flags)


def sanitize_grads(grads):
  """Official non-finite gradient handling before every optimiser step: nan→0, ±inf→±1e5."""
  return jax.tree.map(lambda g: jnp.nan_to_num(g, nan=0.0, posinf=1e5, neginf=-1e5), grads)


def step(tx: optax.GradientTransformation, grads, opt_state, params):
  """One official optimiser step: (new params, new optimiser state)."""
  updates, opt_state = tx.update(sanitize_grads(grads), opt_state, params)
  return optax.apply_updates(params, updates), opt_state
