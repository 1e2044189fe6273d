"""Frame geometry and image coding shared by the prepare CLI and the NumPy pipeline (no TensorFlow).

Spatial preprocessing follows the official loader (`resize_crop` in `src/training/dataset.py`):
centre crop to the short side (offset floored), then bilinear resize with half-pixel centres
(PyTorch `F.interpolate(mode='bilinear', align_corners=False)`, no antialias; TF's
`tf.image.resize(method='bilinear', antialias=False)` is the same map). `lanczos` is PIL's antialiased
Lanczos, which the official Kinetics-food preprocessing used.
"""

import functools
import io

import numpy as np
from PIL import Image

from digan_jax import quantize

RESIZE_METHODS = ("bilinear", "lanczos")
IMAGE_FORMATS = ("png", "jpeg")


def center_crop_square(frame):
  """Crops the central square of side min(H, W) from [H, W, C].

  Offsets are floored like the official `resize_crop` ((h - w) // 2), not rounded: they differ when
  the excess is 3 mod 4 (16x23 -> columns 3..18, not 4..19).
  """
  height, width = frame.shape[:2]
  side = min(height, width)
  top = (height - side) // 2
  left = (width - side) // 2
  return frame[top : top + side, left : left + side]


@functools.lru_cache(maxsize=64)
def bilinear_matrix(in_size: int, out_size: int, half_pixel: bool = True) -> np.ndarray:
  """[out, in] bilinear weights (no antialias), float32; at most two non-zeros per row.

  half_pixel=True: PyTorch align_corners=False / jax.image / TF2, src = (dst + 0.5) * in/out - 0.5
  clamped at 0. False: TF1 legacy resize_bilinear (the official FVD code), src = dst * in/out.
  """
  scale = in_size / out_size
  dst = np.arange(out_size, dtype=np.float64)
  src = np.maximum((dst + 0.5) * scale - 0.5, 0.0) if half_pixel else dst * scale
  lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = src - lo
  weights = np.zeros((out_size, in_size), np.float64)
  np.add.at(weights, (np.arange(out_size), lo), 1.0 - frac)
  np.add.at(weights, (np.arange(out_size), hi), frac)
  weights = weights.astype(np.float32)
  weights.flags.writeable = False  # cached and shared
  return weights


def resize_bilinear(frames, size):
  """Bilinear resize (no antialias) of [..., H, W, C] to [..., size, size, C], float32."""
  height, width = frames.shape[-3:-1]
  frames = frames.astype(np.float32)
  if (height, width) == (size, size):
    return frames
  rows = bilinear_matrix(height, size)
  cols = bilinear_matrix(width, size)
  return np.einsum("ih,...hwc,jw->...ijc", rows, frames, cols, optimize=True)


def crop_and_resize(frame, resolution, method="bilinear"):
  """uint8 [H, W, 3] -> uint8 [R, R, 3]: centre crop to the short side, then resize."""
  frame = center_crop_square(frame)
  if frame.shape[0] == resolution:
    return np.ascontiguousarray(frame)
  if method == "bilinear":
    return quantize.levels_to_uint8(resize_bilinear(frame, resolution))
  if method == "lanczos":
    return np.asarray(Image.fromarray(frame).resize((resolution, resolution), Image.LANCZOS))
  raise ValueError(f"Unknown resize method {method!r}; use one of {RESIZE_METHODS}.")


def encode_image(frame, image_format="png", jpeg_quality=95):
  """uint8 [H, W, 3] -> encoded bytes (lossless PNG, or JPEG at `jpeg_quality`)."""
  buffer = io.BytesIO()
  image = Image.fromarray(frame)
  if image_format == "png":
    # Level 1: a few % larger files than the default, several times faster to write.
    image.save(buffer, format="PNG", compress_level=1)
  elif image_format == "jpeg":
    image.save(buffer, format="JPEG", quality=int(jpeg_quality))
  else:
    raise ValueError(f"Unknown image format {image_format!r}; use one of {IMAGE_FORMATS}.")
  return buffer.getvalue()


def decode_image(data):
  """Encoded PNG/JPEG bytes -> uint8 [H, W, 3]."""
  with Image.open(io.BytesIO(data)) as image:
    return np.asarray(image.convert("RGB"))
