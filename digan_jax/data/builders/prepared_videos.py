"""TFDS builder `prepared_videos`: writes a user or recipe video collection as a TFDS dataset.

The prepare CLI gives it, per split, an iterator of ready examples (frames already cropped, resized
and encoded in worker processes); the builder only fixes the features and the on-disk layout. The
dataset name is chosen by the user, so the builder is not registered and is loaded back with
`storage.VideoDataset` (or `tfds.builder_from_directory`).
"""

from digan_jax.data import tf_utils
from digan_jax.data.builders import features

tfds = tf_utils.import_tfds()


class PreparedVideos(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A prepared collection of videos (one example per video)."""

  VERSION = tfds.core.Version("1.0.0")

  def __init__(
    self, *, name, resolution, image_format, class_names, split_examples, description="", **kwargs
  ):
    self.name = name  # The user's dataset name decides the folder under data_dir.
    self._resolution = resolution
    self._image_format = image_format
    self._class_names = list(class_names)
    self._split_examples = split_examples
    self._description = description
    kwargs.setdefault("file_format", features.FILE_FORMAT)
    super().__init__(**kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      description=self._description or f"Videos prepared by digan_jax.data.prepare ({self.name}).",
      features=features.video_features(self._resolution, self._image_format, self._class_names),
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Sources are local.
    return {
      split: self._generate_examples(examples) for split, examples in self._split_examples.items()
    }

  def _generate_examples(self, examples):
    # Keys in generation order: with shuffling disabled, record i is the i-th example.
    for i, example in enumerate(examples):
      yield i, example
