"""DiffAugment for DIGAN's frame pairs: color, translation, optional cutout.

As in the official `src/training/diffaugment.py`, random parameters are drawn once per video and
shared by its two frames; statistics (the means of saturation and contrast) are taken per frame;
the Δt plane of the motion-D input is never touched.
Drawing (`sample_params`) is separate from applying (`apply_frames`), so a step can draw the
parameters of a whole global batch once and slice them per micro-batch, and tests can pin them.
Everything is differentiable with respect to the frames (translation and cutout are masked gathers).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

OPS = ("color", "translation", "cutout")


def parse_policy(policy: str) -> tuple[str, ...]:
  ops = tuple(p.strip() for p in policy.split(",") if p.strip())
  for op in ops:
    if op not in OPS:
      raise ValueError(f"unknown DiffAugment op {op!r} in policy {policy!r}; choose from {OPS}")
  return ops


def shift_size(resolution: int, ratio: float) -> int:
  """Official rounding: int(size * ratio + 0.5) (16 px for translation 1/8 at 128)."""
  return int(resolution * ratio + 0.5)


def sample_params(
  key, batch: int, resolution: int, policy: str, translation: float = 0.125, cutout: float = 0.5
) -> dict[str, jax.Array]:
  """Per-video random parameters for `policy`, each an array with leading dimension `batch`."""
  ops = parse_policy(policy)
  keys = jax.random.split(key, 7)
  params = {}
  if "color" in ops:
    params["brightness"] = jax.random.uniform(keys[0], (batch,)) - 0.5
    params["saturation"] = jax.random.uniform(keys[1], (batch,)) * 2.0
    params["contrast"] = jax.random.uniform(keys[2], (batch,)) + 0.5
  if "translation" in ops:
    s = shift_size(resolution, translation)
    params["translate"] = jax.random.randint(keys[3], (batch, 2), -s, s + 1)
  if "cutout" in ops:
    c = shift_size(resolution, cutout)
    # Official offsets: uniform in [0, size + (1 - c % 2)), the box starts c // 2 before them.
    params["cutout"] = jax.random.randint(keys[4], (batch, 2), 0, resolution + (1 - c % 2)) - c // 2
  return params


def _translate_axis(x, shift, axis: int):
  """out[..., i, ...] = x[..., i + shift, ...] inside the frame, 0 outside (per-video shift)."""
  n = x.shape[axis]
  src = jnp.arange(n)[None, :] + shift[:, None]  # [B, n]
  valid = (src >= 0) & (src < n)
  shape = [x.shape[0]] + [1] * (x.ndim - 1)
  shape[axis] = n
  src = jnp.clip(src, 0, n - 1).reshape(shape)
  gathered = jnp.take_along_axis(
    x, jnp.broadcast_to(src, x.shape[:axis] + (n,) + x.shape[axis + 1 :]), axis=axis
  )
  return jnp.where(valid.reshape(shape), gathered, 0.0)


def apply_frames(frames, params: dict[str, jax.Array], policy: str, cutout: float = 0.5):
  """Augment frames [B, 2, H, W, C] with per-video params; op order follows `policy`."""
  ops = parse_policy(policy)
  per_video = lambda v: v.reshape((-1,) + (1,) * (frames.ndim - 1)).astype(frames.dtype)
  x = frames
  for op in ops:
    if op == "color":
      x = x + per_video(params["brightness"])
      mean = jnp.mean(x, axis=-1, keepdims=True)  # per pixel
      x = (x - mean) * per_video(params["saturation"]) + mean
      mean = jnp.mean(x, axis=(-3, -2, -1), keepdims=True)  # per frame
      x = (x - mean) * per_video(params["contrast"]) + mean
    elif op == "translation":
      shift = params["translate"]
      x = _translate_axis(x, shift[:, 0], axis=2)
      x = _translate_axis(x, shift[:, 1], axis=3)
    elif op == "cutout":
      h, w = x.shape[2], x.shape[3]
      size = shift_size(h, cutout), shift_size(w, cutout)
      start = params["cutout"]
      rows = jnp.arange(h)[None] - start[:, :1]
      cols = jnp.arange(w)[None] - start[:, 1:]
      inside = ((rows >= 0) & (rows < size[0]))[:, :, None] & ((cols >= 0) & (cols < size[1]))[
        :, None, :
      ]  # [B, H, W]
      x = jnp.where(inside[:, None, :, :, None], 0.0, x)
  return x


def apply_pair7(x7, params: dict[str, jax.Array], policy: str, cutout: float = 0.5):
  """Augment the motion-D input [B, H, W, 7]: both frames alike, Δt plane (channel 6) unchanged."""
  if not parse_policy(policy):
    return x7
  b, h, w, _ = x7.shape
  frames = jnp.moveaxis(x7[..., :6].reshape(b, h, w, 2, 3), 3, 1)  # [B, 2, H, W, 3]
  frames = apply_frames(frames, params, policy, cutout)
  frames = jnp.moveaxis(frames, 1, 3).reshape(b, h, w, 6)
  return jnp.concatenate([frames, x7[..., 6:]], axis=-1)


def augment_pair7(key, x7, policy: str, translation: float = 0.125, cutout: float = 0.5):
  """Draw and apply in one go (fresh randomness per call)."""
  params = sample_params(key, x7.shape[0], x7.shape[1], policy, translation, cutout)
  return apply_pair7(x7, params, policy, cutout)
