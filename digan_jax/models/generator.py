"""DIGAN generator: mapping network, FMM INR synthesis (official `src/training/networks.py`).

Layout: every tensor after the first embedding is [B, T, H, W, C] (video-major, frames
contiguous). All w-dependent quantities (FMM weight matrices, Fourier frequencies, content phases,
ToRGB styles) are computed once per video and shared by its frames (the official code recomputes
them per frame; broadcasting is exact), so rendering more frames only adds the per-pixel work.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from digan_jax.models.inr import PHI, CoordFuser, CoordGrid, video_tensor
from digan_jax.models.layers import (
  Dtype,
  FullyConnected,
  bias_act,
  normalize_2nd_moment,
  remat,
  add_upsampled_nearest2x,
)


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
  """Everything that fixes the generator's shapes and numerics (hashable, so usable under jit)."""

  resolution: int = 128
  input_resolution: int = 32
  z_dim: int = 512
  motion_dim: int = 512
  w_dim: int = 512
  c_dim: int = 0
  mapping_layers: int = 2
  mapping_lr_multiplier: float = 0.01
  channel_base: int = 32768
  channel_max: int = 512
  fmm_rank: int = 10
  emb_size: int = 128
  fourier_scale: float = math.sqrt(10.0)
  motion_sigma: float = 0.25
  extra_convs: tuple[tuple[int, int], ...] = ((128, 1), (256, 1))
  w_avg_beta: float = 0.995

  def __post_init__(self):
    for name in ("resolution", "input_resolution"):
      r = getattr(self, name)
      if r < 4 or r & (r - 1):
        raise ValueError(f"generator {name} must be a power of two >= 4, got {r}")
    if self.input_resolution > self.resolution:
      raise ValueError(f"input_resolution {self.input_resolution} > resolution {self.resolution}")

  @property
  def block_resolutions(self) -> list[int]:
    return [2**i for i in range(2, int(math.log2(self.resolution)) + 1)]

  def channels(self, res: int) -> int:
    return min(self.channel_base // res, self.channel_max)

  def num_extra(self, res: int) -> int:
    return dict(self.extra_convs).get(res, 0)

  @property
  def num_ws(self) -> int:
    """Style count of the official network (all equal; reported for parity with `ws`)."""
    return 1 + sum(2 + self.num_extra(r) for r in self.block_resolutions[1:]) + 1


class MappingNetwork(nn.Module):
  """StyleGAN2 mapping z (+ label embedding) -> w, with w_avg tracking for truncation."""

  z_dim: int
  c_dim: int
  w_dim: int
  num_layers: int
  lr_multiplier: float = 0.01
  w_avg_beta: float | None = 0.995
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z=None, labels=None, truncation_psi: float = 1.0, update_w_avg: bool = False):
    parts = []
    if self.z_dim:
      parts.append(normalize_2nd_moment(z))
    if self.c_dim:
      if labels is None:
        raise ValueError(f"this network is class-conditional (c_dim={self.c_dim}); pass labels")
      embed = FullyConnected(self.w_dim, dtype=self.dtype, name="embed")(labels.astype(jnp.float32))
      parts.append(normalize_2nd_moment(embed))
    x = jnp.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]
    for i in range(self.num_layers):
      x = FullyConnected(
        self.w_dim,
        activation="lrelu",
        lr_multiplier=self.lr_multiplier,
        dtype=self.dtype,
        name=f"fc{i}",
      )(x)
    if self.w_avg_beta is None:
      return x
    w_avg = self.variable("stats", "w_avg", jnp.zeros, (self.w_dim,), jnp.float32)
    if update_w_avg and not self.is_initializing():
      mean = jnp.mean(x, axis=0)
      w_avg.value = mean + self.w_avg_beta * (w_avg.value - mean)
    if truncation_psi != 1:
      x = w_avg.value + truncation_psi * (x - w_avg.value)
    return x


