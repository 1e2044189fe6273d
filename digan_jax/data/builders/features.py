"""The on-disk example layout shared by every video dataset of the project.

One example per video:
  frames     Sequence(Image[R, R, 3]) stored encoded (PNG or JPEG), decoded lazily by the pipeline
  length     int32, number of frames
  fps        float32, native frame rate (0 = unknown, e.g. frame folders)
  label      ClassLabel (a single class 'video' for unlabelled collections)
  source_id  text, where the video came from (relative path or synthetic id)
Datasets are written as ArrayRecord with shuffling disabled, so record i is the i-th generated
video and the pipeline can read any video by index.
"""

import numpy as np

from digan_jax.data import tf_utils

FILE_FORMAT = "array_record"


def video_features(resolution, image_format, class_names):
  tfds = tf_utils.import_tfds()
  return tfds.features.FeaturesDict(
    {
      "frames": tfds.features.Sequence(
        tfds.features.Image(shape=(resolution, resolution, 3), encoding_format=image_format)
      ),
      "length": tfds.features.Scalar(np.int32),
      "fps": tfds.features.Scalar(np.float32),
      "label": tfds.features.ClassLabel(names=list(class_names)),
      "source_id": tfds.features.Text(),
    }
  )
