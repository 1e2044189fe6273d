"""StyleGAN2 resnet D and DIGAN's image / motion D pair (official `OurDiscriminator`), NHWC."""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax.numpy as jnp

from digan_jax.models.generator import MappingNetwork
from digan_jax.models.layers import Conv2d, Dtype, FullyConnected, minibatch_std, remat

SQRT_HALF = math.sqrt(0.5)


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig:
  resolution: int = 128
  channel_base: int = 32768
  channel_max: int = 512
  c_dim: int = 0
  conv_clamp: float | None = 256.0
  mbstd_group_size: int = 4
  mbstd_num_channels: int = 1
  cmap_dim: int | None = None  # projection width; None = channels at 4x4 (official default)
  mapping_layers: int = 8  # label mapping of the projection head

  def __post_init__(self):
    r = self.resolution
    if r < 8 or r & (r - 1):
      raise ValueError(f"discriminator resolution must be a power of two >= 8, got {r}")

  def channels(self, res: int) -> int:
    return min(self.channel_base // res, self.channel_max)

  @property
  def block_resolutions(self) -> list[int]:
    return [2**i for i in range(int(math.log2(self.resolution)), 2, -1)]


class DiscriminatorBlock(nn.Module):
  """Resnet block: (skip(x) + conv1(conv0(x))) * sqrt(0.5), both halving the resolution."""

  out_channels: int
  conv_clamp: float | None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    tmp = x.shape[-1]
    # The skip conv is linear, bias-free and never clamped.
    y = Conv2d(self.out_channels, 1, use_bias=False, down=2, dtype=self.dtype, name="skip")(
      x, gain=SQRT_HALF
    )
    x = Conv2d(
      tmp, 3, activation="lrelu", conv_clamp=self.conv_clamp, dtype=self.dtype, name="conv0"
    )(x)
    x = Conv2d(
      self.out_channels,
      3,
      activation="lrelu",
      down=2,
      conv_clamp=self.conv_clamp,
      dtype=self.dtype,
      name="conv1",
    )(x, gain=SQRT_HALF)
    return y + x


class Discriminator(nn.Module):
  """StyleGAN2-ADA `resnet` discriminator with optional projection head when c_dim > 0."""

  config: DiscriminatorConfig
  dtype: Dtype = jnp.float32
  remat: str = "none"  # layers.REMAT_POLICIES, for the resnet blocks

  @nn.compact
  def __call__(self, img, labels=None):
    cfg = self.config
    if img.ndim != 4 or img.shape[1] != cfg.resolution or img.shape[2] != cfg.resolution:
      raise ValueError(
        f"discriminator expects [N, {cfg.resolution}, {cfg.resolution}, C] input, got {img.shape}"
      )
    res0 = cfg.block_resolutions[0]
    x = Conv2d(
      cfg.channels(res0),
      1,
      activation="lrelu",
      conv_clamp=cfg.conv_clamp,
      dtype=self.dtype,
      name=f"b{res0}_fromrgb",
    )(img)
    block = remat(DiscriminatorBlock, self.remat)
    for res in cfg.block_resolutions:
      x = block(cfg.channels(res // 2), cfg.conv_clamp, dtype=self.dtype, name=f"b{res}")(x)
    # Epilogue at 4x4.
    ch4 = cfg.channels(4)
    if cfg.mbstd_num_channels:
      x = minibatch_std(x, cfg.mbstd_group_size, cfg.mbstd_num_channels)
    x = Conv2d(
      ch4, 3, activation="lrelu", conv_clamp=cfg.conv_clamp, dtype=self.dtype, name="b4_conv"
    )(x)
    # Official flatten order is (C, H, W).
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
    x = FullyConnected(ch4, activation="lrelu", dtype=self.dtype, name="b4_fc")(x)
    cmap_dim = (cfg.cmap_dim or ch4) if cfg.c_dim else 0
    x = FullyConnected(cmap_dim or 1, dtype=self.dtype, name="b4_out")(x)
    if cfg.c_dim:
      if labels is None:
        raise ValueError(
          f"this discriminator is class-conditional (c_dim={cfg.c_dim}); pass labels"
        )
      cmap = MappingNetwork(
        0, cfg.c_dim, cmap_dim, cfg.mapping_layers, 0.01, None, dtype=self.dtype, name="mapping"
      )(None, labels)
      x = jnp.sum(x * cmap, axis=1, keepdims=True) / math.sqrt(cmap_dim)
    return x


class DualDiscriminator(nn.Module):
  """DIGAN's D: motion D on [frame_lo, frame_hi, delta-t plane] (7 ch) and image D on frames.

  Input x7: [B, H, W, 7]. Returns (motion logits [B, 1], image logits [2B, 1]) with the image
  batch in (b t) order: index 2b is frame_lo of video b, 2b + 1 its frame_hi.
  """

  config: DiscriminatorConfig
  dtype: Dtype = jnp.float32
  remat: str = "none"

  def setup(self):
    self.motion_d = Discriminator(self.config, dtype=self.dtype, remat=self.remat)
    self.image_d = Discriminator(self.config, dtype=self.dtype, remat=self.remat)

  def motion(self, x7, labels=None):
    if x7.shape[-1] != 7:
      raise ValueError(
        f"motion discriminator expects 7 channels (2 frames + delta-t), got {x7.shape}"
      )
    return self.motion_d(x7, labels)

  def image(self, frames, labels=None):
    """frames [2B, H, W, 3] (or [B, 2, H, W, 3]); labels per video [B, c] are repeated per frame."""
    if frames.ndim == 5:
      frames = frames.reshape((-1,) + frames.shape[2:])
    if labels is not None:
      labels = jnp.repeat(labels, frames.shape[0] // labels.shape[0], axis=0)
    return self.image_d(frames, labels)

  def __call__(self, x7, labels=None):
    return self.motion(x7, labels), self.image(split_frames(x7), labels)


def split_frames(x7):
  """[B, H, W, 7] -> [2B, H, W, 3] in (b t) order (the Δt plane is dropped)."""
  b, h, w, _ = x7.shape
  frames = x7[..., :6].reshape(b, h, w, 2, 3)
  return jnp.transpose(frames, (0, 3, 1, 2, 4)).reshape(2 * b, h, w, 3)


def pack_pair(frame_lo, frame_hi, delta_t):
  """frames [B, H, W, 3] x2 and delta_t [B] -> the motion D input [B, H, W, 7]."""
  plane = jnp.broadcast_to(
    delta_t.reshape(-1, 1, 1, 1).astype(frame_lo.dtype), frame_lo.shape[:3] + (1,)
  )
  return jnp.concatenate([frame_lo, frame_hi, plane], axis=-1)
