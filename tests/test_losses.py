"""Logistic losses, R1 (against hand-computed values), EMA schedule, Adam settings, sanitising."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from digan_jax import augment, losses, optim


def _softplus(x):
  return np.log1p(np.exp(x))


def test_logistic_losses_match_formula():
  rng = np.random.default_rng(0)
  rm, ri, fm, fi = (rng.normal(size=s).astype(np.float32) for s in ((4, 1), (8, 1), (4, 1), (8, 1)))
  np.testing.assert_allclose(
    losses.generator_loss(fm, fi), _softplus(-fm).mean() + _softplus(-fi).mean(), rtol=1e-6
  )
  np.testing.assert_allclose(
    losses.discriminator_loss(rm, ri, fm, fi),
    _softplus(fm).mean() + _softplus(fi).mean() + _softplus(-rm).mean() + _softplus(-ri).mean(),
    rtol=1e-6,
  )
  # At logits 0 every term is log 2.
  z = np.zeros((4, 1), np.float32)
  np.testing.assert_allclose(losses.discriminator_loss(z, z, z, z), 4 * np.log(2.0), rtol=1e-6)


def _tiny_discriminators(seed=0, b=3, h=4):
  """A linear motion D and a quadratic image D whose input gradients are known in closed form."""
  rng = np.random.default_rng(seed)
  w_motion = rng.normal(size=(h, h, 7)).astype(np.float32)
  a_image = rng.uniform(0.5, 2.0, size=(h, h, 3)).astype(np.float32)
  motion_fn = lambda x7: jnp.sum(x7 * w_motion, axis=(1, 2, 3))[:, None]
  image_fn = lambda f: jnp.sum(0.5 * a_image * f * f, axis=(1, 2, 3))[:, None]
  real7 = rng.normal(size=(b, h, h, 7)).astype(np.float32)
  return w_motion, a_image, motion_fn, image_fn, real7


def test_r1_equals_hand_computed_value_without_augmentation():
  w_motion, a_image, motion_fn, image_fn, real7 = _tiny_discriminators()
  r1 = losses.r1_penalties(motion_fn, image_fn, real7, lambda x: x)
  pm, pi = r1["penalty_motion"].mean(), r1["penalty_image"].mean()
  # ∇_x D_M = w for every video; ∇_f D_I = a ⊙ f for every frame.
  np.testing.assert_allclose(pm, np.sum(w_motion**2), rtol=1e-5)
  frames = np.concatenate([real7[:, None, ..., 0:3], real7[:, None, ..., 3:6]], 1).reshape(
    -1, 4, 4, 3
  )
  expected_pi = np.mean(np.sum((a_image * frames) ** 2, axis=(1, 2, 3)))
  np.testing.assert_allclose(pi, expected_pi, rtol=1e-5)
  np.testing.assert_allclose(losses.r1_loss(pm, pi, gamma=1.0), 0.5 * (pm + pi), rtol=1e-6)


def test_r1_gradient_asymmetry_through_augmentation():
  """D_M: gradient w.r.t. the un-augmented input (through A); D_I: w.r.t. the augmented frames."""
  w_motion, a_image, motion_fn, image_fn, real7 = _tiny_discriminators(seed=1)
  b = real7.shape[0]
  params = {
    "brightness": np.full((b,), 0.3, np.float32),
    "saturation": np.full((b,), 1.0, np.float32),
    "contrast": np.array([0.7, 1.2, 1.4], np.float32),
  }
  aug_fn = lambda x7: augment.apply_pair7(x7, params, "color")
  r1 = losses.r1_penalties(motion_fn, image_fn, real7, aug_fn)
  pm, pi = r1["penalty_motion"].mean(), r1["penalty_image"].mean()
  # With saturation 1, A(x) = c·(x + β − μ) + μ per frame (μ the frame mean after brightness):
  # the input gradient of Σ w·A(x) per frame is c·w + (1 − c)·mean(w) on RGB; Δt passes unchanged.
  expected = []
  for i in range(b):
    c = params["contrast"][i]
    g = w_motion.copy()
    for lo in (0, 3):
      wf = w_motion[..., lo : lo + 3]
      g[..., lo : lo + 3] = c * wf + (1 - c) * wf.mean()
    expected.append(np.sum(g**2))
  np.testing.assert_allclose(pm, np.mean(expected), rtol=1e-4)
  aug = np.asarray(aug_fn(real7))
  frames = np.concatenate([aug[:, None, ..., 0:3], aug[:, None, ..., 3:6]], 1).reshape(-1, 4, 4, 3)
  np.testing.assert_allclose(
    pi, np.mean(np.sum((a_image * frames) ** 2, axis=(1, 2, 3))), rtol=1e-5
  )


def test_ema_beta_schedule():
  """Official G_ema schedule (training_loop.py) with batch 64, 20 kimg half-life, ramp-up 0.05."""
  beta = lambda step: float(losses.ema_beta(step, 64, 20.0, 0.05))
  assert beta(0) == 0.0  # a copy
  # Mid-ramp: step 1000 -> cur_nimg 64,000 -> ema_nimg 3,200 -> β = 0.5^(64/3200).
  np.testing.assert_allclose(beta(1000), 0.5 ** (64 / 3200), rtol=1e-6)
  # The ramp ends at 400 kimg = step 6250; afterwards β = 0.5^(64/20000) = 0.997784.
  np.testing.assert_allclose(beta(6250), 0.997784, atol=1e-6)
  np.testing.assert_allclose(beta(10**6), 0.5 ** (64 / 20000), rtol=1e-6)
  np.testing.assert_allclose(
    float(losses.ema_beta(0, 64, 20.0, None)), 0.5 ** (64 / 20000), rtol=1e-6
  )


def test_adam_hparams_lazy_regularisation_correction():
  tc = ml_collections.ConfigDict(
    dict(base_lr=0.0025, beta1=0.0, beta2=0.99, eps=1e-8, g_reg_interval=4, d_reg_interval=16)
  )
  hp = optim.adam_hparams(tc)
  np.testing.assert_allclose(hp["g"]["learning_rate"], 0.002, rtol=1e-12)
  np.testing.assert_allclose(hp["g"]["b2"], 0.991992, atol=5e-7)
  np.testing.assert_allclose(hp["d"]["learning_rate"], 0.0023529, atol=5e-8)
  np.testing.assert_allclose(hp["d"]["b2"], 0.990585, atol=5e-7)
  assert hp["g"]["b1"] == hp["d"]["b1"] == 0.0 and hp["g"]["eps"] == 1e-8


def test_sanitize_grads():
  g = {"a": jnp.array([np.nan, np.inf, -np.inf, 1.5], jnp.float32)}
  np.testing.assert_array_equal(optim.sanitize_grads(g)["a"], [0.0, 1e5, -1e5, 1.5])


@pytest.mark.parametrize("gamma", [1.0, 0.25])
def test_r1_loss_scales_with_gamma(gamma):
  np.testing.assert_allclose(losses.r1_loss(2.0, 6.0, gamma), gamma * 4.0)
