"""UCF-101 128x128, fold-1 train split only (paper's "train split" rows; official: train+test)."""

from configs import default


def get_config():
  config = default.get_config()
  config.data.name = "ucf101"
  config.data.train_split = "train"
  config.data.eval_split = "train"
  return config