class FMMLayer(nn.Module):
  """Factorised multiplicative modulation of a shared 1x1 weight (official FMM), bias, lrelu.

  `x_low`, when given, is the lower-resolution half of the input: the official input is
  concat[nearest_up2(x_low), x], and since nearest upsampling commutes with a per-pixel linear
  map, that half is multiplied at the lower resolution and upsampled afterwards (4x fewer MACs
  for it; the result differs from the official order only by float reassociation).
  """

  features: int
  rank: int = 10
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, w, x_low=None):
    c_low = 0 if x_low is None else x_low.shape[-1]
    c_in, c_out, r = c_low + x.shape[-1], self.features, self.rank

    def modulated_weight():
      styles = FullyConnected((c_in + c_out) * r, dtype=self.dtype, name="affine")(w)
      left = styles[:, : c_out * r].reshape(-1, c_out, r)
      right = styles[:, c_out * r :].reshape(-1, r, c_in)
      mod = jnp.einsum("bor,bri->boi", left, right, precision=jax.lax.Precision.HIGHEST)
      weight = self.param("weight", nn.initializers.normal(1.0), (c_out, c_in))
      weight = weight[None] * (mod / math.sqrt(r) + 1.0)
      # eps is added to the norm, not inside the sqrt as in StyleGAN2 demod (official FMM).
      return weight / (jnp.sqrt(jnp.sum(jnp.square(weight), axis=-1, keepdims=True)) + 1e-8)

    weight = video_tensor(self, "weight", modulated_weight)  # [B, c_out, c_in]
    y = _per_pixel(x, weight[:, :, c_low:], self.dtype)
    if x_low is not None:
      y = add_upsampled_nearest2x(y, _per_pixel(x_low, weight[:, :, :c_low], self.dtype))
    bias = self.param("bias", nn.initializers.zeros, (c_out,))
    return bias_act(y, bias, "lrelu")


def _per_pixel(x, weight, dtype, out_dtype=None):
  """[B, T, H, W, I] x per-video [B, O, I] -> [B, T, H, W, O] in `out_dtype` (default `dtype`)."""
  return jnp.einsum(
    "bthwi,boi->bthwo",
    x.astype(dtype),
    weight.astype(dtype),
    preferred_element_type=out_dtype or dtype,
  )


class ToRGB(nn.Module):
  """Modulated 1x1 conv to RGB without demodulation; affine bias starts at 1 (StyleGAN2 ToRGB)."""

  channels: int = 3
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, w):
    c_in = x.shape[-1]

    def modulated_weight():
      styles = FullyConnected(c_in, bias_init=1.0, dtype=self.dtype, name="affine")(w)
      weight = self.param("weight", nn.initializers.normal(1.0), (self.channels, c_in))
      return weight[None] * (styles / math.sqrt(c_in))[:, None, :]

    # Three channels summed over levels: kept float32 (negligible traffic, exact skip sum).
    y = _per_pixel(x, video_tensor(self, "weight", modulated_weight), self.dtype, jnp.float32)
    return y + self.param("bias", nn.initializers.zeros, (self.channels,))


class SynthesisNetwork(nn.Module):
  """INR synthesis: (w, z_motion, times, grid) -> frames [B, T, H, W, 3] (unbounded)."""

  config: GeneratorConfig
  dtype: Dtype = jnp.float32
  remat: str = "none"  # layers.REMAT_POLICIES, for the FMM layers

  def _fuser(self, name):
    cfg = self.config
    return CoordFuser(
      cfg.emb_size, cfg.fourier_scale, cfg.motion_sigma, dtype=self.dtype, name=name
    )

  @nn.compact
  def __call__(self, w, z_motion, times, grid: CoordGrid = CoordGrid()):
    cfg = self.config
    fmm_cls = remat(FMMLayer, self.remat)
    fmm = lambda ch, name: fmm_cls(ch, cfg.fmm_rank, dtype=self.dtype, name=name)
    torgb = lambda name: ToRGB(dtype=self.dtype, name=name)
    level = cfg.input_resolution
    x = self._fuser("b4_coord_fuser")(w, z_motion, times, grid.coords(level))
    x = fmm(cfg.channels(4), "b4_conv1")(x, w)
    img = torgb("b4_torgb")(x, w)
    for res in cfg.block_resolutions[1:]:
      upsampled = res > cfg.input_resolution
      if upsampled:
        # Official: conv0(concat[up2(x), emb]); x is passed low-res (see FMMLayer).
        level *= 2
        emb = self._fuser(f"b{res}_coord_fuser")(w, z_motion, times, grid.coords(level))
        x = fmm(cfg.channels(res), f"b{res}_conv0")(emb, w, x_low=x)
      else:
        x = fmm(cfg.channels(res), f"b{res}_conv0")(x, w)
      x = fmm(cfg.channels(res), f"b{res}_conv1")(x, w)
      for i in range(cfg.num_extra(res)):
        x = fmm(cfg.channels(res), f"b{res}_extra{i}")(x, w)
      rgb = torgb(f"b{res}_torgb")(x, w)
      img = add_upsampled_nearest2x(rgb, img) if upsampled else img + rgb
    return img


