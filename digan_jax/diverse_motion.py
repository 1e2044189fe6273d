"""Diverse motion (paper Fig. 6): one content latent rendered with N motion latents.

  python -m digan_jax.sampling --checkpoint=WORKDIR/checkpoints --output=out/ --diverse_motion=4

DIGAN's motion enters only through the time coordinate (the motion MLP's input is
lrelu(0.25 t affine(w, z_M))), so all N videos share their t = 0 frame and part as t grows. The
figure shows each video as a row of frames and, below them, the pixel difference between the
videos at each time; the JSON card gives that difference per frame as a number.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from digan_jax import fileio, sampling
from digan_jax.data import image_ops

# Grey levels of mean |difference| are small next to 255: shown amplified, on a fixed scale so that
# two figures compare (a per-figure normalisation would make t = 0 noise look like motion).
DIFF_GAIN = 4.0


def difference_maps(videos: np.ndarray) -> np.ndarray:
  """uint8 [N, T, H, W, 3] -> float [T, H, W]: mean over videos and channels of |video - mean|."""
  v = videos.astype(np.float32)
  return np.abs(v - v.mean(axis=0, keepdims=True)).mean(axis=(0, 4))


def difference_video(diff: np.ndarray) -> np.ndarray:
  """float [T, H, W] -> uint8 [1, T, H, W, 3]: the difference shown as a grey video."""
  grey = np.clip(diff * DIFF_GAIN, 0, 255).astype(np.uint8)
  return np.repeat(grey[None, ..., None], 3, axis=-1)


def layout(videos: np.ndarray, diff: np.ndarray, columns: int) -> np.ndarray:
  """Fig. 6 layout: N rows of `columns` frames evenly spaced in time, then the difference row."""
  return sampling.frame_rows(np.concatenate([videos, difference_video(diff)]), columns)


def write(
  gcfg,
  variables,
  output_dir,
  *,
  num_motions: int,
  num_frames=16,
  t_start=0.0,
  t_end=1.0,
  seed=42,
  motion_seed=-1,
  scale=1,
  zoom=1.0,
  fps=8,
  batch_size=4,
  labels=None,
  truncation_psi=1.0,
  frames_per_chunk=16,
  columns=8,
) -> dict:
  """Writes diverse_motion.png (the figure), .gif (the videos and the difference map side by side)
  and .json (settings, per-frame mean difference in grey levels)."""
  if num_motions < 2:
    raise ValueError("--diverse_motion needs at least 2 motion latents to compare")
  motion_seed = seed + 1 if motion_seed < 0 else motion_seed
  z_content = jnp.repeat(sampling.latents(seed, 1, gcfg.z_dim), num_motions, axis=0)
  onehot = sampling.class_labels(labels, 1, gcfg.c_dim)
  videos = sampling.render_batches(
    gcfg,
    variables,
    z_content,
    sampling.latents(motion_seed, num_motions, gcfg.motion_dim),
    sampling.sample_times(num_frames, t_start, t_end),
    labels=None if onehot is None else jnp.repeat(onehot, num_motions, axis=0),
    grid=sampling.grid_for(scale, zoom),
    batch_size=batch_size,
    frames_per_chunk=frames_per_chunk,
    truncation_psi=truncation_psi,
  )
  diff = difference_maps(videos)
  output_dir = fileio.as_path(output_dir)
  figure = layout(videos, diff, columns)
  fileio.write_bytes(output_dir / "diverse_motion.png", image_ops.encode_image(figure, "png"))
  both = np.concatenate([videos, difference_video(diff)])
  sampling.write_video(output_dir / "diverse_motion.gif", sampling.video_grid(both), fps)
  times = sampling.sample_times(num_frames, t_start, t_end)
  card = dict(
    num_motions=num_motions,
    **sampling.render_card(
      videos,
      num_frames=num_frames,
      t_start=t_start,
      t_end=t_end,
      seed=seed,
      motion_seed=motion_seed,
      scale=scale,
      zoom=zoom,
      psi=truncation_psi,
    ),
    labels=None if onehot is None else int(np.argmax(onehot[0])),
    times=[float(t) for t in times],
    mean_abs_difference=[round(float(d.mean()), 4) for d in diff],
    difference_gain=DIFF_GAIN,
    layout="rows: one video per motion latent at evenly spaced times; last row: mean over "
    "videos of |video - mean video| (grey levels x difference_gain)",
  )
  fileio.write_json(output_dir / "diverse_motion.json", card)
  return {**card, "videos": videos}
