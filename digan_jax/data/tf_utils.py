"""The one place that imports TensorFlow for `digan_jax.data`, lazily, with its GPUs hidden.

JAX owns the accelerators; TF only runs input pipelines on the host, so it must never allocate
device memory. Importing `digan_jax` or `digan_jax.data` never imports TensorFlow.
"""

import os

_configured = False


def import_tf():
  """Returns the `tensorflow` module with GPUs hidden from it (idempotent)."""
  global _configured
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
      "TensorFlow is needed for TFDS datasets and tf.data pipelines: pip install tensorflow-cpu "
      "tensorflow-datasets (or use the in-memory NumPy pipeline for synthetic data)"
    ) from e
  if not _configured:
    try:
      tf.config.set_visible_devices([], "GPU")
    except (RuntimeError, ValueError):
      pass  # TF was initialised elsewhere already; its devices can no longer change.
    _configured = True
  return tf


def import_tfds():
  import_tf()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  return tfds
