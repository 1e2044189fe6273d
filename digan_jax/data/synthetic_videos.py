"""Procedural synthetic videos: the NumPy generator behind the `synthetic_videos` TFDS builder.

This module owns the motion families, their rendering and `generate()`. It needs only NumPy (no
TensorFlow), so benchmarks and tests on machines without TF can use the same videos in memory.

Every video lives in normalised coordinates (x, y in [-1, 1]) and is rasterised at the requested
resolution with resolution-aware soft edges, so the same seed gives the same video at 32² and 128².
Video `i` depends only on (seed, i): a larger `num_videos` extends a set without changing its start.

Motion families (the class label is the family index, `FAMILIES[label]`):
  0 translation   a shape moves along a straight line at constant speed
  1 rotation      an elongated shape spins about a fixed centre
  2 scaling       a shape pulses in size (sinusoidal)
  3 bouncing      a ball reflects off the frame borders
  4 color_change  a static shape whose hue cycles
  5 camera_pan    the camera pans over a textured world holding a fixed object
Each video also draws its background texture, colours, shape type, speed and phase, so a model
must learn a distribution of appearances and motions rather than six clips.
"""

import dataclasses

import numpy as np

FAMILIES = ("translation", "rotation", "scaling", "bouncing", "color_change", "camera_pan")
SHAPES = ("disc", "square", "triangle", "bar")
# Nominal frame rate stored with the videos (they have no physical time).
FPS = 8.0


@dataclasses.dataclass
class GeneratedVideos:
  """An in-memory video set.

  videos: list of uint8 arrays [length_i, resolution, resolution, 3].
  labels: int32 [num_videos], the motion family index.
  lengths: int32 [num_videos].
  """

  videos: list
  labels: np.ndarray
  lengths: np.ndarray

  def __len__(self):
    return len(self.videos)


def _hsv_to_rgb(h, s, v):
  """Vectorised HSV -> RGB in [0, 1]; h in turns (any real), s, v in [0, 1]."""
  h = np.mod(h, 1.0)
  k = np.mod(np.array([5.0, 3.0, 1.0]) + h[..., None] * 6.0, 6.0)
  return v[..., None] - v[..., None] * s[..., None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _shape_sdf(shape, px, py):
  """Signed distance (in units of the shape size) for a shape centred at 0 with radius ~1."""
  if shape == "disc":
    return np.sqrt(px * px + py * py) - 1.0
  if shape == "square":
    return np.maximum(np.abs(px), np.abs(py)) - 0.8
  if shape == "bar":
    return np.maximum(np.abs(px) - 1.0, np.abs(py) - 0.3)
  # Equilateral triangle pointing up (bounded by three half-planes).
  return np.maximum(-py - 0.5, (np.abs(px) * np.sqrt(3.0) + py) * 0.5 - 0.5)


def _background(rng, x, y, amplitude):
  """A smooth random texture on world coordinates (x, y): base colour + three plane waves."""
  base = rng.uniform(0.15, 0.85, size=3)
  freq = rng.uniform(1.5, 4.0, size=3)
  angle = rng.uniform(0, 2 * np.pi, size=3)
  phase = rng.uniform(0, 2 * np.pi, size=3)
  tint = rng.uniform(-1.0, 1.0, size=(3, 3))
  out = np.broadcast_to(base, x.shape + (3,)).copy()
  for k in range(3):
    wave = np.sin(freq[k] * np.pi * (np.cos(angle[k]) * x + np.sin(angle[k]) * y) + phase[k])
    out += amplitude * wave[..., None] * tint[k]
  return out


def _reflect(p, limit):
  """Folds positions into [-limit, limit] like a ball bouncing elastically off walls."""
  period = 4.0 * limit
  q = np.mod(p + limit, period)
  return np.where(q < 2 * limit, q, period - q) - limit


def render_video(seed, index, resolution, length):
  """Renders video `index` of the set drawn with `seed`; returns (uint8 [L, R, R, 3], label)."""
  rng = np.random.default_rng([seed, index, 0x5EED])
  label = int(rng.integers(len(FAMILIES)))
  family = FAMILIES[label]
  t = np.arange(length, dtype=np.float64)[:, None, None]  # frames
  coords = (np.arange(resolution, dtype=np.float64) + 0.5) / resolution * 2.0 - 1.0
  x = coords[None, None, :]
  y = coords[None, :, None]
  # Soft edge of ~1 pixel whatever the resolution (anti-aliasing).
  edge = 2.0 / resolution

  shape = (
    SHAPES[int(rng.integers(3))]
    if family != "rotation"
    else str(rng.choice(["bar", "triangle", "square"]))
  )
  size = rng.uniform(0.22, 0.4)
  hue = rng.uniform()
  sat = np.full_like(t, rng.uniform(0.6, 1.0))
  val = np.full_like(t, rng.uniform(0.7, 1.0))
  hue_t = np.full_like(t, hue)
  angle = np.full_like(t, rng.uniform(0, 2 * np.pi))
  scale = np.full_like(t, size)
  center = rng.uniform(-0.4, 0.4, size=2)
  cx = np.full_like(t, center[0])
  cy = np.full_like(t, center[1])
  pan = np.zeros(2)
  bg_amplitude = 0.08

  if family == "translation":
    speed = rng.uniform(0.03, 0.06)
    direction = rng.uniform(0, 2 * np.pi)
    velocity = speed * np.array([np.cos(direction), np.sin(direction)])
    # Centre the path on the start point so the shape stays mostly in view.
    cx = center[0] + velocity[0] * (t - length / 2)
    cy = center[1] + velocity[1] * (t - length / 2)
  elif family == "rotation":
    omega = rng.uniform(0.08, 0.2) * rng.choice([-1.0, 1.0])
    angle = angle + omega * t
    scale = np.full_like(t, size * 1.4)
  elif family == "scaling":
    omega = rng.uniform(0.15, 0.4)
    scale = size * (1.0 + 0.5 * np.sin(omega * t + rng.uniform(0, 2 * np.pi)))
  elif family == "bouncing":
    shape = "disc"
    size = rng.uniform(0.15, 0.25)
    scale = np.full_like(t, size)
    speed = rng.uniform(0.08, 0.15)
    direction = rng.uniform(0, 2 * np.pi)
    limit = 1.0 - size
    cx = _reflect(center[0] + speed * np.cos(direction) * t, limit)
    cy = _reflect(center[1] + speed * np.sin(direction) * t, limit)
  elif family == "color_change":
    hue_t = hue + rng.uniform(0.02, 0.05) * rng.choice([-1.0, 1.0]) * t
    val = 0.75 + 0.2 * np.sin(rng.uniform(0.1, 0.3) * t)
  elif family == "camera_pan":
    speed = rng.uniform(0.02, 0.05)
    direction = rng.uniform(0, 2 * np.pi)
    pan = speed * np.array([np.cos(direction), np.sin(direction)])
    bg_amplitude = 0.18
    # The object is fixed in the world, so it moves with the background.
    cx = center[0] - pan[0] * (t - length / 2)
    cy = center[1] - pan[1] * (t - length / 2)

  world_x, world_y = np.broadcast_arrays(x + pan[0] * t, y + pan[1] * t)
  frames = _background(rng, world_x, world_y, bg_amplitude)

  cos, sin = np.cos(angle), np.sin(angle)
  dx, dy = x - cx, y - cy
  px = (cos * dx + sin * dy) / scale
  py = (-sin * dx + cos * dy) / scale
  distance = _shape_sdf(shape, px, py) * scale
  alpha = np.clip(0.5 - distance / edge, 0.0, 1.0)[..., None]
  color = _hsv_to_rgb(hue_t, sat, val)  # [L, 1, 1, 3]
  frames = frames * (1.0 - alpha) + color * alpha
  return np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8), label


