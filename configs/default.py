"""Every configuration field; defaults = the official DIGAN recipe at 128x128 (`configs/main.yml`).

Other configs start from `get_config()` here and override a few fields. Override any field on the
command line, e.g. `--config.train.global_batch_size=32`.
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()

  # ---- model ----
  config.model = model = ml_collections.ConfigDict()
  model.generator = g = ml_collections.ConfigDict()
  g.resolution = 128  # output frame size; power of two, 32..256 (smaller with a smaller input grid)
  g.input_resolution = 32  # coordinate grid of the first blocks (b4..b32 all run on it)
  g.z_dim = 512  # content latent z_I
  g.motion_dim = 512  # motion latent z_M
  g.w_dim = 512  # mapped style w
  g.c_dim = 0  # number of classes (0 = unconditional)
  g.mapping_layers = 2  # mapping network depth
  g.mapping_lr_multiplier = 0.01  # equalised-lr multiplier of the mapping layers
  g.channel_base = 32768  # widths: min(channel_base // res, channel_max)
  g.channel_max = 512  # widest layer
  g.fmm_rank = 10  # rank of the factorised multiplicative modulation
  g.emb_size = 128  # Fourier features per embedding point (sin and cos: 2x channels)
  g.fourier_scale = 10.0**0.5  # spatial frequency scale σ_x = σ_y
  g.motion_sigma = 0.25  # temporal frequency σ_t (0.5 for 128-frame training)
  g.extra_convs = ((128, 1), (256, 1))  # (block resolution, extra FMM layers)
  g.w_avg_beta = 0.995  # decay of the tracked w average (truncation only)

  model.discriminator = d = ml_collections.ConfigDict()
  d.channel_base = 32768  # widths: min(channel_base // res, channel_max)
  d.channel_max = 512  # widest layer
  d.conv_clamp = 256.0  # clamp of conv outputs (official: 256 in all precisions)
  d.mbstd_group_size = 4  # minibatch-std group over the global batch (strided, as StyleGAN2-ADA)
  d.mbstd_num_channels = 1  # minibatch-std feature channels
  d.mapping_layers = 8  # label mapping depth of the projection head (c_dim > 0)

  model.compute_dtype = "float32"  # "bfloat16": bf16 convs/matmuls and activations; params f32
  # Rematerialisation (jax.checkpoint policy) of G's FMM layers / D's blocks: "none",
  # "nothing_saveable", "dots_saveable" or "dots_with_no_batch_dims_saveable" (less memory, more
  # FLOPs; `python -m digan_jax.aot` measures both).
  model.generator_remat = "none"
  model.discriminator_remat = "none"

  # ---- data ----
  config.data = data = ml_collections.ConfigDict()
  data.name = "synthetic_videos"  # TFDS dataset name (a prepared dataset or a builder)
  data.data_dir = ""  # TFDS data dir; "" = $TFDS_DATA_DIR or ~/tensorflow_datasets
  data.train_split = "train"  # split trained on
  data.eval_split = "train"  # split used for real FVD features
  data.num_frames = 16  # clip length in frames
  data.frame_stride = 1  # stride between the frames of a clip (TaiChi: 4)
  data.clip_hop = 1  # frames between consecutive clip starts (1 = every window, DIGAN)
  data.clip_sampling = "clips"  # "clips": uniform over all clips (DIGAN); "videos": StyleGAN-V
  data.mirror = True  # random horizontal flip of whole clips (both frames of a pair)
  data.synthetic_num_videos = 1024  # train videos of synthetic_videos when main builds it
  data.synthetic_num_test_videos = 256  # test videos of synthetic_videos when main builds it

  # ---- training ----
  config.train = train = ml_collections.ConfigDict()
  train.seed = 0  # global seed: init, latents, augmentation, data order
  train.global_batch_size = 64  # videos per step over all devices and processes
  train.num_micro_batches = 1  # gradient accumulation rounds per step
  train.total_kimg = 25_000  # training length in thousands of videos (official default)
  train.num_steps = -1  # if > 0, overrides total_kimg
  train.base_lr = 0.0025  # learning rate before the lazy-regularisation correction
  train.beta1 = 0.0  # Adam β1
  train.beta2 = 0.99  # Adam β2 before correction
  train.eps = 1e-8  # Adam ε
  train.g_reg_interval = 4  # G lazy-regularisation interval (corrects lr/β2 even without PL)
  train.d_reg_interval = 16  # D lazy-regularisation interval
  train.r1_gamma = 1.0  # R1 weight γ
  train.r1_every = 16  # R1 step every n steps (loss x n)
  train.ema_kimg = 20.0  # EMA half-life in kimg
  train.ema_rampup = 0.05  # EMA ramp-up (None/0 disables)
  train.augment = "color,translation"  # DiffAugment policy ("" = off; add "cutout" if wanted)
  train.augment_translation = 0.125  # max shift as a fraction of the frame
  train.augment_cutout = 0.5  # cutout size as a fraction of the frame
  # A non-finite iteration: "stop" keeps the official update (gradients nan_to_num'd) and stops
  # after nonfinite_patience non-finite logged losses in a row; "skip" does not apply it (counted as
  # train/skipped) and stops after nonfinite_patience log intervals in which every step was skipped.
  train.nonfinite_policy = "stop"
  train.nonfinite_patience = 20
  # Parameters kept at their initial values: a regex over names like
  # "g/synthesis/b4_coord_fuser/motion_mlp0/weight" or "d/..." ("" = train everything). E.g.
  # "g/.*coord_fuser/(affine|motion_mlp)" freezes G's motion path (tests/test_motion.py's control).
  train.freeze = ""

  # ---- parallelism ----
  config.mesh = mesh = ml_collections.ConfigDict()
  mesh.data = -1  # data-parallel axis size (-1 = all remaining devices)
  mesh.fsdp = 1  # parameter-sharding axis size
  config.distributed = False  # call jax.distributed.initialize() (also on if env says so)

  # ---- loop cadence ----
  config.log_every_steps = 50  # scalar summaries
  config.checkpoint_every_steps = 1000  # Orbax save period
  config.keep_checkpoints = 3  # last N checkpoints kept (plus the best by FVD)
  config.sample_every_steps = 2000  # sample grids / videos
  config.eval_every_steps = 5000  # proxy FVD period (0 = off)
  config.profile = False  # capture a profiler trace of a few early steps (process 0)
  config.tensorboard = (
    True  # TensorBoard event files in the workdir (else scalars go to the log only)
  )

  # ---- evaluation ----
  config.eval = ev = ml_collections.ConfigDict()
  ev.protocol = "proxy"  # digan | stylegan_v | proxy | tf_reference
  ev.batch_size = 16  # videos per generation/I3D batch (global)
  ev.step = -1  # checkpoint step for --mode=eval (-1 = latest)
  ev.at_start = False  # also evaluate the initial networks (a baseline for the run)
  ev.at_end = True  # evaluate after the last step (when evaluation is not off)
  ev.num_videos = -1  # fake and real videos per FVD (-1 = the protocol's N)
  ev.num_repeats = -1  # FVD trials averaged (-1 = the protocol's count)
  # A split disjoint from data.eval_split ("" = none): its clips stand in for the fakes to give each
  # FVD its floor (two real sets of the protocol's sizes), and results after step 0 report the
  # share of the gap from step 0's FVD to that floor that training closed.
  ev.floor_split = ""

  # ---- sampling ----
  config.sample = sample = ml_collections.ConfigDict()
  sample.step = -1  # checkpoint step that --mode=sample renders (-1 = the latest)
  sample.num_videos = 16  # videos per sample grid
  sample.num_frames = 16  # frames per sample video
  sample.t_end = 1.0  # last time (> 1 extrapolates)
  sample.seed = 42  # content seed (motion seed = seed + 1 unless set)
  sample.motion_seed = -1  # separate motion seed (-1 = seed + 1)
  sample.scale = 1  # super-resolution factor
  sample.zoom = 1.0  # zoom-out factor (1.5 = the paper's [-0.25, 1.25]^2 view)
  sample.fps = 8  # frames per second of written MP4/GIF

  return config
