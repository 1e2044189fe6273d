"""Input-pipeline measurements (wired into digan_jax/benchmark.py): build time and size of a
synthetic dataset, and training-mode throughput of the tf.data and in-memory NumPy pipelines.
Measures only; asserts nothing."""

import os
import shutil
import tempfile
import time


def _dir_bytes(path):
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _clips_per_second(iterator, batch_size, num_steps, warmup_steps=3):
  for _ in range(warmup_steps):
    next(iterator)
  started = time.perf_counter()
  for _ in range(num_steps):
    next(iterator)
  return num_steps * batch_size / (time.perf_counter() - started)


def bench_pipeline(data_dir=None, resolution=128, num_videos=1000, batch_size=64, num_steps=30,
                   num_frames=16, num_workers=None, include_tf=True, keep=False):
  """Returns a dict of measurements.

  include_tf=True: builds synthetic_videos/r<R>_n<N>_t0 (timed, unless already there) and measures
  the tf.data training pipeline; always measures the in-memory NumPy pipeline (no TF needed).
  """
  from digan_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from digan_jax.data import synthetic_videos  # pylint: disable=g-import-not-at-top

  result = {"resolution": resolution, "num_videos": num_videos, "batch_size": batch_size,
            "num_frames": num_frames, "cpu_count": os.cpu_count()}
  started = time.perf_counter()
  data = synthetic_videos.generate(num_videos, resolution, seed=0)
  result["numpy_generate_seconds"] = time.perf_counter() - started
  result["numpy_train_clips_per_sec"] = _clips_per_second(
      pipeline.make_numpy_train_iterator(data.videos, data.labels, batch_size, num_frames, seed=0),
      batch_size, num_steps)
  del data
  if not include_tf:
    return result

  from digan_jax.data import prepare  # pylint: disable=g-import-not-at-top
  owned = data_dir is None
  data_dir = data_dir or tempfile.mkdtemp(prefix="digan_bench_")
  try:
    name, seconds = prepare.prepare_synthetic(data_dir, resolution, num_videos=num_videos, num_test=0,
                                              num_workers=num_workers)
    result["dataset"] = name
    result["build_seconds"] = seconds
    result["dataset_bytes"] = _dir_bytes(os.path.join(data_dir, name))
    iterator = pipeline.make_train_iterator(data_dir, name, "train", batch_size, num_frames, seed=0)
    result["tf_train_clips_per_sec"] = _clips_per_second(iterator, batch_size, num_steps)
  finally:
    if owned and not keep:
      shutil.rmtree(data_dir, ignore_errors=True)
  return result

