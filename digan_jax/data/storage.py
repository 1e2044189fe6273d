"""Random access to prepared video datasets: locate a dataset under a data dir, read per-video
metadata, and fetch the encoded bytes of chosen frames of chosen videos.

Datasets are TFDS ArrayRecord datasets written with shuffling disabled (builders/features.py), so
video i of a split is record i. Per-video lengths and labels are kept in a small side file
(`video_index-<split>.npz`) written at build time; when it is missing (a dataset built by plain
`tfds build`), the records are scanned once and the side file is written if the folder allows.
"""

import hashlib
import json
import os
import re
import shutil
import tempfile

import numpy as np

from digan_jax import fileio
from digan_jax.data import tf_utils

_VERSION_DIR = re.compile(r"^\d+\.\d+\.\d+$")


class DatasetNotFoundError(FileNotFoundError):
  pass


def _version_key(version):
  return tuple(int(part) for part in version.split("."))


def find_dataset_dir(data_dir, name) -> str:
  """data_dir/name[/config]/<highest complete version>, or a clear error naming the fix.

  data_dir may be local or in an object store (gs://...)."""
  data_dir = os.fspath(data_dir)
  name = name.strip("/")
  root = fileio.as_path(data_dir) / name
  versions = []
  if root.is_dir():
    versions = [
      v.name
      for v in root.iterdir()
      if _VERSION_DIR.match(v.name) and (v / "dataset_info.json").exists()
    ]
  if not versions:
    available = []
    top = fileio.as_path(data_dir)
    if top.is_dir():
      for info in fileio.list_files(top):
        if info.name == "dataset_info.json":
          available.append(os.fspath(info.parent.parent.relative_to(top)))
    hint = (
      f"Build it with: python -m digan_jax.data.prepare --recipe=synthetic_videos "
      f"--output={data_dir} --resolution=R [--num_videos=N] (config names: r<R>[_n<N>]...; "
      "see builders/synthetic_videos.py)"
      if name.startswith("synthetic_videos")
      else f"Prepare it with: python -m digan_jax.data.prepare --input=VIDEOS --output={data_dir} "
      f"--name={name} --resolution=R (see digan_jax/data/DATASETS.md)"
    )
    raise DatasetNotFoundError(
      f"No prepared dataset {name!r} in data dir {data_dir!r} (found: {sorted(available) or 'none'}). {hint}"
    )
  return os.fspath(root / max(versions, key=_version_key))


def local_copy(dataset_dir) -> str:
  """A local directory holding `dataset_dir`: itself when local; for an object store, a copy in
  $DIGAN_DATA_CACHE (default: the system temp dir), made once per host.

  ArrayRecord reads through local file descriptors only (riegeli has no open-source GCS reader),
  so a pod host copies its dataset to local disk first, as TPU VMs do with their local SSD. The
  copy is renamed into place whole, so concurrent processes on one host never read half of one.
  """
  if not fileio.is_remote(dataset_dir):
    return os.fspath(dataset_dir)
  cache = os.environ.get("DIGAN_DATA_CACHE") or os.path.join(
    tempfile.gettempdir(), "digan_data_cache"
  )
  digest = hashlib.sha256(os.fspath(dataset_dir).encode()).hexdigest()[:16]
  final = os.path.join(cache, f"{os.path.basename(os.fspath(dataset_dir))}-{digest}")
  if os.path.isfile(os.path.join(final, "dataset_info.json")):
    return final
  os.makedirs(cache, exist_ok=True)
  partial = tempfile.mkdtemp(prefix=".partial-", dir=cache)
  try:
    fileio.copy_tree(dataset_dir, partial, last=("dataset_info.json",))
    try:
      os.rename(partial, final)
    except OSError:  # another process on this host finished first
      if not os.path.isfile(os.path.join(final, "dataset_info.json")):
        raise
  finally:
    shutil.rmtree(partial, ignore_errors=True)
  return final


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
  fileio.write_npz(video_index_path(dataset_dir, split), lengths=lengths, labels=labels)
  return lengths, labels