def video_lengths(seed, num_videos, num_frames):
  """Per-video lengths: an int gives fixed lengths; a (min, max) pair draws each in [min, max]."""
  if isinstance(num_frames, (int, np.integer)):
    if num_frames < 1:
      raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    return np.full(num_videos, int(num_frames), np.int32)
  low, high = (int(v) for v in num_frames)
  if not 1 <= low <= high:
    raise ValueError(f"num_frames=(min, max) needs 1 <= min <= max, got {num_frames}")
  return np.array(
    [np.random.default_rng([seed, i, 0x1E9]).integers(low, high + 1) for i in range(num_videos)],
    np.int32,
  )


def generate(num_videos, resolution=32, num_frames=(24, 48), seed=0, first_index=0):
  """Generates `num_videos` videos in memory (no TensorFlow).

  Args:
    num_videos: how many videos.
    resolution: frame side in pixels (square frames).
    num_frames: fixed length (int) or an inclusive (min, max) range of lengths.
    seed: set seed; video i depends only on (seed, i).
    first_index: index of the first video (the TFDS test split continues after the train videos).

  Returns:
    GeneratedVideos with uint8 videos [L_i, R, R, 3], int32 labels and lengths.
  """
  if num_videos < 1:
    raise ValueError(f"num_videos must be >= 1, got {num_videos}")
  if resolution < 4:
    raise ValueError(f"resolution must be >= 4, got {resolution}")
  lengths = video_lengths(seed, first_index + num_videos, num_frames)[first_index:]
  videos, labels = [], []
  for i in range(num_videos):
    video, label = render_video(seed, first_index + i, resolution, int(lengths[i]))
    videos.append(video)
    labels.append(label)
  return GeneratedVideos(videos=videos, labels=np.array(labels, np.int32), lengths=lengths)


def render_encoded(args):
  """(seed, index, resolution, length, image_format) -> (encoded frames, label); a picklable
  worker for parallel dataset builds."""
  from digan_jax.data import image_ops  # pylint: disable=g-import-not-at-top

  seed, index, resolution, length, image_format = args
  video, label = render_video(seed, index, resolution, length)
  return [image_ops.encode_image(frame, image_format) for frame in video], label
