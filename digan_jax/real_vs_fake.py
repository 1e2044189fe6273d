"""Real clips beside a run's generated samples, as one GIF (what a reader compares first).

  python -m digan_jax.real_vs_fake --config=configs/synthetic.py --workdir=workdirs/demo \
      --output=docs/demo_real_vs_generated.gif [--step=-1] [--num_videos=8] [--scale=3]

Left: clips of the config's evaluation split (seeded windows, as FVD draws them); right: the
videos the run wrote to WORKDIR/samples/<step>/ (the latest step by default).
"""

from __future__ import annotations

import sys

import numpy as np
from absl import flags
from ml_collections import config_flags
from PIL import Image, ImageDraw, ImageFont

from digan_jax import cli_flags, fileio, sampling
from digan_jax.errors import UserError


def generated_videos(workdir, step: int, num_videos: int) -> tuple[int, np.ndarray]:
  """(step, uint8 [N, T, H, W, 3]) from WORKDIR/samples/<step>/video_*.gif."""
  import imageio.v3 as iio  # pylint: disable=g-import-not-at-top

  root = fileio.as_path(workdir) / "samples"
  steps = sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.is_dir() else []
  if step < 0:
    if not steps:
      raise UserError(f"no samples in {root}; train with config.sample_every_steps > 0 first")
    step = steps[-1]
  files = sorted((root / str(step)).glob("video_*.gif"))[:num_videos]
  if not files:
    raise UserError(f"no samples/{step}/video_*.gif in {workdir}; steps with samples: {steps}")
  # Bytes, not paths: imageio takes no epath (gs://) objects.
  read = lambda f: iio.imread(f.read_bytes(), index=None, extension=".gif")[..., :3]
  return step, np.stack([read(f) for f in files])


def real_clips(config, workdir, num_videos: int, num_frames: int, resolution: int, seed: int):
  """uint8 [N, T, H, W, 3]: seeded clips of config.data.eval_split at the samples' size."""
  from digan_jax.data import pipeline, resolve  # pylint: disable=g-import-not-at-top

  data_dir, name = resolve.resolve_dataset(config, fileio.as_path(workdir))
  batches = pipeline.make_eval_iterator(
    data_dir,
    name,
    config.data.eval_split,
    num_videos,
    num_frames=num_frames,
    frame_stride=config.data.frame_stride,  # the frames a training clip takes (TaiChi: every 4th)
    resolution=resolution,
    seed=seed,
    num_clips=num_videos,
    dtype="uint8",
  )
  return np.concatenate([b["video"][b["valid"]] for b in batches])[:num_videos]


def side_by_side(
  real: np.ndarray, fake: np.ndarray, columns: int, scale: int, titles
) -> np.ndarray:
  """[T, H', W', 3]: the two grids (`sampling.video_grid`) magnified, a title above each."""
  grids = [sampling.video_grid(v, columns) for v in (real, fake)]
  grids = [g.repeat(scale, axis=1).repeat(scale, axis=2) for g in grids]
  t, h, w, _ = grids[0].shape
  gap, head = 12, 22
  out = np.full((t, h + head, 2 * w + gap, 3), 255, np.uint8)
  out[:, head:, :w] = grids[0]
  out[:, head:, w + gap :] = grids[1]
  banner = Image.new("RGB", (out.shape[2], head), "white")
  draw = ImageDraw.Draw(banner)
  font = ImageFont.load_default()
  for i, title in enumerate(titles):
    draw.text((i * (w + gap) + w / 2, head / 2), title, fill="black", font=font, anchor="mm")
  out[:, :head] = np.asarray(banner)[None]
  return out


def _define_flags(fv: flags.FlagValues) -> flags.FlagValues:
  config_flags.DEFINE_config_file("config", None, "the run's config file", flag_values=fv)
  flags.DEFINE_string("workdir", None, "the run's workdir", flag_values=fv)
  flags.DEFINE_string("output", None, "GIF to write", flag_values=fv)
  flags.DEFINE_integer("step", -1, "samples/<step> to show (-1: the latest)", flag_values=fv)
  flags.DEFINE_integer("num_videos", 8, "videos per side", flag_values=fv)
  flags.DEFINE_integer("columns", 2, "videos per row on each side", flag_values=fv)
  flags.DEFINE_integer("scale", 3, "nearest-neighbour magnification", flag_values=fv)
  flags.DEFINE_integer("seed", 0, "seed of the real clip draw", flag_values=fv)
  flags.mark_flags_as_required(["config", "workdir", "output"], flag_values=fv)
  return fv


def main(argv, fv: flags.FlagValues = flags.FLAGS) -> int:
  cli_flags.reject_positional(argv)
  config = fv.config
  try:
    step, fake = generated_videos(fv.workdir, fv.step, fv.num_videos)
    real = real_clips(config, fv.workdir, len(fake), fake.shape[1], fake.shape[2], fv.seed)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  titles = (f"real ({config.data.eval_split} split)", f"generated (step {step})")
  frames = side_by_side(real, fake, fv.columns, fv.scale, titles)
  sampling.write_video(fv.output, frames, fps=config.sample.fps)
  print(f"wrote {fv.output}: {len(real)} real and {len(fake)} generated videos, step {step}")
  return 0


def run(argv) -> int:
  """The tool in this process (program name first in argv); returns the exit code."""
  return cli_flags.run_in_process(_define_flags, main, argv)


if __name__ == "__main__":
  cli_flags.run_as_program(_define_flags, main)
