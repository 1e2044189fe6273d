"""Smallest end-to-end run (tests, resume and multi-process checks): 16x16, a few steps."""

from configs import default


def get_config():
  config = default.get_config()
  g = config.model.generator
  g.resolution = 16
  g.input_resolution = 4
  g.z_dim = g.motion_dim = g.w_dim = 16
  g.channel_base = 128
  g.channel_max = 8
  g.emb_size = 8
  g.mapping_layers = 1
  d = config.model.discriminator
  d.channel_base = 128
  d.channel_max = 8
  d.mbstd_group_size = 2
  config.data.name = "synthetic_videos"  # built under WORKDIR/data by main
  config.data.eval_split = "test"
  config.data.synthetic_num_videos = 32
  config.data.synthetic_num_test_videos = 16
  config.train.global_batch_size = 8
  config.train.num_steps = 6
  config.train.r1_every = 4
  config.train.ema_kimg = 0.01
  config.log_every_steps = 1
  config.checkpoint_every_steps = 3
  config.sample_every_steps = 0
  config.eval_every_steps = 0
  config.eval.at_end = False
  config.sample.num_videos = 4
  config.sample.num_frames = 4
  return config
