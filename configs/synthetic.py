"""README demo: a small DIGAN on the embedded synthetic dataset at 32x32, trained on CPU."""

from configs import default


def get_config():
  config = default.get_config()
  g = config.model.generator
  g.resolution = 32
  g.input_resolution = 8
  g.z_dim = g.motion_dim = g.w_dim = 128
  g.channel_base = 2048
  g.channel_max = 64
  g.emb_size = 32
  g.mapping_layers = 2
  d = config.model.discriminator
  d.channel_base = 2048
  d.channel_max = 64
  config.data.name = "synthetic_videos"  # built under WORKDIR/data by main
  config.data.synthetic_num_videos = 1024
  config.data.synthetic_num_test_videos = 256
  config.data.eval_split = "test"
  config.train.global_batch_size = 16
  config.train.num_steps = 500  # ~3.5 min of training on a 2-core CPU (measured 2.35 steps/s)
  config.train.ema_kimg = 0.5  # half-life scaled to the short run
  config.log_every_steps = 25
  config.checkpoint_every_steps = 250
  config.sample_every_steps = 250
  config.eval_every_steps = 0  # FVD at the start and the end (main), not in between
  config.eval.protocol = "proxy"
  config.eval.at_start = True  # the baseline the demo's final FVD is compared with
  config.eval.num_videos = 64  # a reduced proxy (I3D at 224^2 is the CPU bottleneck)
  config.eval.num_repeats = 1
  config.eval.batch_size = 16
  config.sample.num_videos = 16
  return config
