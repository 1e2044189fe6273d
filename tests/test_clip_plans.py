"""Clip indexing and frame-pair sampling plans (pure NumPy): the official real frame-pair statistics
(docs/frame_pairs.md), determinism per (seed, step), per-process sharding, and both clip-sampling
policies."""

import numpy as np
import pytest

from digan_jax.data import clip_plans


def _exact_pair_distribution(num_frames):
  """P(f_lo, f_hi) from f_a = ⌊T·Beta(2,1)⌋ (CDF x²), f_b = ⌊T·Beta(1,2)⌋ (CDF 1 − (1 − x)²)."""
  edges = np.arange(num_frames + 1) / num_frames
  p_a = np.diff(edges**2)
  p_b = np.diff(1 - (1 - edges) ** 2)
  joint = np.outer(p_a, p_b)
  delta = np.abs(np.subtract.outer(np.arange(num_frames), np.arange(num_frames)))
  return joint, delta


def test_real_pair_statistics_match_spec():
  rng = np.random.default_rng(0)
  pair, delta_t = clip_plans.sample_pair_times(rng, 400_000, 16)
  assert np.all(pair[:, 0] <= pair[:, 1]) and pair.min() >= 0 and pair.max() <= 15
  np.testing.assert_allclose(delta_t, (pair[:, 1] - pair[:, 0]) / 15, atol=1e-7)
  # Monte Carlo numbers of docs/frame_pairs.md and the exact distribution of the quantised times.
  joint, delta = _exact_pair_distribution(16)
  exact_zero = joint[delta == 0].sum()
  exact_mean = (joint * delta).sum() / 15
  assert abs(exact_zero - 0.042) < 0.001 and abs(exact_mean - 0.425) < 0.001
  assert abs((delta_t == 0).mean() - exact_zero) < 0.002
  assert abs(delta_t.mean() - exact_mean) < 0.002
  np.testing.assert_allclose(pair.mean(0) / 15, [0.288, 0.713], atol=0.003)
  thirds = np.histogram(delta_t, [0, 1 / 3 - 1e-6, 2 / 3 - 1e-6, 1.01])[0] / len(delta_t)
  np.testing.assert_allclose(thirds, [0.374, 0.378, 0.248], atol=0.005)
  # The whole Δt distribution, not just its moments.
  observed = np.bincount(pair[:, 1] - pair[:, 0], minlength=16) / len(pair)
  expected = np.array([joint[delta == d].sum() for d in range(16)])
  np.testing.assert_allclose(observed, expected, atol=0.003)


def test_pair_times_follow_num_frames():
  pair, delta_t = clip_plans.sample_pair_times(np.random.default_rng(1), 50_000, 8)
  assert pair.max() == 7 and delta_t.max() == 1.0
  np.testing.assert_allclose(np.unique(delta_t), np.arange(8) / 7, atol=1e-7)
  joint, delta = _exact_pair_distribution(8)
  assert abs((delta_t == 0).mean() - joint[delta == 0].sum()) < 0.005


def test_clip_index_windows():
  index = clip_plans.ClipIndex([10, 3, 20], num_frames=4, frame_stride=2, clip_hop=1)
  assert index.span == 7
  np.testing.assert_array_equal(index.counts, [4, 0, 14])
  video, start = index.clip(np.arange(index.num_clips))
  assert np.all(video != 1)
  assert np.all(start + index.span <= np.asarray([10, 3, 20])[video])
  hop = clip_plans.ClipIndex([10, 20], num_frames=4, clip_hop=4)
  np.testing.assert_array_equal(hop.clip(np.arange(hop.num_clips))[1], [0, 4, 0, 4, 8, 12, 16])
  with pytest.raises(ValueError, match="smaller stride"):
    clip_plans.ClipIndex([5, 6], num_frames=16)


def test_policies_weight_videos_as_documented():
  index = clip_plans.ClipIndex([16, 46], num_frames=16)  # 1 and 31 windows.
  rng = np.random.default_rng(0)
  by_clip = np.bincount(index.sample(rng, 64_000, "clips")[0], minlength=2) / 64_000
  by_video = np.bincount(index.sample(rng, 64_000, "videos")[0], minlength=2) / 64_000
  np.testing.assert_allclose(by_clip, [1 / 32, 31 / 32], atol=0.005)
  np.testing.assert_allclose(by_video, [0.5, 0.5], atol=0.01)
  video, start = index.sample(rng, 1000, "videos")
  assert start[video == 0].max() == 0 and start[video == 1].max() == 30


def test_plans_are_pure_functions_of_seed_and_step():
  index = clip_plans.ClipIndex([30, 40, 50], num_frames=16)
  args = dict(seed=7, batch_size_per_process=8)
  a = clip_plans.train_plan(index, step=3, **args)
  b = clip_plans.train_plan(index, step=3, **args)
  c = clip_plans.train_plan(index, step=4, **args)
  for field in ("video", "frames", "times", "delta_t", "flip"):
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
  assert not np.array_equal(a.frames, c.frames)
  assert not np.array_equal(
    a.frames, clip_plans.train_plan(index, step=3, seed=8, batch_size_per_process=8).frames
  )
  np.testing.assert_allclose(a.delta_t, a.times[:, 1] - a.times[:, 0], atol=1e-6)


def test_process_slices_partition_the_global_batch():
  index = clip_plans.ClipIndex([30, 40, 50], num_frames=16)
  whole = clip_plans.train_plan(index, seed=1, step=5, batch_size_per_process=12)
  parts = [
    clip_plans.train_plan(
      index, seed=1, step=5, batch_size_per_process=4, process_index=p, process_count=3
    )
    for p in range(3)
  ]
  for field in ("video", "frames", "delta_t", "flip"):
    np.testing.assert_array_equal(
      np.concatenate([getattr(p, field) for p in parts]), getattr(whole, field)
    )
  with pytest.raises(ValueError, match="process_index"):
    clip_plans.train_plan(
      index, seed=1, step=0, batch_size_per_process=4, process_index=3, process_count=3
    )


def test_eval_batches_pad_and_shard():
  index = clip_plans.ClipIndex([32, 48], num_frames=16, clip_hop=16)
  videos, starts = clip_plans.eval_clips(index)
  assert list(zip(videos, starts)) == [(0, 0), (0, 16), (1, 0), (1, 16), (1, 32)]
  plans = [
    clip_plans.eval_batches(
      index, videos, starts, batch_size_per_process=2, process_index=p, process_count=2
    )
    for p in range(2)
  ]
  assert len(plans[0]) == len(plans[1]) == 2
  valid = np.concatenate([np.concatenate([plans[0][b].valid, plans[1][b].valid]) for b in range(2)])
  assert valid.tolist() == [True] * 5 + [False] * 3
  first = np.concatenate([plans[0][0].frames, plans[1][0].frames])[:, 0]
  np.testing.assert_array_equal(first, [0, 16, 0, 16])
  drawn, _ = clip_plans.eval_clips(index, num_clips=5, seed=3)
  assert sorted(drawn.tolist()) == [0, 0, 1, 1, 1]  # Distinct windows while they last.
  again, _ = clip_plans.eval_clips(index, num_clips=5, seed=3)
  np.testing.assert_array_equal(drawn, again)
