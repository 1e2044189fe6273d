"""Random access to prepared video datasets: locate a dataset under a data dir, read per-video
metadata, and fetch the encoded bytes of chosen frames of chosen videos.

Datasets are TFDS ArrayRecord datasets written with shuffling disabled (builders/features.py), so
video i of a split is record i. Per-video lengths and labels are kept in a small side file
(`video_index-<split>.npz`) written at build time; when it is missing (a dataset built by plain
`tfds build`), the records are scanned once and the side file is written if the folder allows.
"""

import json
import os
import re

import numpy as np

from digan_jax.data import tf_utils

_VERSION_DIR = re.compile(r"^\d+\.\d+\.\d+$")


class DatasetNotFoundError(FileNotFoundError):
  pass


def _version_key(version):
  return tuple(int(part) for part in version.split("."))


def find_dataset_dir(data_dir, name):
  """data_dir/name[/config]/<highest complete version>, or a clear error naming the fix."""
  data_dir = os.fspath(data_dir)
  name = name.strip("/")
  root = os.path.join(data_dir, name)
  versions = []
  if os.path.isdir(root):
    versions = [v for v in os.listdir(root)
                if _VERSION_DIR.match(v) and os.path.isfile(os.path.join(root, v, "dataset_info.json"))]
  if not versions:
    available = []
    if os.path.isdir(data_dir):
      for dirpath, _, files in os.walk(data_dir):
        if "dataset_info.json" in files:
          available.append(os.path.relpath(os.path.dirname(dirpath), data_dir))
    hint = (f"Build it with: python -m digan_jax.data.prepare --recipe=synthetic_videos "
            f"--output={data_dir} --resolution=R [--num_videos=N] (config names: r<R>[_n<N>]...; "
            "see builders/synthetic_videos.py)" if name.startswith("synthetic_videos") else
            f"Prepare it with: python -m digan_jax.data.prepare --input=VIDEOS --output={data_dir} "
            f"--name={name} --resolution=R (see digan_jax/data/DATASETS.md)")
    raise DatasetNotFoundError(
        f"No prepared dataset {name!r} in data dir {data_dir!r} (found: {sorted(available) or 'none'}). {hint}")
  return os.path.join(root, max(versions, key=_version_key))


def video_index_path(dataset_dir, split):
  return os.path.join(dataset_dir, f"video_index-{split}.npz")


def _parse_example(record):
  from tensorflow.core.example import example_pb2  # pylint: disable=g-import-not-at-top
  return example_pb2.Example.FromString(record).features.feature


def scan_video_index(files):
  """Reads length and label of every record of an ArrayRecord split (one pass over the data)."""
  from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top

  source = array_record_data_source.ArrayRecordDataSource([os.fspath(f) for f in files])
  lengths, labels = [], []
  for start in range(0, len(source), 256):
    for record in source.__getitems__(list(range(start, min(start + 256, len(source))))):
      feature = _parse_example(record)
      lengths.append(len(feature["frames"].bytes_list.value))
      labels.append(feature["label"].int64_list.value[0])
  return np.array(lengths, np.int64), np.array(labels, np.int64)


def write_video_index(dataset_dir, split, files):
  """Scans a split and writes its side file atomically; returns (lengths, labels)."""
  lengths, labels = scan_video_index(files)
  path = video_index_path(dataset_dir, split)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    np.savez(f, lengths=lengths, labels=labels)
  os.replace(tmp, path)
  return lengths, labels


class VideoDataset:
  """One split (or a '+'-joined union of splits, e.g. 'train+test') of a prepared dataset."""

  def __init__(self, data_dir, name, split):
    self.dataset_dir = find_dataset_dir(data_dir, name)
    self.name = name
    self.split = split
    with open(os.path.join(self.dataset_dir, "dataset_info.json")) as f:
      info = json.load(f)
    with open(os.path.join(self.dataset_dir, "features.json")) as f:
      self._features_json = json.load(f)
    self.info = info
    file_format = info.get("fileFormat", "tfrecord")
    if file_format != "array_record":
      raise ValueError(
          f"Dataset {self.dataset_dir} is stored as {file_format}; the pipeline needs random access. "
          "Rebuild it with this project's prepare CLI (it writes array_record).")
    splits = {s["name"]: s for s in info.get("splits", [])}
    files, lengths, labels = [], [], []
    for part in split.split("+"):
      if part not in splits:
        raise ValueError(f"Dataset {name!r} has no split {part!r}; available: {sorted(splits)} "
                         "(join splits with '+', e.g. 'train+test').")
      part_files = self.split_files(self.dataset_dir, part, info)
      index_path = video_index_path(self.dataset_dir, part)
      if os.path.isfile(index_path):
        with np.load(index_path) as index:
          part_lengths, part_labels = index["lengths"], index["labels"]
      else:
        try:
          part_lengths, part_labels = write_video_index(self.dataset_dir, part, part_files)
        except OSError:  # Read-only dataset folder: keep the scan in memory only.
          part_lengths, part_labels = scan_video_index(part_files)
      files += part_files
      lengths.append(part_lengths)
      labels.append(part_labels)
    self.lengths = np.concatenate(lengths)
    self.labels = np.concatenate(labels).astype(np.int32)
    self._files = files
    self._source = None
    frames = self._features_json["featuresDict"]["features"]["frames"]["sequence"]["feature"]["image"]
    self.resolution = int(frames["shape"]["dimensions"][0])
    self.image_format = frames.get("encodingFormat", "png")
    label = self._features_json["featuresDict"]["features"]["label"]["classLabel"]
    self.num_classes = int(label["numClasses"])

  @staticmethod
  def split_files(dataset_dir, split, info=None):
    """The ArrayRecord shard files of one split, in order."""
    if info is None:
      with open(os.path.join(dataset_dir, "dataset_info.json")) as f:
        info = json.load(f)
    entry = next(s for s in info["splits"] if s["name"] == split)
    num_shards = len(entry.get("shardLengths", []))
    file_format = info.get("fileFormat", "array_record")
    return [os.path.join(dataset_dir, f"{info['name']}-{split}.{file_format}-{i:05d}-of-{num_shards:05d}")
            for i in range(num_shards)]

  def __len__(self):
    return len(self.lengths)

  def _records(self, ids):
    if self._source is None:
      from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top
      self._source = array_record_data_source.ArrayRecordDataSource(self._files)
    return self._source.__getitems__([int(i) for i in ids])

  def fetch(self, videos, frames):
    """Encoded bytes of frames[i, :] of videos[i] -> object array [n, k]; only those frames are
    copied out of each record (decoding happens later, in the pipeline)."""
    frames = np.asarray(frames)
    out = np.empty(frames.shape, dtype=object)
    for i, record in enumerate(self._records(videos)):
      encoded = _parse_example(record)["frames"].bytes_list.value
      for j, f in enumerate(frames[i]):
        out[i, j] = encoded[f]
    return out

  def class_names(self):
    path = os.path.join(self.dataset_dir, "label.labels.txt")
    if os.path.isfile(path):
      with open(path) as f:
        return [line.rstrip("\n") for line in f]
    return [str(i) for i in range(self.num_classes)]


def open_dataset(data_dir, name, split):
  tf_utils.import_tf()  # Hides GPUs before anything touches TF.
  return VideoDataset(data_dir, name, split)
