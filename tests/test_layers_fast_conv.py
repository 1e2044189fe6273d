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
  return jax.lax.conv_general_dilated(
    x,
    w,
    (stride, stride),
    ((pad, pad), (pad, pad)),
    dimension_numbers=DN,
    feature_group_count=groups,
    precision=jax.lax.Precision.HIGHEST,
  )


def reference_conv(x, weight, down):
  """StyleGAN2-ADA `Conv2dLayer` with XLA convs: pad, depthwise 4x4 FIR (valid), conv with stride
  `down` (FIR outer([1,3,3,1], [1,3,3,1]) / 64; official src/training/networks.py)."""
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

  return (
    conv(x, weight),
    jax.grad(loss, argnums=(0, 1))(x, weight),
    jax.grad(penalty, argnums=(0, 1))(weight, x),
  )


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


@pytest.mark.parametrize(
  "down,k,sizes",
  [
    (2, 3, (8, 7)),
    (2, 1, (8, 9)),
    (1, 3, (4,)),
    (1, 1, (7,)),
  ],
)
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
    return (
      [_value_and_grads(f, x, weight, r) for f in candidates],
      _value_and_grads(reference, x, weight, r),
    )

  for size in sizes:
    x, weight, rng = _inputs(2, size, c, k, o)
    out_shape = jax.eval_shape(reference, x, weight).shape
    r = rng.standard_normal(out_shape).astype(np.float32)
    actual, desired = run(x, weight, r)
    for a in actual:
      assert a[0].shape == out_shape
      _assert_close(a, desired)


def _bfloat16_reference(x, weight, k):
  """The down=2 conv with its operands rounded to bfloat16 after the FIR, float32 accumulation,
  the result rounded to bfloat16: what a bfloat16 compute dtype must give (the FIR of a float32
  input runs in float32, as in the layers)."""
  c = x.shape[-1]
  fir = jnp.broadcast_to(jnp.asarray(FIR_2D)[:, :, None, None], (4, 4, 1, c))
  rounded = lambda a: jnp.asarray(a).astype(jnp.bfloat16).astype(jnp.float32)
  filtered = _lax_conv(jnp.asarray(x), fir, 1, k // 2 + 1, groups=c)
  return rounded(_lax_conv(rounded(filtered), rounded(weight), 2, 0))


def _dot_and_conv_operand_dtypes(jaxpr):
  """Operand dtypes of every dot_general / conv_general_dilated in a (closed) jaxpr, nested ones too."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
      found.append((eqn.primitive.name, tuple(str(v.aval.dtype) for v in eqn.invars)))
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else (param,):
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          found += _dot_and_conv_operand_dtypes(sub)
  return found


@pytest.mark.parametrize("path", ["patches", "fir", "module"])
def test_bfloat16_compute_is_really_bfloat16(path):
  """bfloat16 compute (down=2, k=3): close to float32, but NOT float32 in disguise.

  Three checks, so that silently computing in float32 fails:
  * the matmul/conv operands and results in the traced program are bfloat16 (float32 accumulation);
  * the result equals an independent bfloat16-operand reference (operands rounded after the FIR)
    far better than it equals the float32 result: mean |y16 - ref16| / mean |y16 - y32| < 0.1.
    Measured 0 on CPU for all three paths (stop 24, before results were bfloat16: 3.5e-6 patch
    path). The bound is not 10x the measured value
    on purpose: float32 reassociation of the FIR on another backend can flip a bfloat16 rounding
    tie, and each flip adds ~0.03 to the ratio; what it must reject is ~0.5-1 (only one operand
    rounded) and inf (float32 in disguise: y16 == y32);
  * max |y16 - y32| / max |y32| lies in [2.3e-4, 2e-2]: measured 2.86e-3 on CPU for all three
    paths (bfloat16 keeps 8 significant bits), so ~10x headroom each way; float32 in disguise
    gives 0.
  """
  x, weight, _ = _inputs(2, 8, 8, 3, 16)
  k, c = 3, 8
  if path == "patches":
    conv = lambda x, w, dtype: layers.down2_conv_patches(x, w, dtype)
  elif path == "fir":
    conv = lambda x, w, dtype: layers.down_conv_fir(x, w, 2, dtype)
  else:  # the module with its dtype field (on CPU it takes the patch path, elsewhere the FIR convs)
    gain = 1.0 / math.sqrt(c * k * k)
    weight = (weight / gain).astype(np.float32)  # the module multiplies the gain back in
    conv = lambda x, w, dtype: Conv2d(16, k, down=2, use_bias=False, dtype=dtype).apply(
      {"params": {"weight": w}}, x
    )
  jaxpr = jax.make_jaxpr(lambda x, w: conv(x, w, jnp.bfloat16))(x, weight)
  ops = _dot_and_conv_operand_dtypes(jaxpr.jaxpr)
  print(f"{path}: traced matmul/conv operand dtypes {ops}")
  # Any depthwise FIR conv may stay float32; the product with the weight must be bfloat16.
  assert any(dtypes == ("bfloat16", "bfloat16") for _, dtypes in ops), ops
  y32, y16 = jax.jit(lambda x, w: (conv(x, w, jnp.float32), conv(x, w, jnp.bfloat16)))(x, weight)
  assert y16.dtype == jnp.bfloat16  # activations are stored in the compute dtype
  w_eff = weight * (1.0 / math.sqrt(c * k * k)) if path == "module" else weight
  ref16 = _bfloat16_reference(x, jnp.asarray(w_eff, jnp.float32), k)
  y16, y32, ref16 = (np.asarray(a, np.float64) for a in (y16, y32, ref16))
  rel_max = np.abs(y16 - y32).max() / np.abs(y32).max()
  ratio = np.abs(y16 - ref16).mean() / np.abs(y16 - y32).mean()
  print(
    f"{path}: max|y16-y32|/max|y32| = {rel_max:.3g} (bounds [2.3e-4, 2e-2]); "
    f"mean|y16-ref16| / mean|y16-y32| = {ratio:.3g} (bound 0.1)"
  )
  assert 2.3e-4 < rel_max < 2e-2
  assert ratio < 0.1


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
