"""Leaky ReLU at exactly 0: the official activation takes the slope there (bias_act's CUDA kernel
`y > 0 ? 1 : slope` and its torch reference), which decides D's gradients and R1 whenever
augmentation (translation fill, cutout) puts exact zeros into frames and biases are still 0."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from digan_jax import augment, losses
from digan_jax.models import DiscriminatorConfig, DualDiscriminator
from digan_jax.models import layers

import tiny_digan


def test_derivative_at_zero_is_the_slope_times_the_gain():
  d_act = jax.grad(lambda x: layers.bias_act(x, activation="lrelu"))
  np.testing.assert_allclose(d_act(0.0), 0.2 * math.sqrt(2), rtol=1e-7)
  np.testing.assert_allclose(d_act(1e-3), math.sqrt(2), rtol=1e-7)
  np.testing.assert_allclose(d_act(-1e-3), 0.2 * math.sqrt(2), rtol=1e-7)
  # With a layer gain (the resnet block's conv1 uses sqrt(0.5)), and with a bias that makes 0.
  d_gain = jax.grad(lambda x: layers.bias_act(x, jnp.float32(-0.5), "lrelu", gain=math.sqrt(0.5)))
  np.testing.assert_allclose(d_gain(0.5), 0.2, rtol=1e-6)
  # The motion path's plain leaky ReLU (slope 0.01, no gain).
  np.testing.assert_allclose(jax.grad(lambda x: layers.lrelu(x, 0.01))(0.0), 0.01, rtol=1e-7)
  # The forward value is unchanged: 0 at 0.
  assert float(layers.bias_act(jnp.float32(0), activation="lrelu")) == 0.0


def _reference_lrelu(x, slope=0.2):
  """slope·x + (1 − slope)·relu(x): derivative slope at 0 (jax.nn.relu's derivative at 0 is 0)."""
  return slope * x + (1 - slope) * jax.nn.relu(x)


def test_r1_on_input_with_exact_zeros_matches_reference_activation(monkeypatch):
  """R1 of a zero-bias D on translated + cut-out frames (exact zeros) equals R1 computed with an
  independently written activation whose derivative at 0 is the slope."""
  cfg = DiscriminatorConfig(resolution=16, channel_base=64, channel_max=8, mbstd_group_size=2)
  d = DualDiscriminator(cfg)
  rng = np.random.default_rng(0)
  real7 = rng.uniform(-1, 1, (2, 16, 16, 7)).astype(np.float32)
  real7[..., 6] = [[0.0]], [[0.4]]
  params = d.init(jax.random.key(0), real7)["params"]  # biases are 0 at init
  policy = "color,translation,cutout"
  aug = {
    "brightness": np.zeros(2, np.float32),
    "saturation": np.ones(2, np.float32),
    "contrast": np.ones(2, np.float32),
    "translate": np.array([[3, -2], [-4, 1]], np.int32),
    "cutout": np.array([[2, 5], [9, 0]], np.int32),
  }
  aug_fn = lambda x7: augment.apply_pair7(x7, aug, policy)

  def penalties():
    # A new jit per call: the activation is read when tracing, after the monkeypatch below.
    def fn(x7):
      apply = lambda x, method: d.apply({"params": params}, x, method=method)
      r1 = losses.r1_penalties(
        lambda x: apply(x, "motion"), lambda f: apply(f, "image"), x7, aug_fn
      )
      return r1["penalty_motion"].mean(), r1["penalty_image"].mean()

    return tuple(float(v) for v in jax.jit(fn, compiler_options=tiny_digan.COMPILER_OPTIONS)(real7))

  # The case is real: the first conv sees exact zeros at its pre-activation.
  fromrgb = jax.tree.leaves(params["image_d"][f"b{cfg.resolution}_fromrgb"])
  assert np.sum(np.asarray(aug_fn(jnp.asarray(real7)))[..., :6] == 0) > 100
  assert all(np.all(np.asarray(p) == 0) for p in fromrgb if np.asarray(p).ndim == 1)
  ours = penalties()
  monkeypatch.setattr(layers, "lrelu", _reference_lrelu)
  reference = penalties()
  monkeypatch.setattr(layers, "lrelu", lambda x, slope=0.2: jnp.where(x >= 0, x, x * slope))
  derivative_one = penalties()
  rel = lambda a, b: max(abs(x - y) / abs(y) for x, y in zip(a, b))
  print(
    f"R1 (motion, image): ours {ours}, reference {reference}, derivative-1-at-0 {derivative_one}; "
    f"relative difference to reference {rel(ours, reference):.2g}, "
    f"derivative-1 variant {rel(derivative_one, reference):.2g}"
  )
  assert rel(ours, reference) < 1e-5
  # Negative control: the `x >= 0` activation gives a different image R1 on this input.
  assert rel(derivative_one, reference) > 1e-2
