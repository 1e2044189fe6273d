"""DIGAN's objectives: non-saturating logistic losses, R1 and the EMA decay.

Pure functions of logits, of discriminator callables and of numbers; the step functions in
`steps.py` wire them to the networks. Class-conditional training needs nothing special here: the
discriminator callables close over the labels (StyleGAN2-ADA projection head) and the losses are
the same. Sources: official `OurStyleGAN2Loss` (`src/training/loss.py`) and StyleGAN2-ADA's
`training/training_loop.py`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from digan_jax.models.discriminator import split_frames


def _mean(x):
  return jnp.mean(x.astype(jnp.float32))


def generator_loss_terms(fake_motion_logits, fake_image_logits) -> dict[str, jax.Array]:
  """The official Gmain terms: mean_B softplus(-D_M(fake)) and mean_2B softplus(-D_I(fake frames))."""
  return {
    "G_motion": _mean(jax.nn.softplus(-fake_motion_logits)),
    "G_image": _mean(jax.nn.softplus(-fake_image_logits)),
  }


def generator_loss(fake_motion_logits, fake_image_logits):
  """L_G, the sum of `generator_loss_terms`."""
  return sum(generator_loss_terms(fake_motion_logits, fake_image_logits).values())


def discriminator_loss_terms(
  real_motion_logits, real_image_logits, fake_motion_logits, fake_image_logits
) -> dict[str, jax.Array]:
  """The official Dmain terms: softplus(D(fake)) and softplus(-D(real)) per D, each a batch mean."""
  return {
    "D_motion_fake": _mean(jax.nn.softplus(fake_motion_logits)),
    "D_image_fake": _mean(jax.nn.softplus(fake_image_logits)),
    "D_motion_real": _mean(jax.nn.softplus(-real_motion_logits)),
    "D_image_real": _mean(jax.nn.softplus(-real_image_logits)),
  }


def discriminator_loss(
  real_motion_logits, real_image_logits, fake_motion_logits, fake_image_logits
):
  """L_D, the sum of `discriminator_loss_terms`."""
  return sum(
    discriminator_loss_terms(
      real_motion_logits, real_image_logits, fake_motion_logits, fake_image_logits
    ).values()
  )


def _squared_norm_per_sample(g):
  return jnp.sum(jnp.square(g.astype(jnp.float32)).reshape(g.shape[0], -1), axis=1)


def r1_penalties(motion_fn: Callable, image_fn: Callable, real7, augment_fn: Callable):
  """Squared input-gradient norms of both discriminators on the real batch (official R1).

  motion_fn: x7 [B, H, W, 7] -> [B, 1]; image_fn: frames [2B, H, W, 3] -> [2B, 1];
  augment_fn: x7 -> augmented x7 with fixed randomness (identity when augmentation is off).
  D_M's gradient is taken w.r.t. the un-augmented 7-channel input (through the augmentation,
  Δt plane included); D_I's w.r.t. the augmented frames it actually sees.
  Returns a dict: `penalty_motion` [B] and `penalty_image` [2B] (per sample, before γ/2), the
  logits, the input gradients `grad_motion` [B, H, W, 7] and `grad_image` [2B, H, W, 3], and
  `d_input` (the augmented x7).
  """

  def motion_sum(x7):
    aug7 = augment_fn(x7)
    logits = motion_fn(aug7)
    return jnp.sum(logits.astype(jnp.float32)), (aug7, logits)

  grad7, (aug7, motion_logits) = jax.grad(motion_sum, has_aux=True)(real7)
  frames = split_frames(jax.lax.stop_gradient(aug7))

  def image_sum(frames):
    logits = image_fn(frames)
    return jnp.sum(logits.astype(jnp.float32)), logits

  grad_frames, image_logits = jax.grad(image_sum, has_aux=True)(frames)
  return {
    "penalty_motion": _squared_norm_per_sample(grad7),
    "penalty_image": _squared_norm_per_sample(grad_frames),
    "motion_logits": motion_logits,
    "image_logits": image_logits,
    "grad_motion": grad7,
    "grad_image": grad_frames,
    "d_input": aug7,
  }


def r1_loss(penalty_motion, penalty_image, gamma: float):
  """(γ/2)·(mean_B ‖∇D_M‖² + mean_2B ‖∇D_I‖²), before the lazy-regularisation gain."""
  return 0.5 * gamma * (penalty_motion + penalty_image)


def ema_beta(step, global_batch: int, ema_kimg: float, ema_rampup: float | None):
  """Official G_ema decay at iteration `step` (StyleGAN2-ADA): β = 0.5^(batch / ema_nimg).

  ema_nimg = min(ema_kimg·1000, cur_nimg·rampup) with cur_nimg = step·batch before the update,
  so β = 0 (a copy) at step 0 and 0.5^(batch / (ema_kimg·1000)) once the ramp is over.
  """
  ema_nimg = jnp.asarray(ema_kimg * 1000.0, jnp.float32)
  if ema_rampup:
    cur_nimg = jnp.asarray(step, jnp.float32) * global_batch
    ema_nimg = jnp.minimum(ema_nimg, cur_nimg * ema_rampup)
  return jnp.power(0.5, global_batch / jnp.maximum(ema_nimg, 1e-8))
