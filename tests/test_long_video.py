"""Long videos (paper Sec. 4.2, spec D25): configs/taichi128_long.py trains on 128-frame clips
(stride 4) with σ_t = 0.5. t in [0, 1] spans the whole 128-frame clip: real pair times and Δt are in
units of 1/127, the fakes' continuous times cover the same span, evaluation renders on that grid, and
sampling renders 128 frames in chunks whose memory does not grow with the frame count."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np

from digan_jax import sampling, sharding
from digan_jax import steps as steps_lib
from digan_jax import train as train_lib
from digan_jax.data import clip_plans, pipeline, synthetic_videos
from digan_jax.evaluation import real_data, schedule
from digan_jax.models import Generator

import tiny_digan

FRAMES, STRIDE = 128, 4


def long_config():
  return importlib.import_module("configs.taichi128_long").get_config()


def test_long_config_trains_and_evaluates_on_the_128_frame_clip():
  config = long_config()
  assert (config.data.num_frames, config.data.frame_stride) == (FRAMES, STRIDE)
  assert config.model.generator.motion_sigma == 0.5
  assert config.sample.num_frames == FRAMES  # the in-loop samples show the whole long clip
  (proxy,) = [s.protocol for s in schedule.schedules(config)]
  assert proxy.train_clip_frames == FRAMES
  # A 16-frame evaluation clip of real frames k * stride is rendered at t = k * stride / 127.
  np.testing.assert_allclose(
    proxy.fake_times(), np.arange(16) * proxy.frame_stride / 127, rtol=1e-6
  )
  assert "/ 127" in proxy.card()["fake_times"]
  short = importlib.import_module("configs.taichi128").get_config()
  (short_proxy,) = [s.protocol for s in schedule.schedules(short)]
  assert short_proxy.train_clip_frames == 16 and "/ 15" in short_proxy.card()["fake_times"]


def _index_videos(lengths, res=4):
  """uint8 videos whose pixels spell their frame index (R = i mod 256, G = i // 256)."""
  out = []
  for n in lengths:
    i = np.arange(n)
    frame = np.stack([i % 256, i // 256, np.zeros_like(i)], -1).astype(np.uint8)
    out.append(np.broadcast_to(frame[:, None, None, :], (n, res, res, 3)).copy())
  return out


def _decode_index(frames):
  levels = np.rint((np.asarray(frames)[..., 0, 0, :] + 1.0) * 127.5).astype(np.int64)
  return levels[..., 0] + 256 * levels[..., 1]


def test_real_pairs_of_128_frame_clips_read_the_right_frames_and_normalise_delta_t():
  lengths = [520, 700, 509]  # the last is exactly one span: (128 - 1) * 4 + 1 frames
  batches = pipeline.make_numpy_train_iterator(
    _index_videos(lengths), np.zeros(3, np.int32), 64, num_frames=FRAMES, frame_stride=STRIDE
  )
  for _ in range(3):
    batch = next(batches)
    source = _decode_index(batch["frames"])  # [B, 2] source frame indices
    pair = np.rint(batch["times"] * (FRAMES - 1)).astype(np.int64)  # clip positions 0..127
    np.testing.assert_allclose(batch["times"], pair / 127, atol=1e-6)
    np.testing.assert_allclose(batch["delta_t"], (pair[:, 1] - pair[:, 0]) / 127, atol=1e-6)
    # Both frames of a pair come from one clip of 128 frames taken every 4th source frame.
    np.testing.assert_array_equal(source[:, 1] - source[:, 0], (pair[:, 1] - pair[:, 0]) * STRIDE)
    start = source[:, 0] - pair[:, 0] * STRIDE
    assert np.all(start >= 0) and np.all(start + (FRAMES - 1) * STRIDE < max(lengths))
  # Over many draws the real Δt of a 128-frame clip is the fakes' continuous distribution (E 0.400,
  # spec §4) up to its 1/127 grid; with 16-frame clips it is 0.425 with 4.2 % identical frames.
  _, dt = clip_plans.sample_pair_times(np.random.default_rng(0), 200_000, FRAMES)
  np.testing.assert_allclose(np.unique(dt), np.unique(np.rint(dt * 127)) / 127, atol=1e-6)
  assert abs(dt.mean() - 0.400) < 0.006 and (dt == 0).mean() < 0.01
  _, dt16 = clip_plans.sample_pair_times(np.random.default_rng(0), 200_000, 16)
  assert abs(dt16.mean() - 0.425) < 0.005


def test_trainer_reads_128_frame_pairs_from_a_prepared_dataset(tmp_path):
  from digan_jax.data import prepare

  config = long_config()
  config.model.generator.resolution = 16
  config.train.global_batch_size = 8
  config.data.mirror = False
  config.data.train_split = "train"  # TaiChi trains on train+test; this dataset's train split
  name, _ = prepare.prepare_synthetic(
    tmp_path, 16, num_videos=2, num_test=1, min_length=510, max_length=530, num_workers=1
  )
  config.data.name = name
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  batch = next(train_lib._train_iterator(config, tmp_path, name, mesh, 0))
  videos = synthetic_videos.generate(2, 16, num_frames=(510, 530), seed=0).videos
  expected = next(
    pipeline.make_numpy_train_iterator(
      videos,
      np.zeros(2, np.int32),
      8,
      num_frames=FRAMES,
      frame_stride=STRIDE,
      seed=config.train.seed,
      clip_hop=config.data.clip_hop,
      policy=config.data.clip_sampling,
      random_flip=False,
    )
  )
  for key in ("frames", "times", "delta_t"):
    np.testing.assert_array_equal(batch[key], expected[key], err_msg=key)
  np.testing.assert_allclose(batch["delta_t"] * 127, np.rint(batch["delta_t"] * 127), atol=1e-4)


def test_fake_times_span_the_same_clip_as_the_real_pairs():
  """The fakes' times do not depend on the clip length: on a 128-frame clip they have the real
  pairs' distribution (to the 1/127 grid), which the motion discriminator needs (Δt is an input)."""
  config = tiny_digan.tiny_config()
  config.data.num_frames = FRAMES
  steps = steps_lib.DiganSteps(
    config,
    sharding.make_mesh(config.mesh, jax.devices()[:1]),
    compiler_options=tiny_digan.COMPILER_OPTIONS,
  )
  fake = np.asarray(jax.jit(lambda k: steps._fake_draws(k, 100_000)["times"])(jax.random.key(0)))
  grid = np.linspace(0, 1, 41)
  cdf = lambda x: np.searchsorted(np.sort(x), grid, side="right") / len(x)

  def distance(num_frames):
    """Largest CDF difference between fake and real times (t_lo and t_hi) on num_frames clips."""
    pair, _ = clip_plans.sample_pair_times(np.random.default_rng(1), 100_000, num_frames)
    real = pair / (num_frames - 1)
    return max(np.abs(cdf(fake[:, k]) - cdf(real[:, k])).max() for k in range(2))

  # Real frames sit on a 1/127 grid (frame 0 takes P(t < 1/128)), hence 0.025, not 0; on 16-frame
  # clips the same comparison differs by the 1/15 grid.
  long, short = distance(FRAMES), distance(16)
  print(f"max CDF difference fake vs real times: 128-frame clips {long:.4f}, 16-frame {short:.4f}")
  assert long < 0.025 and short > 3 * long


def test_128_frames_render_in_chunks_with_bounded_memory():
  gcfg = tiny_digan.tiny_generator_config()
  g = Generator(gcfg)
  z, zm = sampling.latents(0, 2, gcfg.z_dim), sampling.latents(1, 2, gcfg.motion_dim)
  variables = g.init(jax.random.key(0), z, zm, jnp.zeros((1,)))

  def compiled(num_frames, chunk):
    times = sampling.sample_times(num_frames)
    fn = jax.jit(lambda v: sampling.render(g, v, z, zm, times, frames_per_chunk=chunk))
    return fn, fn.lower(variables).compile().memory_analysis().temp_size_in_bytes

  fn_chunked, chunked = compiled(FRAMES, 16)
  _, sixteen = compiled(16, None)
  fn_whole, whole = compiled(FRAMES, None)
  print(
    f"temporary memory of a 2-video render: 16 frames {sixteen / 2**20:.1f} MiB; 128 frames "
    f"whole {whole / 2**20:.1f} MiB, in chunks of 16 {chunked / 2**20:.1f} MiB"
  )
  assert chunked < 1.5 * sixteen and whole > 4 * chunked
  np.testing.assert_allclose(
    np.asarray(fn_chunked(variables)), np.asarray(fn_whole(variables)), atol=1e-5
  )


def test_evaluation_takes_real_clips_at_the_training_stride():
  """TaiChi trains on every 4th frame (t = 1/15 is 4 source frames), and DIGAN evaluates it on the
  same stride-4 clips (spec §9.3); the fakes are rendered at t = k / 15 either way."""
  config = importlib.import_module("configs.taichi128").get_config()
  (proxy,) = [s.protocol for s in schedule.schedules(config)]
  assert (proxy.frame_stride, proxy.data_stride, proxy.real_stride) == (1, 4, 4)
  assert proxy.frame_span == 61 and proxy.card()["data_stride"] == 4
  np.testing.assert_allclose(proxy.fake_times(), np.arange(16) / 15, rtol=1e-6)
  source = real_data.clip_source_from_videos(_index_videos([100, 80]), proxy, batch_size=4)
  clips = np.concatenate([b["video"][b["valid"]] for b in source(8, seed=0)])
  index = clips[..., 0, 0, 0].astype(np.int64) + 256 * clips[..., 0, 0, 1].astype(np.int64)
  assert index.shape == (8, 16)
  np.testing.assert_array_equal(np.diff(index, axis=1), 4)
  # A stride-1 dataset keeps the protocol as registered (and its cards as before).
  (plain,) = [
    s.protocol for s in schedule.schedules(importlib.import_module("configs.ucf101").get_config())
  ]
  assert plain.data_stride == 1 and "data_stride" not in plain.card()