class Generator(nn.Module):
  """DIGAN generator. `__call__` maps latents and renders any times on any coordinate grid."""

  config: GeneratorConfig
  dtype: Dtype = jnp.float32
  remat: str = "none"  # layers.REMAT_POLICIES, for the synthesis network's FMM layers

  def setup(self):
    cfg = self.config
    self.mapping = MappingNetwork(
      cfg.z_dim,
      cfg.c_dim,
      cfg.w_dim,
      cfg.mapping_layers,
      cfg.mapping_lr_multiplier,
      cfg.w_avg_beta,
      dtype=self.dtype,
    )
    self.synthesis = SynthesisNetwork(cfg, dtype=self.dtype, remat=self.remat)

  def map(self, z_content, labels=None, truncation_psi: float = 1.0, update_w_avg: bool = False):
    return self.mapping(z_content, labels, truncation_psi, update_w_avg)

  def synthesize(self, w, z_motion, times, grid: CoordGrid = CoordGrid()):
    return self.synthesis(w, z_motion, _times_per_video(times, w.shape[0]), grid)

  def inr_params(self, w, z_motion):
    """phi(w, z_M): every per-video tensor of the INR ({module path: tensors}, leading axis B).
    Call with mutable=[PHI]; the one-frame render it runs on the way is discarded."""
    self.synthesize(w, z_motion, jnp.zeros((1,), jnp.float32), CoordGrid())
    return self.variables[PHI]

  def render_inr(self, phi, times, grid: CoordGrid = CoordGrid()):
    """Frames [B, T, H, W, 3] from phi alone (pass it as the 'phi' collection too: the latents are
    not used, zeros stand in for them)."""
    batch = jax.tree.leaves(phi)[0].shape[0]
    cfg = self.config
    w = jnp.zeros((batch, cfg.w_dim), jnp.float32)
    return self.synthesize(w, jnp.zeros((batch, cfg.motion_dim), jnp.float32), times, grid)

  def __call__(
    self,
    z_content,
    z_motion,
    times,
    labels=None,
    truncation_psi: float = 1.0,
    grid: CoordGrid = CoordGrid(),
    update_w_avg: bool = False,
  ):
    """z_content [B, z_dim], z_motion [B, motion_dim], times [T] or [B, T] -> [B, T, H, W, 3]."""
    w = self.map(z_content, labels, truncation_psi, update_w_avg)
    return self.synthesize(w, z_motion, times, grid)


def _times_per_video(times, batch: int):
  times = jnp.asarray(times, jnp.float32)
  if times.ndim == 1:
    return jnp.broadcast_to(times[None], (batch, times.shape[0]))
  if times.ndim != 2 or times.shape[0] != batch:
    raise ValueError(f"times must be [T] or [B={batch}, T], got shape {times.shape}")
  return times


def generator_config_from(mapping: Mapping[str, Any]) -> GeneratorConfig:
  """GeneratorConfig from a flat mapping of its field names (e.g. a ConfigDict); unknown keys fail."""
  fields = {f.name for f in dataclasses.fields(GeneratorConfig)}
  unknown = set(mapping) - fields
  if unknown:
    raise ValueError(f"unknown generator option(s) {sorted(unknown)}; valid: {sorted(fields)}")
  kwargs = dict(mapping)
  if "extra_convs" in kwargs:
    extra = kwargs["extra_convs"]
    items = extra.items() if hasattr(extra, "items") else extra
    kwargs["extra_convs"] = tuple(sorted((int(k), int(v)) for k, v in items))
  return GeneratorConfig(**kwargs)
