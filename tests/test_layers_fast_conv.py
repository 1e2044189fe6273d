"""Conv2d's CPU downsampling path (polyphase FIR + matmul) against a plain lax.conv reference.

R1 differentiates the discriminator's input gradient again, so the value, the first gradient and
the R1-style second-order gradient are all checked, for the layer shapes the discriminator uses
(down=1/2, k=1/3, even sizes) and odd sizes.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from digan_jax.models import layers
from digan_jax.models.layers import Conv2d

RTOL = 1e-5
DN = ("NHWC", "HWIO", "NHWC")
FIR_2D = np.outer([1.0, 3.0, 3.0, 1.0], [1.0, 3.0, 3.0, 1.0]).astype(np.float32) / 64.0


def _lax_conv(x, w, stride, pad, groups=1):
  return jax.lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                      dimension_numbers=DN, feature_group_count=groups,
                                      precision=jax.lax.Precision.HIGHEST)


def reference_conv(x, weight, down):
  """Spec §1.3 with XLA convs: pad, depthwise 4x4 FIR (valid), conv with stride `down`."""
  k = weight.shape[0]
  if down == 1:
    return _lax_conv(x, weight, 1, k // 2)
  c = x.shape[-1]
  fir = jnp.broadcast_to(jnp.asarray(FIR_2D)[:, :, None, None], (4, 4, 1, c))
  if k == 1:
    return _lax_conv(_lax_conv(x, fir, down, 1, groups=c), weight, 1, 0)
  p = k // 2 + 1
  return _lax_conv(_lax_conv(x, fir, 1, p, groups=c), weight, down, 0)


def _module_conv(features, k, down):
  """Conv2d's pre-activation output as a function of (x, weight)."""
  module = Conv2d(features, k, down=down, use_bias=False)

  def conv(x, weight):
    return module.apply({"params": {"weight": weight}}, x)
  return conv


def _value_and_grads(conv, x, weight, r):
  """conv output, its first gradient and the R1-style second-order gradient (w.r.t. w and x).

  softplus keeps the input gradient dependent on x, like the layers after a conv in D do.
  """
  def loss(x, weight):
    return jnp.sum(jax.nn.softplus(conv(x, weight)) * r)

  def penalty(weight, x):
    return jnp.sum(jnp.square(jax.grad(loss)(x, weight)))

  return (conv(x, weight), jax.grad(loss, argnums=(0, 1))(x, weight),
          jax.grad(penalty, argnums=(0, 1))(weight, x))


def _assert_close(actual, desired):
  for a, d in zip(jax.tree.leaves(actual), jax.tree.leaves(desired)):
    a, d = np.asarray(a), np.asarray(d)
    assert a.shape == d.shape
    scale = np.abs(d).max()
    assert scale > 0
    np.testing.assert_allclose(a, d, rtol=0, atol=RTOL * scale)


def _inputs(n, size, c, k, o):
  # NumPy draws: eager jax.random calls would each compile a small program for every shape.
  rng = np.random.default_rng(size * 10 + k)
  x = rng.standard_normal((n, size, size, c)).astype(np.float32)
  weight = (rng.standard_normal((k, k, c, o)) / math.sqrt(c * k * k)).astype(np.float32)
  return x, weight, rng


@pytest.mark.parametrize("down,k,sizes", [
    (2, 3, (8, 7)),
    (2, 1, (8, 9)),
    (1, 3, (4,)),
    (1, 1, (7,)),
])
def test_conv2d_matches_reference(down, k, sizes):
  """Conv2d (the patch path on CPU) and, for down=2, the conv path used off CPU."""
  c, o = 8, 16
  gain = 1.0 / math.sqrt(c * k * k)  # Conv2d's equalised-lr weight gain
  candidates = [_module_conv(o, k, down)]
  if down == 2:
    # Conv2d picks one of the two by backend; check the other one explicitly.
    if jax.default_backend() == "cpu":
      candidates.append(lambda x, w: layers.down_conv_fir(x, w * gain, 2, jnp.float32))
    else:
      candidates.append(lambda x, w: layers.down2_conv_patches(x, w * gain, jnp.float32))

  def reference(x, weight):
    return reference_conv(x, weight * gain, down)

  @jax.jit
  def run(x, weight, r):
    return ([_value_and_grads(f, x, weight, r) for f in candidates],
            _value_and_grads(reference, x, weight, r))

  for size in sizes:
    x, weight, rng = _inputs(2, size, c, k, o)
    out_shape = jax.eval_shape(reference, x, weight).shape
    r = rng.standard_normal(out_shape).astype(np.float32)
    actual, desired = run(x, weight, r)
    for a in actual:
      assert a[0].shape == out_shape
      _assert_close(a, desired)


def test_patch_path_bfloat16_close_to_float32():
  x, weight, _ = _inputs(2, 8, 8, 3, 16)
  y32, y16 = jax.jit(lambda x, w: (layers.down2_conv_patches(x, w, jnp.float32),
                                   layers.down2_conv_patches(x, w, jnp.bfloat16)))(x, weight)
  assert y16.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(y16), np.asarray(y32), rtol=0,
                             atol=2e-2 * float(jnp.abs(y32).max()))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the patch path is CPU-only")
def test_cpu_r1_has_no_strided_conv():
  """The double backward of a down conv on CPU must not contain a convolution at all: XLA:CPU
  lowers the second derivative of a strided conv to a slow window-reversed conv."""
  x, weight, _ = _inputs(1, 8, 4, 3, 4)
  conv = _module_conv(4, 3, 2)

  def penalty(weight, x):
    g = jax.grad(lambda x: jnp.sum(jax.nn.softplus(conv(x, weight))))(x)
    return jnp.sum(jnp.square(g))

  jaxpr = str(jax.make_jaxpr(jax.grad(penalty))(weight, x))
  assert "conv_general_dilated" not in jaxpr
