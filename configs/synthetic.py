"""README demo: a small DIGAN on the embedded synthetic dataset at 32x32, trained on CPU in minutes.

Departures from the paper config (configs/taichi128.py), each for a run of a few hundred steps on
two CPU cores that still ends with visible shapes and motion:
- 32x32 frames and narrow networks (G 64 channels, D 32), 128-d latents, 2 mapping layers.
- G's input_resolution is the output resolution: the INR is evaluated on the 32x32 grid directly.
  With the paper's ratio (input 8 for output 32) the coarse 8x8 level showed as blocks for the
  first thousand steps.
- R1 gamma 0.01 instead of 1: StyleGAN2's heuristic 0.0002 * res^2 / batch gives 0.013 at 32x32
  and batch 16; with gamma 1 D stayed too smooth and G drew colour fields without shapes.
- learning rate 0.005 instead of 0.0025, no DiffAugment, EMA half-life scaled to the run.
- FVD with 32 clips per side at the start and the end only, each with its floor: the FVD of 32
  test clips against 32 train clips (two disjoint real sets of the same sizes). I3D at 224^2 costs
  0.7-0.9 s per clip on two cores, a quarter of the run at 48 clips; the gap closed, read against
  the floor of the same sizes, stays the measure (0.74 with 64 clips, 0.77 with 48, 0.79 with 32,
  same training).
Measured numbers and timings: README ("The demo").
"""

from configs import default


def get_config():
  config = default.get_config()
  g = config.model.generator
  g.resolution = 32
  g.input_resolution = 32
  g.z_dim = g.motion_dim = g.w_dim = 128
  g.channel_base = 2048
  g.channel_max = 64
  g.emb_size = 32
  g.mapping_layers = 2
  d = config.model.discriminator
  d.channel_base = 2048
  d.channel_max = 32
  config.data.name = "synthetic_videos"  # built under WORKDIR/data by main
  config.data.synthetic_num_videos = 1024
  config.data.synthetic_num_test_videos = 256
  config.data.eval_split = "test"
  config.train.global_batch_size = 16
  config.train.num_steps = 500
  config.train.base_lr = 0.005
  config.train.r1_gamma = 0.01
  config.train.augment = ""
  config.train.ema_kimg = 0.5  # half-life scaled to the short run
  config.log_every_steps = 25
  config.checkpoint_every_steps = 250
  config.sample_every_steps = 500
  config.eval_every_steps = 0  # FVD at the start and the end (main), not in between
  config.eval.protocol = "proxy"
  config.eval.at_start = True  # the baseline the demo's final FVD is compared with
  config.eval.floor_split = "train"  # disjoint from eval_split: the floor of every FVD
  config.eval.num_videos = 32  # a reduced proxy (I3D at 224^2 is the CPU bottleneck)
  config.eval.num_repeats = 1
  # I3D's activations at 224^2 (over 400 MB for 16 clips in its first conv) are mapped afresh on
  # every call: `benchmark i3d` with 16 clips per call spent 35 s in the kernel (page faults) beside
  # 85 s of user time, with 4 clips 3.7 s beside 36 s; 1.36-1.54 clips/s (three runs) against 1.09.
  # The demo's FVDs are the same to the printed digits.
  config.eval.batch_size = 4
  config.sample.num_videos = 16
  return config
