"""StyleGAN2-ADA primitives with the official parametrisation (`training/networks.py`), in NHWC.

Parameters are stored unscaled (equalised learning rate): the run-time gains are applied in the
forward pass so that Adam sees the same tensors as the official code.

Mixed precision (`dtype`, float32 by default): convolutions and per-pixel matmuls take their
operands in `dtype` and return `dtype`, so with bfloat16 the spatial activations between layers
(and their gradients) are stored and moved in bfloat16, which is what halves the memory traffic
of the step; accumulation inside each conv/matmul is float32 on every backend. Parameters stay
float32 and are cast at use. Per-sample vectors (mapping network, styles, the D's dense head)
return float32, as do statistics and reductions (minibatch std, losses, R1).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from digan_jax import target

Dtype = Any
SQRT2 = math.sqrt(2.0)
# StyleGAN2-ADA's resample filter [1,3,3,1], normalised to sum 1; separable, so two 1-D passes.
FIR_1D = np.array([1.0, 3.0, 3.0, 1.0], np.float32) / 8.0


# Rematerialisation policies for the per-pixel layers of G and the blocks of D (config.model.
# generator_remat / discriminator_remat): "none" stores every activation for the backward pass;
# the others are jax.checkpoint_policies (nothing_saveable recomputes the whole layer).
REMAT_POLICIES = ("none", "nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable")


def remat(module_cls, policy: str):
  """`module_cls` under jax.checkpoint with the named policy (itself for "none")."""
  if policy not in REMAT_POLICIES:
    raise ValueError(f"remat policy {policy!r}; choose one of {list(REMAT_POLICIES)}")
  if policy == "none":
    return module_cls
  return nn.remat(module_cls, policy=getattr(jax.checkpoint_policies, policy))


def lrelu(x, slope: float = 0.2):
  # `x > 0`, not `>=`: at exactly 0 the derivative is the slope, as in the official bias_act
  # (CUDA kernel and torch reference alike). Translation fill and cutout put exact zeros into D's
  # input and initial biases are 0, so ties are common early in training and change D's gradients.
  return jnp.where(x > 0, x, x * slope)


def bias_act(
  x, bias=None, activation: str = "linear", gain: float = 1.0, clamp: float | None = None
):
  """Official bias_act order: add bias, activation, multiply by (default gain x gain), clamp."""
  if bias is not None:
    x = x + bias.astype(x.dtype)
  if activation == "lrelu":
    x = lrelu(x) * (SQRT2 * gain)
  elif activation == "linear":
    if gain != 1:
      x = x * gain
  else:
    raise ValueError(f"unknown activation {activation!r}")
  if clamp is not None:
    clamp = clamp * gain
    x = jnp.clip(x, -clamp, clamp)
  return x


def matmul(x, w, dtype: Dtype = jnp.float32, out_dtype: Dtype | None = None):
  """x @ w with operands in `dtype`; the result in `out_dtype` (default: `dtype`)."""
  return jnp.matmul(x.astype(dtype), w.astype(dtype), preferred_element_type=out_dtype or dtype)


def normalize_2nd_moment(x, eps: float = 1e-8):
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


def _normal_init(scale: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.normal(key, shape, dtype) * scale

  return init


class FullyConnected(nn.Module):
  """Equalised-lr dense layer; `weight` is stored [in, out] (PyTorch stores [out, in])."""

  features: int
  activation: str = "linear"
  lr_multiplier: float = 1.0
  bias_init: float = 0.0
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    in_features = x.shape[-1]
    weight = self.param(
      "weight", _normal_init(1.0 / self.lr_multiplier), (in_features, self.features)
    )
    y = matmul(x, weight, self.dtype, jnp.float32) * (self.lr_multiplier / math.sqrt(in_features))
    bias = None
    if self.use_bias:
      bias = self.param("bias", nn.initializers.constant(self.bias_init), (self.features,))
      bias = bias * self.lr_multiplier
    return bias_act(y, bias, self.activation)


def fir_downsample(x, down: int, pad: int):
  """Pad `pad` each side, depthwise 4x4 FIR, keep every `down`-th pixel from 0 (NHWC).

  One depthwise conv, not a sum of shifted slices: on TPU the slice form wrote and re-read the
  full-resolution input per tap in the forward, its transpose and R1's double backward (libtpu's
  estimate for D's forward + backward at 128², batch 4: 23.5 ms vs 30.3 ms, README).
  """
  c = x.shape[-1]
  kernel = np.broadcast_to(np.outer(FIR_1D, FIR_1D)[:, :, None, None], (4, 4, 1, c))
  return jax.lax.conv_general_dilated(
    x,
    jnp.asarray(kernel, x.dtype),
    window_strides=(down, down),
    padding=((pad, pad), (pad, pad)),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    feature_group_count=c,
  )


class Conv2d(nn.Module):
  """Equalised-lr conv (D only), weight stored HWIO; `down=2`: FIR, then stride (StyleGAN2-ADA)."""

  features: int
  kernel_size: int
  activation: str = "linear"
  use_bias: bool = True
  down: int = 1
  conv_clamp: float | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, gain: float = 1.0):
    k = self.kernel_size
    in_ch = x.shape[-1]
    weight = self.param("weight", _normal_init(1.0), (k, k, in_ch, self.features))
    weight = weight * (1.0 / math.sqrt(in_ch * k * k))
    if self.down == 1:
      pad = k // 2
      x = _conv(x, weight, 1, pad, self.dtype)
    elif self.down == 2 and target.platform() == "cpu":
      # CPU only: the slow path it avoids is XLA:CPU's, and it was only measured there; on GPU/TPU
      # the patch tensor (9/4 of the input) would add memory traffic that convs do not have.
      x = down2_conv_patches(x, weight, self.dtype)
    else:
      x = down_conv_fir(x, weight, self.down, self.dtype)
    bias = self.param("bias", nn.initializers.zeros, (self.features,)) if self.use_bias else None
    return bias_act(x, bias, self.activation, gain=gain, clamp=self.conv_clamp)


def down_conv_fir(x, weight, down: int, dtype):
  """StyleGAN2-ADA's FIR downsampling conv (pad, [1,3,3,1] FIR, strided conv) as XLA convs."""
  k = weight.shape[0]
  if k == 1:
    # 1x1 with down: pad 1, FIR, subsample, then the 1x1 conv (cheaper order, same result).
    return _conv(fir_downsample(x, down, 1), weight, 1, 0, dtype)
  # kxk with down: pad k//2 + 1 each side, FIR (valid), strided conv without padding.
  return _conv(fir_downsample(x, 1, k // 2 + 1), weight, down, 0, dtype)


def _fir_phases(even, odd, axis: int):
  """Valid [1,3,3,1] FIR of the signal interleaving `even` and `odd`, split the same way."""

  def fir(parts):
    n = min(a.shape[axis] - s for a, s in parts)
    return sum(
      float(f) * jax.lax.slice_in_dim(a, s, s + n, axis=axis) for f, (a, s) in zip(FIR_1D, parts)
    )

  return (
    fir(((even, 0), (odd, 0), (even, 1), (odd, 1))),
    fir(((odd, 0), (even, 1), (odd, 1), (even, 2))),
  )


def down2_conv_patches(x, weight, dtype):
  """`down_conv_fir` with down=2 as polyphase FIR, patch gather and one matmul (for XLA:CPU).

  R1 differentiates the input gradient of every strided conv again. XLA:CPU rewrites the weight
  gradient of the transposed conv in there (its "kernel" is the full-resolution image) into a
  window-reversed conv that has no fast CPU kernel (~60x slower than this formulation for a
  128x128x256 -> 64x64x512 layer). Splitting the padded input into its 2x2 polyphase components
  makes the FIR and the stride-2 taps plain slices at the output resolution and leaves no conv to
  differentiate; the matmul is also faster than the strided conv forward and backward on CPU.
  Equal to `down_conv_fir` up to float32 rounding.
  """
  k = weight.shape[0]
  n, h, w, c = x.shape
  p = k // 2 + 1
  out_h = (h + 2 * p - 3 - k) // 2 + 1
  out_w = (w + 2 * p - 3 - k) // 2 + 1
  # An even padded size splits into equal phases; the extra zero row/column is never read.
  x = jnp.pad(x, ((0, 0), (p, p + h % 2), (p, p + w % 2), (0, 0)))
  z = [[x[:, dy::2, dx::2] for dx in range(2)] for dy in range(2)]
  for dx in range(2):
    z[0][dx], z[1][dx] = _fir_phases(z[0][dx], z[1][dx], 1)
  for dy in range(2):
    z[dy][0], z[dy][1] = _fir_phases(z[dy][0], z[dy][1], 2)
  # The conv reads FIR pixel (2i + ky, 2j + kx) = z[ky % 2][kx % 2][i + ky // 2, j + kx // 2];
  # taps in HWIO order so that the kernel flattens to [k * k * c, out].
  cols = jnp.concatenate(
    [
      z[ky % 2][kx % 2][:, ky // 2 : ky // 2 + out_h, kx // 2 : kx // 2 + out_w].astype(dtype)
      for ky in range(k)
      for kx in range(k)
    ],
    axis=-1,
  )
  y = matmul(cols.reshape(-1, k * k * c), weight.reshape(k * k * c, -1), dtype)
  return y.reshape(n, out_h, out_w, -1)


def _conv(x, weight, stride: int, pad: int, dtype):
  return jax.lax.conv_general_dilated(
    x.astype(dtype),
    weight.astype(dtype),
    window_strides=(stride, stride),
    padding=((pad, pad), (pad, pad)),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    preferred_element_type=dtype,
  )


def minibatch_std(x, group_size: int, num_channels: int = 1):
  """StyleGAN2 minibatch-std on NHWC with the official strided groups (StyleGAN2-ADA).

  Sample i = g * (N // G) + j belongs to group j, so groups are defined over the global batch no
  matter how the batch is sharded over devices.
  """
  n, h, w, c = x.shape
  g = min(group_size, n)
  if n % g:
    raise ValueError(
      f"minibatch-std: batch {n} is not divisible by the group size {g}; "
      "use a per-call batch that is a multiple of the group size"
    )
  f = num_channels
  y = x.astype(jnp.float32).reshape(g, n // g, h, w, f, c // f)
  y = y - jnp.mean(y, axis=0)
  y = jnp.mean(jnp.square(y), axis=0)
  y = jnp.sqrt(y + 1e-8)
  y = jnp.mean(y, axis=(1, 2, 4))  # [n/G, F]
  y = jnp.broadcast_to(y[None, :, None, None, :], (g, n // g, h, w, f)).reshape(n, h, w, f)
  return jnp.concatenate([x, y.astype(x.dtype)], axis=-1)


def add_upsampled_nearest2x(x, low):
  """x + low upsampled x2 (nearest) along the two spatial axes preceding the channel axis, as one
  broadcasting add over x viewed as 2x2 blocks: the upsampled array is never materialised (on TPU its broadcast and, in the backward pass, its
  block sum were separate kernels with costly relayouts)."""
  *lead, h, w, c = x.shape
  blocks = x.reshape(*lead, h // 2, 2, w // 2, 2, c) + low[..., :, None, :, None, :]
  return blocks.reshape(x.shape)
