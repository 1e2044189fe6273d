"""TaiChi-HD 128x128, 16 frames with stride 4, all data (paper §4; prepare with --recipe=taichi)."""

from configs import default


def get_config():
  config = default.get_config()
  config.data.name = "taichi"
  config.data.train_split = "train+test"  # the paper trains on all TaiChi data
  config.data.eval_split = "train+test"
  config.data.frame_stride = 4
  return config
