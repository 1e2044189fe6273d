"""Which prepared dataset a config trains on: the data dir and the dataset's name.

The embedded synthetic set is built on first use (by process 0; the others wait), so a run on it
needs nothing prepared beforehand.
"""

from __future__ import annotations

import os

import jax
from absl import logging

from digan_jax.data import storage


def resolve_dataset(config, workdir) -> tuple[str, str]:
  """(data_dir, name) of config.data: data_dir defaults to $TFDS_DATA_DIR, then
  ~/tensorflow_datasets; the synthetic set defaults to WORKDIR/data."""
  data = config.data
  data_dir = (
    data.data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
  )
  name = data.name
  if name != "synthetic_videos":
    return data_dir, name
  # Only a synthetic run needs the builders (and TF): imported here, not for every dataset.
  from digan_jax.data import prepare  # pylint: disable=g-import-not-at-top
  from digan_jax.data.builders import synthetic_videos  # pylint: disable=g-import-not-at-top

  if not data.data_dir:
    data_dir = os.fspath(workdir / "data")
  res = config.model.generator.resolution
  cfg_name = synthetic_videos.config_name(
    res, data.synthetic_num_videos, data.synthetic_num_test_videos, None, None, None
  )
  name = f"synthetic_videos/{cfg_name}"
  try:
    storage.find_dataset_dir(data_dir, name)
  except storage.DatasetNotFoundError:
    if jax.process_index() == 0:
      logging.info("Building %s in %s", name, data_dir)
      prepare.prepare_synthetic(
        data_dir, res, data.synthetic_num_videos, data.synthetic_num_test_videos
      )
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

      multihost_utils.sync_global_devices("synthetic_dataset_built")
  return data_dir, name
