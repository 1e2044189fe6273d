"""TFDS builder `synthetic_videos`: the procedural videos of `digan_jax.data.synthetic_videos`.

Config names spell their parameters, so any set can be named from a config file or the command line:
  r<resolution>[_n<train videos>][_t<test videos>][_l<min>-<max> lengths][_s<seed>]
e.g. `synthetic_videos/r32` (defaults: 1024 train, 256 test, lengths 24-48, seed 0) or
`synthetic_videos/r128_n1000_t100`. Train video i is `generate(seed)` video i; test videos continue
the same stream after the train videos, so the splits never share a video.
"""

import dataclasses
import os
import re
import tempfile

from digan_jax import fileio
from digan_jax.data import parallel
from digan_jax.data import synthetic_videos
from digan_jax.data import tf_utils
from digan_jax.data.builders import features

tfds = tf_utils.import_tfds()

DEFAULTS = dict(num_train=1024, num_test=256, min_length=24, max_length=48, seed=0)
_NAME = re.compile(
  r"^r(?P<resolution>\d+)(_n(?P<num_train>\d+))?(_t(?P<num_test>\d+))?"
  r"(_l(?P<min_length>\d+)-(?P<max_length>\d+))?(_s(?P<seed>\d+))?$"
)


@dataclasses.dataclass(eq=False)
class SyntheticVideosConfig(tfds.core.BuilderConfig):
  resolution: int = 32
  num_train: int = DEFAULTS["num_train"]
  num_test: int = DEFAULTS["num_test"]
  min_length: int = DEFAULTS["min_length"]
  max_length: int = DEFAULTS["max_length"]
  seed: int = DEFAULTS["seed"]
  image_format: str = "png"


def config_from_name(name):
  """Parses a config name such as 'r32' or 'r128_n1000_t100_l24-48_s0'."""
  match = _NAME.match(name)
  if not match:
    raise ValueError(
      f"Bad synthetic_videos config {name!r}: expected r<res>[_n<train>][_t<test>][_l<min>-<max>]"
      "[_s<seed>], e.g. 'r32' or 'r128_n1000_t100'."
    )
  values = {k: int(v) for k, v in match.groupdict().items() if v is not None}
  params = dict(DEFAULTS, **values)
  if params["num_train"] < 1 or not 1 <= params["min_length"] <= params["max_length"]:
    raise ValueError(
      f"Bad synthetic_videos config {name!r}: needs >= 1 train video and 1 <= min <= max length."
    )
  return SyntheticVideosConfig(name=name, description=f"Synthetic motion videos {params}", **params)


def config_name(
  resolution, num_train=None, num_test=None, min_length=None, max_length=None, seed=None
):
  """The canonical config name of a parameter set (defaults omitted)."""
  name = f"r{resolution}"
  if num_train is not None and num_train != DEFAULTS["num_train"]:
    name += f"_n{num_train}"
  if num_test is not None and num_test != DEFAULTS["num_test"]:
    name += f"_t{num_test}"
  lengths = (min_length or DEFAULTS["min_length"], max_length or DEFAULTS["max_length"])
  if lengths != (DEFAULTS["min_length"], DEFAULTS["max_length"]):
    name += f"_l{lengths[0]}-{lengths[1]}"
  if seed is not None and seed != DEFAULTS["seed"]:
    name += f"_s{seed}"
  return name


class SyntheticVideos(tfds.core.GeneratorBasedBuilder):
  """Procedural motion-family videos (6 classes), deterministic, no download."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [config_from_name(f"r{r}") for r in (32, 64, 128)]

  def __init__(self, *, config=None, num_workers=None, **kwargs):
    if isinstance(config, str) and config not in {c.name for c in self.BUILDER_CONFIGS}:
      config = config_from_name(config)
    self._num_workers = num_workers if num_workers is not None else (os.cpu_count() or 1)
    kwargs.setdefault("file_format", features.FILE_FORMAT)
    super().__init__(config=config, **kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      description=__doc__,
      features=features.video_features(
        self.builder_config.resolution, self.builder_config.image_format, synthetic_videos.FAMILIES
      ),
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    config = self.builder_config
    splits = {"train": self._generate_examples(0, config.num_train)}
    if config.num_test:  # TFDS cannot write an empty split.
      splits["test"] = self._generate_examples(config.num_train, config.num_test)
    return splits

  def _generate_examples(self, first_index, num_videos):
    config = self.builder_config
    lengths = synthetic_videos.video_lengths(
      config.seed, first_index + num_videos, (config.min_length, config.max_length)
    )
    jobs = [
      (
        config.seed,
        first_index + i,
        config.resolution,
        int(lengths[first_index + i]),
        config.image_format,
      )
      for i in range(num_videos)
    ]
    results = parallel.ordered_map(synthetic_videos.render_encoded, jobs, self._num_workers)
    for i, (frames, label) in enumerate(results):
      yield (
        i,
        {
          "frames": frames,
          "length": len(frames),
          "fps": synthetic_videos.FPS,
          "label": label,
          "source_id": f"synthetic/{config.seed}/{first_index + i}",
        },
      )


def build(data_dir, config, num_workers=None):
  """Builds (if missing) synthetic_videos/<config> under data_dir; returns the dataset directory.

  ArrayRecord files are written through local file descriptors only, so a data dir in an object
  store gets a local build that is then uploaded (dataset_info.json last: until it lands, readers
  see no dataset rather than part of one).
  """
  if fileio.is_remote(data_dir):
    with tempfile.TemporaryDirectory(prefix="digan_build_") as local:
      built = os.fspath(build(local, config, num_workers))
      target = fileio.as_path(data_dir) / os.path.relpath(built, local)
      fileio.copy_tree(built, target, last=("dataset_info.json",))
    return target
  builder = SyntheticVideos(config=config, data_dir=os.fspath(data_dir), num_workers=num_workers)
  # Nothing is downloaded; keep TFDS's download folder out of the data dir.
  with tempfile.TemporaryDirectory() as download_dir:
    builder.download_and_prepare(download_dir=download_dir)
  return builder.data_dir
