"""Real clips for FVD: where they come from (`ClipSource`) and the cache of their I3D features.

A `ClipSource` draws real clips on demand and carries a fingerprint of its data, which keys the
feature cache: one .npz per protocol (its real-deciding fields) and dataset, written atomically by
process 0 and read back by every process once process 0 has decided that it is there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from typing import Callable, Iterable

import jax
import numpy as np
from etils import epath
from jax.sharding import Mesh

from digan_jax import fileio, sharding
from digan_jax.evaluation import i3d, i3d_weights
from digan_jax.evaluation.features import real_features
from digan_jax.evaluation.protocols import Protocol

# Bump when the cache file layout or the feature graph changes meaning.
CACHE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ClipSource:
  """Real clips on demand: `make(num_clips, seed)` -> iterable of batches of uint8 clips.

  `fingerprint` names the data (dataset, split, version, resolution): it keys the feature cache.
  """

  make: Callable[[int, int], Iterable]
  fingerprint: str
  description: str = ""

  def __call__(self, num_clips: int, seed: int) -> Iterable:
    return self.make(num_clips, seed)


def _pipeline_policy(protocol: Protocol) -> str:
  return {"windows": "clips", "per_video": "videos"}[protocol.real_sampling]


def clip_source_from_videos(
  videos, protocol: Protocol, *, labels=None, resolution: int | None = None, batch_size: int = 16
) -> ClipSource:
  """In-memory uint8 videos ([L_i, H, W, 3] each) -> a ClipSource following the protocol's real
  sampling (windows with hop 1 and the protocol's frame stride). resolution: resize frames first,
  bilinear without antialias (DIGAN resizes reals to the generator's resolution). The fingerprint
  hashes the videos' bytes."""
  from digan_jax.data import pipeline

  videos = list(videos)
  labels = np.zeros(len(videos), np.int32) if labels is None else np.asarray(labels, np.int32)
  digest = hashlib.sha256()
  for video in videos:
    video = np.ascontiguousarray(video, np.uint8)
    digest.update(str(video.shape).encode())
    digest.update(video.tobytes())

  def make(num_clips, seed):
    return pipeline.make_numpy_eval_iterator(
      videos,
      labels,
      batch_size,
      num_frames=protocol.num_frames,
      resolution=resolution,
      seed=seed,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      frame_stride=protocol.real_stride,
      clip_hop=1,
      num_clips=num_clips,
      policy=_pipeline_policy(protocol),
      dtype="uint8",
    )

  fingerprint = (
    f"memory:{len(videos)}videos:r{resolution or 'native'}:sha256={digest.hexdigest()[:16]}"
  )
  return ClipSource(make, fingerprint, f"{len(videos)} in-memory videos")


def clip_source_from_dataset(
  data_dir,
  name: str,
  split: str,
  protocol: Protocol,
  *,
  resolution: int | None = None,
  batch_size: int = 16,
) -> ClipSource:
  """A prepared dataset split (data.pipeline's tf.data eval iterator, uint8) -> a ClipSource.

  DIGAN evaluates UCF-101 on 'train+test'. resolution: resize reals to the generator's resolution.
  """
  from digan_jax.data import pipeline, storage

  dataset = storage.open_dataset(data_dir, name, split)

  def make(num_clips, seed):
    return pipeline.make_eval_iterator(
      data_dir,
      name,
      split,
      batch_size,
      num_frames=protocol.num_frames,
      resolution=resolution,
      seed=seed,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      frame_stride=protocol.real_stride,
      clip_hop=1,
      num_clips=num_clips,
      policy=_pipeline_policy(protocol),
      dtype="uint8",
      dataset=dataset,
    )

  version = dataset.info.get("version", "?")
  fingerprint = (
    f"{name}/{split}:v{version}:{len(dataset)}videos:"
    f"{int(dataset.lengths.sum())}frames:r{resolution or dataset.resolution}"
  )
  return ClipSource(make, fingerprint, f"{name} {split} ({dataset.dataset_dir})")


def real_cache_path(cache_dir, protocol: Protocol, dataset_fingerprint: str) -> epath.Path:
  """<cache_dir>/real_<protocol>_<sha of the real-deciding protocol fields + fingerprint>.npz."""
  key = json.dumps(
    {
      "protocol": protocol.real_fields(),
      "dataset": dataset_fingerprint,
      "i3d": i3d_weights.WEIGHTS_SHA256,
      "version": CACHE_VERSION,
    },
    sort_keys=True,
  )
  digest = hashlib.sha256(key.encode()).hexdigest()[:20]
  return fileio.as_path(cache_dir) / f"real_{protocol.name}_{digest}.npz"


def real_feature_sets(
  real_clips,
  protocol: Protocol,
  *,
  dataset_fingerprint: str | None = None,
  cache_dir=None,
  mesh: Mesh | None = None,
  batch_size: int = 16,
  i3d_vars=None,
  progress: bool = True,
) -> tuple[np.ndarray, dict]:
  """The protocol's real features [num_real_sets, num_real, 400] and a dict describing them.

  real_clips: a ClipSource (asked for num_real fresh clips per set, seeded with
  protocol.real_seed(set)), or a fixed array of clips [N, T, H, W, 3] with N >= num_real (the
  first num_real when reals are not resampled; otherwise a seeded subset per trial, the whole
  array's features being computed once). With cache_dir and a fingerprint (a ClipSource brings
  its own), the sets are read from / written to the cache.
  """
  if isinstance(real_clips, ClipSource):
    dataset_fingerprint = dataset_fingerprint or real_clips.fingerprint
  elif not isinstance(real_clips, (np.ndarray, jax.Array)):
    raise TypeError(
      "real_clips must be a ClipSource (clip_source_from_dataset / "
      "clip_source_from_videos) or an array [N, T, H, W, 3] of clips, "
      f"got {type(real_clips).__name__}"
    )
  info = {"dataset_fingerprint": dataset_fingerprint, "cache": None, "seconds": 0.0}
  path = None
  if cache_dir is not None and dataset_fingerprint:
    path = real_cache_path(cache_dir, protocol, dataset_fingerprint)
    info["cache"] = str(path)
    cached = read_cache(path, protocol, dataset_fingerprint)
    # One decision for all processes: a process that computed the features while another read them
    # would wait forever in the feature graph's collectives.
    if sharding.from_process_0(cached is not None):
      if cached is None:  # process 0 read a cache this process cannot see (yet)
        cached = read_cache(path, protocol, dataset_fingerprint, wait_s=60.0)
      if cached is None:
        raise FileNotFoundError(
          f"process {jax.process_index()} cannot read the real-feature cache "
          f"{path} that process 0 read; put it on storage all hosts share"
        )
      sets, meta = cached
      info.update(cache_hit=True, selection=meta.get("selection"))
      return sets, info
  start = time.perf_counter()
  kwargs = dict(mesh=mesh, batch_size=batch_size, i3d_vars=i3d_vars, progress=progress)
  if isinstance(real_clips, ClipSource):
    sets = []
    for s in range(protocol.num_real_sets):
      feats = real_features(
        real_clips(protocol.num_real, protocol.real_seed(s)),
        protocol,
        total=protocol.num_real,
        **kwargs,
      )
      if feats.shape[0] != protocol.num_real:
        raise ValueError(
          f"the clip source gave {feats.shape[0]} clips, expected {protocol.num_real}"
        )
      sets.append(feats)
    sets = np.stack(sets)
    selection = (
      f"{real_clips.description}: {protocol.real_sampling} sampling, "
      f"{protocol.num_real_sets} set(s) seeded {protocol.real_seed(0)}.."
    )
  else:
    n = real_clips.shape[0]
    if n < protocol.num_real:
      raise ValueError(
        f"protocol {protocol.name!r} needs {protocol.num_real} real clips, got {n}; "
        "pass more clips or override num_real"
      )
    if protocol.resample_real and n > protocol.num_real:
      pool = real_features(real_clips, protocol, **kwargs)
      sets = np.stack(
        [
          pool[_subset(n, protocol.num_real, protocol.real_seed(s))]
          for s in range(protocol.num_real_sets)
        ]
      )
      selection = f"array of {n} clips: seeded subset of {protocol.num_real} per trial"
    else:
      feats = real_features(real_clips[: protocol.num_real], protocol, **kwargs)
      sets = np.repeat(feats[None], protocol.num_real_sets, axis=0)
      selection = f"array: the first {protocol.num_real} of {n} clips in every trial"
  info.update(cache_hit=False, selection=selection, seconds=time.perf_counter() - start)
  if path is not None and jax.process_index() == 0:
    meta = {
      "dataset_fingerprint": dataset_fingerprint,
      "protocol": protocol.real_fields(),
      "selection": selection,
      "i3d_weights_sha256": i3d_weights.WEIGHTS_SHA256,
    }
    try:
      fileio.write_npz(path, features=sets.astype(np.float32), meta=np.array(json.dumps(meta)))
    except OSError as e:  # only a cache: the next evaluation computes the features again
      from absl import logging  # pylint: disable=g-import-not-at-top

      logging.error("the real-feature cache %s could not be written (%s)", path, e)
      info["cache"] = None
  return sets, info


def read_cache(
  path: epath.Path, protocol: Protocol, dataset_fingerprint: str, wait_s: float = 0.0
) -> tuple[np.ndarray, dict] | None:
  """(sets, meta) of a valid cache file, or None (missing, unreadable or for other settings)."""
  deadline = time.monotonic() + wait_s
  while True:
    try:
      data = fileio.read_npz(path) if path.exists() else None
    except (OSError, ValueError):
      data = None  # a damaged cache is recomputed and replaced
    if data is not None or time.monotonic() >= deadline:
      break
    time.sleep(1.0)
  if data is None:
    return None
  sets, meta = data["features"], json.loads(str(data["meta"]))
  want = (protocol.num_real_sets, protocol.num_real, i3d.NUM_CLASSES)
  if sets.shape != want or meta.get("dataset_fingerprint") != dataset_fingerprint:
    return None
  return sets, meta


def _subset(n: int, k: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EB5E7]))
  return np.sort(rng.choice(n, size=k, replace=False))