class VideoDataset:
  """One split (or a '+'-joined union of splits, e.g. 'train+test') of a prepared dataset."""

  def __init__(self, data_dir, name, split):
    self.dataset_dir = find_dataset_dir(data_dir, name)  # where it lives, named in messages
    self.local_dir = local_copy(self.dataset_dir)  # where it is read
    self.name = name
    self.split = split
    with open(os.path.join(self.local_dir, "dataset_info.json")) as f:
      info = json.load(f)
    with open(os.path.join(self.local_dir, "features.json")) as f:
      self._features_json = json.load(f)
    self.info = info
    file_format = info.get("fileFormat", "tfrecord")
    if file_format != "array_record":
      raise ValueError(
        f"Dataset {self.dataset_dir} is stored as {file_format}; the pipeline needs random access. "
        "Rebuild it with this project's prepare CLI (it writes array_record)."
      )
    splits = {s["name"]: s for s in info.get("splits", [])}
    files, lengths, labels = [], [], []
    for part in split.split("+"):
      if part not in splits:
        raise ValueError(
          f"Dataset {name!r} has no split {part!r}; available: {sorted(splits)} "
          "(join splits with '+', e.g. 'train+test')."
        )
      part_files = self.split_files(self.local_dir, part, info)
      index_path = video_index_path(self.local_dir, part)
      if os.path.isfile(index_path):
        with np.load(index_path) as index:
          part_lengths, part_labels = index["lengths"], index["labels"]
      else:
        try:
          part_lengths, part_labels = write_video_index(self.local_dir, part, part_files)
        except OSError:  # Read-only dataset folder: keep the scan in memory only.
          part_lengths, part_labels = scan_video_index(part_files)
      files += part_files
      lengths.append(part_lengths)
      labels.append(part_labels)
    self.lengths = np.concatenate(lengths)
    self.labels = np.concatenate(labels).astype(np.int32)
    self._files = files
    self._source = None
    frames = self._features_json["featuresDict"]["features"]["frames"]["sequence"]["feature"][
      "image"
    ]
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
    return [
      os.path.join(dataset_dir, f"{info['name']}-{split}.{file_format}-{i:05d}-of-{num_shards:05d}")
      for i in range(num_shards)
    ]

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

  def _locate(self, video: int) -> tuple[str, int]:
    """(shard file, record index in it) of a video id of this split."""
    if not hasattr(self, "_file_lengths"):
      from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

      self._file_lengths = []
      for f in self._files:
        reader = array_record_module.ArrayRecordReader(f)
        self._file_lengths.append(reader.num_records())
        reader.close()
    for f, n in zip(self._files, self._file_lengths):
      if video < n:
        return f, int(video)
      video -= n
    raise IndexError(video)

  def find_damage(self, videos, frames) -> str | None:
    """Re-reads the records and decodes the frames a batch asked for: a message naming the first
    damaged one (dataset, file, record, video id, frame), or None when all read back."""
    tf = tf_utils.import_tf()
    for video, wanted in zip(np.asarray(videos).tolist(), np.asarray(frames).tolist()):
      frame, error = None, None
      try:
        encoded = _parse_example(self._records([video])[0])["frames"].bytes_list.value
        for frame in wanted:
          image = tf.io.decode_image(encoded[frame], channels=3, expand_animations=False)
          if tuple(image.shape) != (self.resolution, self.resolution, 3):
            raise ValueError(f"decoded shape {tuple(image.shape)}, stored {self.resolution}²")
      except Exception as e:  # noqa: BLE001 - whatever the record or the decoder raises
        error = " ".join(str(e).split())[:200] or type(e).__name__
      if error is not None:
        path, record = self._locate(video)
        where = f"video {video} (record {record} of {os.path.basename(path)})"
        where += f", frame {frame}" if frame is not None else ""
        return (
          f"prepared dataset {self.dataset_dir} is damaged: {where}: {error}. Prepare it again from "
          "its source videos (python -m digan_jax.data.prepare, see digan_jax/data/DATASETS.md) "
          "or restore that file from a copy."
        )
    return None

  def class_names(self):
    path = os.path.join(self.local_dir, "label.labels.txt")
    if os.path.isfile(path):
      with open(path) as f:
        return [line.rstrip("\n") for line in f]
    return [str(i) for i in range(self.num_classes)]


def open_dataset(data_dir, name, split):
  tf_utils.import_tf()  # Hides GPUs before anything touches TF.
  return VideoDataset(data_dir, name, split)
