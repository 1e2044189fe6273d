"""tf.data pipelines over a tiny synthetic TFDS dataset: equality with the in-memory NumPy path,
resumption at step k, per-process sharding, flips, evaluation clips and user errors."""

import os
import subprocess
import sys

import numpy as np
import pytest

from digan_jax.data import pipeline
from digan_jax.data import synthetic_videos

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "r16_n12_t4_l16-24"
NAME = f"synthetic_videos/{CONFIG}"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  from digan_jax.data import prepare

  path = tmp_path_factory.mktemp("tfds")
  name, _ = prepare.prepare_synthetic(
    path, 16, num_videos=12, num_test=4, min_length=16, max_length=24, num_workers=1
  )
  assert name == NAME
  return path


@pytest.fixture(scope="module")
def videos():
  return synthetic_videos.generate(12, 16, num_frames=(16, 24), seed=0)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_train_batches_match_in_memory_path(data_dir, videos):
  kwargs = dict(num_frames=8, seed=5, start_step=2, frame_stride=2)
  tf_batches = _take(pipeline.make_train_iterator(data_dir, NAME, "train", 6, **kwargs), 3)
  np_batches = _take(
    pipeline.make_numpy_train_iterator(videos.videos, videos.labels, 6, **kwargs), 3
  )
  _assert_batches_equal(tf_batches, np_batches)
  batch = tf_batches[0]
  assert batch["frames"].shape == (6, 2, 16, 16, 3) and batch["frames"].dtype == np.float32
  assert -1 <= batch["frames"].min() and batch["frames"].max() <= 1
  assert np.all(batch["times"][:, 0] <= batch["times"][:, 1])
  np.testing.assert_allclose(
    batch["delta_t"], batch["times"][:, 1] - batch["times"][:, 0], atol=1e-6
  )
  np.testing.assert_allclose(batch["delta_t"] * 7, np.round(batch["delta_t"] * 7), atol=1e-5)


def test_restart_at_step_k_continues_the_sequence(data_dir):
  uninterrupted = _take(pipeline.make_train_iterator(data_dir, NAME, "train", 4, seed=1), 5)
  resumed = _take(pipeline.make_train_iterator(data_dir, NAME, "train", 4, seed=1, start_step=3), 2)
  _assert_batches_equal(uninterrupted[3:], resumed)
  other_seed = next(pipeline.make_train_iterator(data_dir, NAME, "train", 4, seed=2))
  assert not np.array_equal(other_seed["frames"], uninterrupted[0]["frames"])


def test_processes_read_disjoint_slots_of_the_global_batch(data_dir):
  whole = _take(
    pipeline.make_train_iterator(data_dir, NAME, "train", 8, seed=3, policy="videos"), 2
  )
  parts = [
    _take(
      pipeline.make_train_iterator(
        data_dir, NAME, "train", 4, seed=3, policy="videos", process_index=p, process_count=2
      ),
      2,
    )
    for p in range(2)
  ]
  for step in range(2):
    for key in whole[step]:
      np.testing.assert_array_equal(
        np.concatenate([parts[0][step][key], parts[1][step][key]]), whole[step][key]
      )


def test_flip_mirrors_both_frames(data_dir):
  flipped = next(pipeline.make_train_iterator(data_dir, NAME, "train", 16, seed=4))
  plain = next(pipeline.make_train_iterator(data_dir, NAME, "train", 16, seed=4, random_flip=False))
  same = np.all(flipped["frames"] == plain["frames"], axis=(1, 2, 3, 4))
  mirrored = np.all(flipped["frames"] == plain["frames"][:, :, :, ::-1], axis=(1, 2, 3, 4))
  assert np.all(same | mirrored) and 0 < (~same).sum() < 16


def test_resize_to_another_resolution(data_dir, videos):
  tf_batch = next(pipeline.make_train_iterator(data_dir, NAME, "train", 4, resolution=8, seed=6))
  np_batch = next(
    pipeline.make_numpy_train_iterator(videos.videos, videos.labels, 4, resolution=8, seed=6)
  )
  assert tf_batch["frames"].shape == (4, 2, 8, 8, 3)
  np.testing.assert_allclose(tf_batch["frames"], np_batch["frames"], atol=1e-4)


def test_eval_clips_any_length_and_stride(data_dir):
  test_videos = synthetic_videos.generate(4, 16, num_frames=(16, 24), seed=0, first_index=12)
  batches = list(
    pipeline.make_eval_iterator(
      data_dir, NAME, "test", 3, num_frames=4, frame_stride=3, dtype="uint8"
    )
  )
  expected = list(
    pipeline.make_numpy_eval_iterator(
      test_videos.videos, test_videos.labels, 3, num_frames=4, frame_stride=3, dtype="uint8"
    )
  )
  _assert_batches_equal(batches, expected)
  video = np.concatenate([b["video"] for b in batches])[
    np.concatenate([b["valid"] for b in batches])
  ]
  # Non-overlapping windows of span 10: first clip of the first test video = frames 0, 3, 6, 9.
  np.testing.assert_array_equal(video[0], test_videos.videos[0][[0, 3, 6, 9]])
  assert len(video) == sum(int(length) // 10 for length in test_videos.lengths)
  full = next(
    pipeline.make_eval_iterator(data_dir, NAME, "train+test", 2, num_frames=16, num_clips=5, seed=0)
  )
  assert full["video"].shape == (2, 16, 16, 16, 3) and full["video"].dtype == np.float32


def test_eval_sharding_keeps_batch_counts_equal(data_dir):
  runs = [
    list(
      pipeline.make_eval_iterator(
        data_dir, NAME, "test", 2, num_frames=8, process_index=p, process_count=2
      )
    )
    for p in range(2)
  ]
  assert len(runs[0]) == len(runs[1])
  whole = list(pipeline.make_eval_iterator(data_dir, NAME, "test", 4, num_frames=8))
  for a, b, w in zip(runs[0], runs[1], whole):
    np.testing.assert_array_equal(np.concatenate([a["video"], b["video"]]), w["video"])
    np.testing.assert_array_equal(np.concatenate([a["valid"], b["valid"]]), w["valid"])


def test_clear_errors(data_dir):
  from digan_jax.data import storage

  with pytest.raises(storage.DatasetNotFoundError, match="digan_jax.data.prepare"):
    pipeline.make_train_iterator(data_dir, "ucf101", "train", 4)
  with pytest.raises(ValueError, match="available"):
    pipeline.make_train_iterator(data_dir, NAME, "validation", 4)
  with pytest.raises(ValueError, match="smaller stride"):
    pipeline.make_train_iterator(data_dir, NAME, "train", 4, num_frames=16, frame_stride=4)


def test_importing_the_package_does_not_import_tensorflow():
  code = (
    "import sys, digan_jax, digan_jax.data, digan_jax.data.pipeline, digan_jax.data.prepare\n"
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
