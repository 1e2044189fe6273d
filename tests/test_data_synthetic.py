"""The procedural synthetic videos (NumPy generator, no TensorFlow)."""

import os
import subprocess
import sys

import numpy as np

from digan_jax.data import synthetic_videos

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_generate_shapes_labels_and_determinism():
  data = synthetic_videos.generate(24, 16, num_frames=(10, 14), seed=3)
  assert len(data) == 24 and data.labels.dtype == np.int32
  assert set(data.labels.tolist()) == set(range(len(synthetic_videos.FAMILIES)))
  for video, length in zip(data.videos, data.lengths):
    assert video.shape == (length, 16, 16, 3) and video.dtype == np.uint8 and 10 <= length <= 14
  again = synthetic_videos.generate(24, 16, num_frames=(10, 14), seed=3)
  assert all(np.array_equal(a, b) for a, b in zip(data.videos, again.videos))
  # Video i depends only on (seed, i): a longer set extends a shorter one; offsets continue it.
  longer = synthetic_videos.generate(30, 16, num_frames=(10, 14), seed=3)
  assert all(np.array_equal(a, b) for a, b in zip(data.videos, longer.videos))
  tail = synthetic_videos.generate(6, 16, num_frames=(10, 14), seed=3, first_index=24)
  assert all(np.array_equal(a, b) for a, b in zip(tail.videos, longer.videos[24:]))
  other = synthetic_videos.generate(4, 16, num_frames=12, seed=4)
  assert not np.array_equal(other.videos[0], data.videos[0][:12])


def test_every_family_moves_and_videos_differ():
  data = synthetic_videos.generate(60, 32, num_frames=16, seed=0)
  for video, label in zip(data.videos, data.labels):
    change = np.abs(video[8].astype(float) - video[0].astype(float)).mean()
    assert change > 0.5, (synthetic_videos.FAMILIES[label], change)
  firsts = np.stack([v[0] for v in data.videos]).astype(float)
  assert firsts.std(axis=0).mean() > 20  # Appearance varies across videos.


def test_same_video_at_two_resolutions():
  low = synthetic_videos.generate(6, 32, num_frames=8, seed=1).videos
  high = synthetic_videos.generate(6, 128, num_frames=8, seed=1).videos
  for a, b in zip(low, high):
    pooled = b.reshape(8, 32, 4, 32, 4, 3).mean(axis=(2, 4))
    assert np.abs(pooled - a).mean() < 6


def test_numpy_path_never_imports_tensorflow():
  code = (
    "import sys, digan_jax.data\n"
    "from digan_jax.data import pipeline\n"
    "batch = next(pipeline.make_synthetic_train_iterator(8, 16, 4, num_frames=8, video_lengths=(8, 12)))\n"
    "assert batch['frames'].shape == (4, 2, 16, 16, 3), batch['frames'].shape\n"
    "assert 'tensorflow' not in sys.modules\n"
  )
  result = subprocess.run(
    [sys.executable, "-c", code],
    env=dict(os.environ, PYTHONPATH=REPO),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr
