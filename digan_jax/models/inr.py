"""Coordinate grids and the content/motion Fourier embedding (official `CoordFuser`).

A `CoordGrid` describes the field of view and sampling density of a render independently of the
network's resolution: the training grid, super-resolution (more points over the same view) and
zoom-out (the same spacing over a larger view) are all grids, and every level of the synthesis
network samples the same view with the level's own spacing, so nearest x2 upsampling between
levels stays consistent (the official super-resolution / zoom-out code is not released).
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from digan_jax.models.layers import FullyConnected, Dtype, lrelu

# The variable collection of the per-video INR tensors phi(z, z_M) (paper Fig. 9).
PHI = "phi"


def video_tensor(module: nn.Module, name: str, compute):
  """A per-video tensor of the INR: part of phi(z, z_M), what depends only on the latents (FMM
  weights, Fourier frequencies and content phases, the motion affine, ToRGB weights).

  Read from the 'phi' collection when the caller passes one (a render from phi, e.g. interpolated
  between two videos); otherwise computed, and recorded there when 'phi' is mutable
  (`Generator.inr_params`). A trace-time choice: the ordinary render is unchanged.
  """
  if module.has_variable(PHI, name):
    return module.get_variable(PHI, name)
  value = compute()
  if module.is_mutable_collection(PHI) and not module.is_initializing():
    module.put_variable(PHI, name, value)
  return value


@dataclasses.dataclass(frozen=True)
class CoordGrid:
  """A rectangular sampling of the code-unit plane ([-1, 1) is the training view).

  At a network level of native resolution n, points are spaced 2 / (n * scale) apart and start at
  `x_lo` / `y_lo` (left-aligned, as the official `generate_coords`); y is flipped so that the top
  row holds the largest y. `zoom_out(1.5)` is the paper's [-0.25, 1.25]^2 view in [0, 1] units.
  """

  x_lo: float = -1.0
  x_hi: float = 1.0
  y_lo: float = -1.0
  y_hi: float = 1.0
  scale: int = 1

  @classmethod
  def training(cls) -> "CoordGrid":
    return cls()

  @classmethod
  def super_resolution(cls, scale: int) -> "CoordGrid":
    if scale < 1 or int(scale) != scale:
      raise ValueError(f"super-resolution scale must be a positive integer, got {scale}")
    return cls(scale=int(scale))

  @classmethod
  def zoom_out(cls, factor: float = 1.5, scale: int = 1) -> "CoordGrid":
    """A view `factor` times wider and taller around the training view, same spacing."""
    if factor < 1:
      raise ValueError(f"zoom-out factor must be >= 1, got {factor}")
    half = float(factor)
    return cls(-half, half, -half, half, scale)

  def _count(self, lo: float, hi: float, n: int) -> int:
    points = (hi - lo) * n * self.scale / 2.0
    count = int(round(points))
    if count < 1 or abs(points - count) > 1e-6:
      raise ValueError(
        f"grid [{lo}, {hi}) x scale {self.scale} gives {points} points at level {n}; choose a "
        "range whose width is a multiple of 2 / (input_resolution * scale)"
      )
    return count

  def shape(self, n: int) -> tuple[int, int]:
    return self._count(self.y_lo, self.y_hi, n), self._count(self.x_lo, self.x_hi, n)

  def coords(self, n: int) -> np.ndarray:
    """[H, W, 2] array of (x, y) at level n, computed in float64 then cast (exact for n <= 2^20)."""
    h, w = self.shape(n)
    step = 2.0 / (n * self.scale)
    xs = self.x_lo + step * np.arange(w, dtype=np.float64)
    ys = (self.y_lo + step * np.arange(h, dtype=np.float64))[::-1]
    grid = np.stack(np.broadcast_arrays(xs[None, :], ys[:, None]), axis=-1)
    return grid.astype(np.float32)


class CoordFuser(nn.Module):
  """Per-video Fourier features of (x, y) with motion-dependent phases (DIGAN's G_M and f_M).

  Everything that depends only on (w, z_motion) is computed once per video; only the phase bias
  depends on time and only the phase map depends on the pixel.
  """

  emb_size: int = 128
  fourier_scale: float = math.sqrt(10.0)
  motion_sigma: float = 0.25
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, w, z_motion, times, coords):
    """w [B, w_dim], z_motion [B, m_dim], times [B, T], coords [H, W, 2] -> [B, T, H, W, 2*emb]."""
    e = self.emb_size
    m = video_tensor(
      self, "xyaffine", lambda: FullyConnected(3 * e, dtype=self.dtype, name="xyaffine")(w)
    )
    freqs = self.fourier_scale * m[:, : 2 * e].reshape(-1, e, 2)  # row d = (x-weight, y-weight)
    phase_content = m[:, 2 * e :]
    a = video_tensor(
      self,
      "affine",
      lambda: FullyConnected(e, dtype=self.dtype, name="affine")(
        jnp.concatenate([w, z_motion], -1)
      ),
    )
    # Official: PyTorch default leaky-ReLU (slope 0.01, no gain) on a*t*sigma_t; linear as t >= 0.
    u = lrelu(a[:, None, :] * times[:, :, None].astype(jnp.float32) * self.motion_sigma, 0.01)
    u = FullyConnected(e, activation="lrelu", dtype=self.dtype, name="motion_mlp0")(u)
    phase_motion = FullyConnected(e, dtype=self.dtype, name="motion_mlp1")(u)
    phase = phase_content[:, None, :] + phase_motion  # [B, T, e]
    coords = jnp.asarray(coords)
    spatial = (
      coords[None, :, :, None, 0] * freqs[:, None, None, :, 0]
      + coords[None, :, :, None, 1] * freqs[:, None, None, :, 1]
    )  # [B, H, W, e]
    phi = spatial[:, None] + phase[:, :, None, None, :]
    # Phases span many periods: sin/cos in float32, only the bounded features in compute dtype.
    return jnp.concatenate([jnp.sin(phi), jnp.cos(phi)], axis=-1).astype(self.dtype)
