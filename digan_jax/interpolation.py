"""INR-weight interpolation (paper Fig. 9): videos rendered from (1 - λ) φ1 + λ φ2.

  python -m digan_jax.sampling --checkpoint=WORKDIR/checkpoints --output=out/ --interpolate=5

φ(z, z_M) is every per-video tensor of the INR (`Generator.inr_params`): the modulated FMM and ToRGB
weights, the Fourier frequencies and content phases, the motion affine. Interpolating φ moves
between two videos through videos of the model's own kind, not a cross-fade of their pixels. The
endpoints are videos 0 and 1 of (--seed, --motion_seed).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from digan_jax import fileio, quantize, sampling
from digan_jax.data import image_ops
from digan_jax.models.generator import Generator
from digan_jax.models.inr import PHI, CoordGrid


def inr_params(generator: Generator, variables, z_content, z_motion, labels=None, psi=1.0):
  """φ of each video: {module path: per-video tensors}, leading axis B."""
  w = generator.apply(variables, z_content, labels, psi, method=Generator.map)
  phi, _ = generator.apply(variables, w, z_motion, method=Generator.inr_params, mutable=[PHI])
  return phi


def render_inr(
  generator: Generator, variables, phi, times, grid: CoordGrid = CoordGrid(), frames_per_chunk=None
):
  """Frames [B, T, H, W, 3] rendered from φ alone (`frames_per_chunk` times at a time)."""
  batch = jax.tree.leaves(phi)[0].shape[0]
  times = jnp.broadcast_to(jnp.asarray(times, jnp.float32), (batch, np.shape(times)[-1]))
  synth = lambda t: generator.apply(
    {**variables, PHI: phi}, phi, t, grid, method=Generator.render_inr
  )
  return sampling.in_time_chunks(synth, times, frames_per_chunk)


def blend(phi1, phi2, lam: float):
  """(1 - λ) φ1 + λ φ2 (λ = 0 and 1 give φ1 and φ2 exactly)."""
  return jax.tree.map(lambda a, b: (1.0 - lam) * a + lam * b, phi1, phi2)


def interpolate(generator, variables, z_content, z_motion, lambdas, times, **kw):
  """Float frames [len(lambdas), T, H, W, 3] between the two videos of z_content/z_motion [2, .]."""
  grid = kw.pop("grid", CoordGrid())
  frames_per_chunk = kw.pop("frames_per_chunk", None)
  phi = inr_params(generator, variables, z_content, z_motion, **kw)
  first = jax.tree.map(lambda x: x[:1], phi)
  second = jax.tree.map(lambda x: x[1:], phi)
  mix = jax.tree.map(lambda *xs: jnp.concatenate(xs), *(blend(first, second, l) for l in lambdas))
  return render_inr(generator, variables, mix, times, grid, frames_per_chunk)


def write(
  gcfg,
  variables,
  output_dir,
  *,
  num_steps: int,
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
  """Writes interpolation.png (one row per λ, frames at evenly spaced times), interpolation.gif
  (the λ videos side by side) and interpolation.json."""
  del batch_size  # one render of num_steps videos, frames_per_chunk frames at a time
  if num_steps < 2:
    raise ValueError("--interpolate needs at least 2 steps (λ = 0 and 1)")
  motion_seed = seed + 1 if motion_seed < 0 else motion_seed
  onehot = sampling.class_labels(labels, 2, gcfg.c_dim)
  lambdas = np.linspace(0.0, 1.0, num_steps).tolist()
  times = sampling.sample_times(num_frames, t_start, t_end)
  generator = Generator(gcfg)
  fn = jax.jit(
    lambda v, zc, zm, lab: interpolate(
      generator,
      v,
      zc,
      zm,
      lambdas,
      times,
      labels=lab,
      psi=truncation_psi,
      grid=sampling.grid_for(scale, zoom),
      frames_per_chunk=frames_per_chunk,
    )
  )
  frames = fn(
    variables,
    sampling.latents(seed, 2, gcfg.z_dim),
    sampling.latents(motion_seed, 2, gcfg.motion_dim),
    onehot,
  )
  videos = quantize.to_uint8(np.asarray(frames), "rint")
  output_dir = fileio.as_path(output_dir)
  figure = sampling.frame_rows(videos, columns)
  fileio.write_bytes(output_dir / "interpolation.png", image_ops.encode_image(figure, "png"))
  sampling.write_video(
    output_dir / "interpolation.gif", sampling.video_grid(videos, columns=num_steps), fps
  )
  card = dict(
    lambdas=lambdas,
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
    endpoints="videos 0 and 1 of (seed, motion_seed)",
    labels=None if onehot is None else np.argmax(onehot, -1).tolist(),
    layout="rows: λ from 0 (video 0) to 1 (video 1); columns: evenly spaced times",
  )
  fileio.write_json(output_dir / "interpolation.json", card)
  return {**card, "videos": videos}
