"""Rendering API and sampling CLI: any times, frame counts, resolution and field of view.

  python -m digan_jax.sampling --checkpoint=WORKDIR/checkpoints --output=out/ \\
      --num_videos=16 --num_frames=64 --t_end=4   # 4x longer than training (extrapolation)

Only the EMA generator is restored. Videos are deterministic per seed: the content latents come
from `seed`, the motion latents from `motion_seed` (default seed + 1), so keeping `seed` and
changing `motion_seed` shows diverse motion of the same content.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from digan_jax import cli_flags, fileio, quantize
from digan_jax.data import image_ops
from digan_jax.models.generator import Generator
from digan_jax.models.inr import CoordGrid


def latents_at(seed, indices, dim: int) -> jnp.ndarray:
  """Latents [len(indices), dim] of videos `indices` of a seed: video i's latent is its own draw
  (fold_in of i), so it does not depend on which other videos are drawn."""
  key = jax.random.key(seed)
  return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (dim,)))(indices)


def latents(seed: int, num_videos: int, dim: int) -> jnp.ndarray:
  """Latents of videos 0..n-1 of a seed."""
  return latents_at(seed, jnp.arange(num_videos), dim)


def render(
  generator: Generator,
  variables,
  z_content,
  z_motion,
  times,
  labels=None,
  grid: CoordGrid = CoordGrid(),
  frames_per_chunk: int | None = None,
  truncation_psi: float = 1.0,
):
  """Frames [B, T, H, W, 3] for `times` ([T] or [B, T]) on `grid`.

  The mapping runs once per video; with `frames_per_chunk`, time chunks are rendered one after
  another (`lax.map`) to bound memory for long videos. Not jitted here: wrap it in jax.jit.
  """
  w = generator.apply(variables, z_content, labels, truncation_psi, method=Generator.map)
  times = jnp.asarray(times, jnp.float32)
  if times.ndim == 1:
    times = jnp.broadcast_to(times[None], (z_content.shape[0], times.shape[0]))
  synth = lambda t: generator.apply(variables, w, z_motion, t, grid, method=Generator.synthesize)
  return in_time_chunks(synth, times, frames_per_chunk)


def in_time_chunks(synth, times, frames_per_chunk: int | None):
  """synth(times [B, F]) -> frames [B, F, ...], called on chunks of `frames_per_chunk` times one
  after another (`lax.map`), so memory does not grow with the number of frames."""
  num_frames = times.shape[1]
  if not frames_per_chunk or frames_per_chunk >= num_frames:
    return synth(times)
  chunks = math.ceil(num_frames / frames_per_chunk)
  padded = jnp.pad(times, ((0, 0), (0, chunks * frames_per_chunk - num_frames)), mode="edge")
  per_chunk = padded.reshape(times.shape[0], chunks, frames_per_chunk).transpose(1, 0, 2)
  out = jax.lax.map(synth, per_chunk)  # [chunks, B, F, H, W, 3]
  out = jnp.moveaxis(out, 0, 1).reshape((times.shape[0], chunks * frames_per_chunk) + out.shape[3:])
  return out[:, :num_frames]


def video_grid(videos: np.ndarray, columns: int | None = None, pad: int = 2) -> np.ndarray:
  """[N, T, H, W, C] -> [T, rows*(H+pad)-pad, cols*(W+pad)-pad, C] grid of videos."""
  n, t, h, w, c = videos.shape
  cols = columns or int(math.ceil(math.sqrt(n)))
  rows = int(math.ceil(n / cols))
  out = np.zeros((t, rows * (h + pad) - pad, cols * (w + pad) - pad, c), videos.dtype)
  for i in range(n):
    r, q = divmod(i, cols)
    out[:, r * (h + pad) : r * (h + pad) + h, q * (w + pad) : q * (w + pad) + w] = videos[i]
  return out


def frame_rows(videos: np.ndarray, columns: int, pad: int = 2) -> np.ndarray:
  """uint8 [N, T, H, W, 3] -> a figure with one row of `columns` evenly spaced frames per video."""
  n, t, h, w, _ = videos.shape
  picks = np.linspace(0, t - 1, min(columns, t)).round().astype(int)
  out = np.full((n * (h + pad) - pad, len(picks) * (w + pad) - pad, 3), 255, np.uint8)
  for r in range(n):
    for c, i in enumerate(picks):
      out[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = videos[r, i]
  return out


def write_video(path, frames: np.ndarray, fps: int = 8) -> None:
  """uint8 [T, H, W, 3] -> .gif or .mp4 (MP4 sides are padded to even sizes for H.264), local or
  in an object store, written atomically (the encoders take local file names only)."""
  import imageio.v3 as iio

  suffix = os.path.splitext(os.fspath(path))[1]
  with fileio.local_file(path, suffix=suffix) as local:
    if suffix == ".gif":
      iio.imwrite(local, frames, duration=1000.0 / fps, loop=0)
      return
    h, w = frames.shape[1:3]
    _write_h264(local, np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0))), fps)


def _write_h264(path, frames: np.ndarray, fps: int) -> None:
  """H.264/yuv420p MP4 through PyAV itself: imageio's PyAV plugin runs two full `gc.collect()` per
  file, which cost 0.4-0.6 s per MP4 in a process holding TensorFlow, JAX and a training state
  (9.9 of the 14.3 s of a demo sample set, py-spy); the decoded frames are the same."""
  import av

  with av.open(os.fspath(path), "w") as container:
    stream = container.add_stream("libx264", rate=fps)
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt = "yuv420p"
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())  # flush the encoder's delayed frames


def sample_times(num_frames: int, t_start: float = 0.0, t_end: float = 1.0) -> np.ndarray:
  """Evenly spaced times; the training convention is frame i <-> t = i / 15 for 16 frames."""
  if num_frames < 1:
    raise ValueError("num_frames must be >= 1")
  return np.linspace(t_start, t_end, num_frames, dtype=np.float32)


def class_labels(labels, num_videos: int, c_dim: int):
  """One-hot labels [N, c_dim] (or None) for `labels`: None or "" (a conditional generator cycles
  through its classes), one class id for every video, or one id per video ("0,3,1", or a list)."""
  if labels is None or (isinstance(labels, str) and not labels.strip()):
    return jax.nn.one_hot(jnp.arange(num_videos) % c_dim, c_dim) if c_dim else None
  if not c_dim:
    raise ValueError(
      "--labels was given, but this checkpoint's generator is unconditional (c_dim=0): drop "
      "--labels, or sample from a class-conditional checkpoint"
    )
  if isinstance(labels, str):
    parts = labels.split(",")
  else:
    parts = [labels] if np.ndim(labels) == 0 else list(labels)
  try:
    ids = [int(x) for x in parts]
  except (TypeError, ValueError):
    raise ValueError(
      f"--labels={labels!r}: expected a class id or a comma-separated list of them"
    ) from None
  if len(ids) == 1:
    ids *= num_videos
  if len(ids) != num_videos:
    raise ValueError(
      f"--labels names {len(ids)} classes for {num_videos} videos: give one class for all, or "
      "one per video"
    )
  bad = sorted({i for i in ids if not 0 <= i < c_dim})
  if bad:
    raise ValueError(f"class id(s) {bad} out of range: this generator has classes 0..{c_dim - 1}")
  return jax.nn.one_hot(jnp.asarray(ids), c_dim)


def grid_for(scale: int = 1, zoom: float = 1.0) -> CoordGrid:
  """The coordinate grid of a super-resolution factor and a zoom-out factor."""
  return CoordGrid.zoom_out(zoom, scale) if zoom != 1.0 else CoordGrid.super_resolution(scale)


def render_batches(
  gcfg,
  variables,
  z_content,
  z_motion,
  times,
  *,
  labels=None,
  grid=CoordGrid(),
  batch_size=4,
  frames_per_chunk=16,
  truncation_psi=1.0,
) -> np.ndarray:
  """uint8 videos [N, T, H, W, 3], rendered `batch_size` videos per jitted call."""
  fn = jax.jit(
    functools.partial(
      render,
      Generator(gcfg),
      grid=grid,
      frames_per_chunk=frames_per_chunk,
      truncation_psi=truncation_psi,
    )
  )
  videos = []
  for i in range(0, z_content.shape[0], batch_size):
    sl = slice(i, min(i + batch_size, z_content.shape[0]))
    frames = fn(
      variables, z_content[sl], z_motion[sl], times, None if labels is None else labels[sl]
    )
    videos.append(quantize.to_uint8(np.asarray(frames), "rint"))
  return np.concatenate(videos)


def render_card(videos, *, num_frames, t_start, t_end, seed, motion_seed, scale, zoom, psi) -> dict:
  """The render settings that every written card (sampling, diverse motion, interpolation) records."""
  return dict(
    num_frames=num_frames,
    t_start=t_start,
    t_end=t_end,
    seed=seed,
    motion_seed=motion_seed,
    scale=scale,
    zoom=zoom,
    truncation_psi=psi,
    frame_size=list(videos.shape[2:4]),
  )


def sample_to_dir(
  gcfg,
  variables,
  output_dir,
  *,
  num_videos=16,
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
  formats=("mp4", "gif"),
) -> dict:
  """Render videos from seeds and write one file per video per format plus a grid.

  `labels`: class ids (see class_labels); `truncation_psi` < 1 pulls w towards the generator's
  running mean w_avg (StyleGAN's truncation trick).
  """
  motion_seed = seed + 1 if motion_seed < 0 else motion_seed
  onehot = class_labels(labels, num_videos, gcfg.c_dim)
  videos = render_batches(
    gcfg,
    variables,
    latents(seed, num_videos, gcfg.z_dim),
    latents(motion_seed, num_videos, gcfg.motion_dim),
    sample_times(num_frames, t_start, t_end),
    labels=onehot,
    grid=grid_for(scale, zoom),
    batch_size=batch_size,
    frames_per_chunk=frames_per_chunk,
    truncation_psi=truncation_psi,
  )
  output_dir = fileio.as_path(output_dir)
  for i, v in enumerate(videos):
    for fmt in formats:
      write_video(output_dir / f"video_{i:04d}.{fmt}", v, fps)
  for fmt in formats:
    write_video(output_dir / f"grid.{fmt}", video_grid(videos), fps)
  # One row of 8 evenly spaced frames per video: the still picture of a sample set.
  fileio.write_bytes(
    output_dir / "frames.png", image_ops.encode_image(frame_rows(videos, 8), "png")
  )
  card = dict(
    num_videos=num_videos,
    **render_card(
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
    labels=None if onehot is None else np.argmax(onehot, -1).tolist(),
  )
  fileio.write_json(output_dir / "sampling.json", card)
  return {**card, "videos": videos}


def config_kwargs(sample_config) -> dict:
  """`sample_to_dir` keywords from a config's `sample` block."""
  s = sample_config
  return dict(
    num_videos=s.num_videos,
    num_frames=s.num_frames,
    t_end=s.t_end,
    seed=s.seed,
    motion_seed=s.motion_seed,
    scale=s.scale,
    zoom=s.zoom,
    fps=s.fps,
  )


def run_sample_mode(config, workdir):
  """--mode=sample: videos of a checkpoint's EMA generator (config.sample.step, or the latest) per
  config.sample, written to WORKDIR/samples/<step>_cli/."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  from digan_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from digan_jax.errors import UserError  # pylint: disable=g-import-not-at-top

  workdir = fileio.as_path(workdir)
  try:
    step = config.sample.get("step", -1)
    gcfg, g_ema, step = checkpointing.restore_generator(
      workdir / "checkpoints", None if step < 0 else int(step), step_flag="--config.sample.step"
    )
  except FileNotFoundError as e:
    raise UserError(f"{e}; train first or point --workdir at a run") from e
  out_dir = workdir / "samples" / f"{step}_cli"
  sample_to_dir(gcfg, g_ema, out_dir, **config_kwargs(config.sample))
  logging.info("wrote samples of step %d to %s", step, out_dir)
  return os.fspath(out_dir)


def _define_flags(fv: flags.FlagValues) -> flags.FlagValues:
  """The CLI's flags on `fv`: absl's FLAGS under `python -m`, a fresh FlagValues in run()."""
  flags.DEFINE_string(
    "checkpoint",
    None,
    "checkpoint directory (WORKDIR/checkpoints or an imported official checkpoint)",
    flag_values=fv,
  )
  flags.DEFINE_string("output", None, "directory for the videos", flag_values=fv)
  flags.DEFINE_integer("step", None, "checkpoint step (default: latest)", flag_values=fv)
  flags.DEFINE_integer("num_videos", 16, "videos to render", flag_values=fv)
  flags.DEFINE_integer("num_frames", 16, "frames per video", flag_values=fv)
  flags.DEFINE_float("t_start", 0.0, "first time", flag_values=fv)
  flags.DEFINE_float("t_end", 1.0, "last time; > 1 extrapolates", flag_values=fv)
  flags.DEFINE_integer("seed", 42, "content seed", flag_values=fv)
  flags.DEFINE_integer("motion_seed", -1, "motion seed (default seed + 1)", flag_values=fv)
  flags.DEFINE_integer("scale", 1, "super-resolution factor", flag_values=fv)
  flags.DEFINE_float("zoom", 1.0, "zoom-out factor (1.5: [-0.25,1.25]^2)", flag_values=fv)
  flags.DEFINE_integer("fps", 8, "frame rate of the written videos", flag_values=fv)
  flags.DEFINE_integer("batch_size", 4, "videos rendered per call", flag_values=fv)
  flags.DEFINE_integer("frames_per_chunk", 16, "frames rendered per call", flag_values=fv)
  flags.DEFINE_string(
    "labels",
    None,
    "class-conditional checkpoints: one class id for all videos, or one per video (0,3,1,...); "
    "default: video index mod the number of classes",
    flag_values=fv,
  )
  flags.DEFINE_float(
    "truncation", 1.0, "truncation psi: w = w_avg + psi (w - w_avg); 1 = none", flag_values=fv
  )
  flags.DEFINE_integer(
    "interpolate",
    0,
    "N > 1: INR-weight interpolation (paper Fig. 9) from video 0 to video 1 of (--seed, "
    "--motion_seed) in N steps of λ (interpolation.png/.gif/.json)",
    flag_values=fv,
  )
  flags.DEFINE_integer(
    "diverse_motion",
    0,
    "N > 0: one content latent (video 0 of --seed) with N motion latents of --motion_seed, written "
    "as the paper's Fig. 6 layout with a pixel-difference row (diverse_motion.png/.gif/.json)",
    flag_values=fv,
  )
  flags.mark_flags_as_required(["checkpoint", "output"], flag_values=fv)
  return fv


def main(argv, fv: flags.FlagValues = flags.FLAGS):
  cli_flags.reject_positional(argv)
  from digan_jax import checkpointing

  try:
    gcfg, g_ema, step = checkpointing.restore_generator(fv.checkpoint, fv.step)
  except FileNotFoundError as e:
    sys.exit(f"error: {e}")
  common = dict(
    num_frames=fv.num_frames,
    t_start=fv.t_start,
    t_end=fv.t_end,
    seed=fv.seed,
    motion_seed=fv.motion_seed,
    scale=fv.scale,
    zoom=fv.zoom,
    fps=fv.fps,
    batch_size=fv.batch_size,
    labels=fv.labels,
    truncation_psi=fv.truncation,
    frames_per_chunk=fv.frames_per_chunk,
  )
  try:
    if fv.diverse_motion < 0 or fv.interpolate < 0:
      raise ValueError("--diverse_motion and --interpolate take a count >= 0")
    if fv.diverse_motion and fv.interpolate:
      raise ValueError("--diverse_motion and --interpolate are separate figures: pass one")
    if fv.diverse_motion:
      from digan_jax import diverse_motion  # pylint: disable=g-import-not-at-top

      card = diverse_motion.write(gcfg, g_ema, fv.output, num_motions=fv.diverse_motion, **common)
    elif fv.interpolate:
      from digan_jax import interpolation  # pylint: disable=g-import-not-at-top

      card = interpolation.write(gcfg, g_ema, fv.output, num_steps=fv.interpolate, **common)
    else:
      card = sample_to_dir(gcfg, g_ema, fv.output, num_videos=fv.num_videos, **common)
  except ValueError as e:
    sys.exit(f"error: {e}")
  card.pop("videos")
  print(json.dumps({"checkpoint_step": step, **card}, indent=1))
  return 0


def run(argv) -> int:
  """The tool in this process (program name first in argv); returns the exit code."""
  return cli_flags.run_in_process(_define_flags, main, argv)


if __name__ == "__main__":
  cli_flags.run_as_program(_define_flags, main)
