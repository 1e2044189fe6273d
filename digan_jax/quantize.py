"""Float video -> uint8 levels: one function, one rounding convention per documented purpose.

`to_uint8(x, mode)` takes frames in [-1, 1]:
- "floor": DIGAN's FVD (src/scripts/compute_fvd_kvd.py): clamp to [-1, 1], then
  trunc((x + 1) / 2 * 255); 255 only at x = 1.
- "round_half_up": StyleGAN-V's FVD: trunc(clip(x * 127.5 + 128, 0, 255)), i.e. (x + 1) * 127.5
  rounded with ties up.
- "rint": everything that is looked at or stored (sample videos, as the official snapshots save
  them), and recovering the stored level of pipeline floats (uint8 / 127.5 - 1): (x + 1) * 127.5
  rounded with ties to even, then clipped. It is the exact inverse of the pipeline's scaling.

`levels_to_uint8(x)` takes pixel values already in [0, 255] (a resampled image): rint, then clip.

NumPy in, NumPy out (host code); a jax.Array or tracer in, jax out (inside a jitted graph). Both
branches evaluate the same float32 expressions.
"""

from __future__ import annotations

import sys

import numpy as np

MODES = ("floor", "round_half_up", "rint")


def _xp(x):
  # jax is only looked up, never imported: the data pipeline uses this module without jax.
  jax = sys.modules.get("jax")
  if jax is not None and isinstance(x, jax.Array):
    return jax.numpy
  return np


def to_uint8(x, mode: str):
  """[-1, 1] floats -> uint8 under `mode` (see the module docstring)."""
  xp = _xp(x)
  x = xp.asarray(x, xp.float32)
  if mode == "floor":
    y = xp.floor((xp.clip(x, -1.0, 1.0) + 1.0) / 2.0 * 255.0)
  elif mode == "round_half_up":
    y = xp.floor(xp.clip(x * 127.5 + 128.0, 0.0, 255.0))
  elif mode == "rint":
    y = xp.clip(xp.rint((x + 1.0) * 127.5), 0.0, 255.0)
  else:
    raise ValueError(f"unknown uint8 mode {mode!r}; expected one of {MODES}")
  return y.astype(xp.uint8)


def levels_to_uint8(x):
  """Pixel values in [0, 255] (float) -> uint8: nearest level (ties to even), clipped."""
  xp = _xp(x)
  return xp.clip(xp.rint(x), 0, 255).astype(xp.uint8)
