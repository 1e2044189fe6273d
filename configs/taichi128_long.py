"""TaiChi-HD 128 frames (stride 4) with σ_t = 0.5 (paper's long-video model; no official code)."""

from configs import taichi128


def get_config():
  config = taichi128.get_config()
  config.data.num_frames = 128
  config.model.generator.motion_sigma = 0.5
  # t in [0, 1] spans the 128-frame clip: samples show all of it (rendered 16 frames at a time).
  config.sample.num_frames = 128
  return config
