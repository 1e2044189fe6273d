"""UCF-101 128x128 on train+test of fold 1 (13,320 videos): the official train and FVD set."""

from configs import ucf101


def get_config():
  config = ucf101.get_config()
  config.data.train_split = "train+test"
  config.data.eval_split = "train+test"
  return config
