"""Sky Time-lapse 128x128: train on `train`, evaluate on `test` (prepare with --recipe=sky)."""

from configs import default


def get_config():
  config = default.get_config()
  config.data.name = "sky"
  config.data.train_split = "train"
  config.data.eval_split = "test"
  return config
