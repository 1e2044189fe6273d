"""DiffAugment: per-video parameters shared by both frames, per-frame statistics, Δt untouched."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from digan_jax import augment

POLICY = "color,translation,cutout"


def _x7(b=4, h=16, seed=0):
  rng = np.random.default_rng(seed)
  x7 = rng.uniform(-1, 1, (b, h, h, 7)).astype(np.float32)
  x7[..., 6] = rng.uniform(0, 1, (b, 1, 1))  # the Δt plane is constant per video
  return x7


def test_delta_t_plane_untouched_and_shapes_kept():
  x7 = _x7()
  out = augment.augment_pair7(jax.random.key(0), x7, POLICY)
  assert out.shape == x7.shape
  np.testing.assert_array_equal(out[..., 6], x7[..., 6])
  assert not np.allclose(out[..., :6], x7[..., :6])


def test_parameters_shared_by_the_two_frames():
  x7 = _x7()
  x7[..., 3:6] = x7[..., 0:3]  # identical frames stay identical
  out = np.asarray(augment.augment_pair7(jax.random.key(1), x7, POLICY))
  np.testing.assert_array_equal(out[..., 0:3], out[..., 3:6])
  # Different frames: the pair result equals augmenting each frame alone with the same parameters
  # (statistics per frame, random factors per video).
  x7 = _x7(seed=2)
  params = augment.sample_params(jax.random.key(2), 4, 16, POLICY)
  frames = jnp.moveaxis(x7[..., :6].reshape(4, 16, 16, 2, 3), 3, 1)
  pair = augment.apply_frames(frames, params, POLICY)
  for t in range(2):
    alone = augment.apply_frames(frames[:, t:t + 1], params, POLICY)
    np.testing.assert_allclose(pair[:, t:t + 1], alone, atol=1e-6)


def test_color_matches_formula():
  rng = np.random.default_rng(3)
  frames = rng.uniform(-1, 1, (2, 2, 4, 4, 3)).astype(np.float32)
  p = {"brightness": np.array([0.1, -0.3], np.float32), "saturation": np.array([0.5, 1.7], np.float32),
       "contrast": np.array([0.6, 1.4], np.float32)}
  out = np.asarray(augment.apply_frames(frames, p, "color"))
  for b in range(2):
    for t in range(2):
      x = frames[b, t] + p["brightness"][b]
      m = x.mean(-1, keepdims=True)
      x = (x - m) * p["saturation"][b] + m
      m = x.mean()
      x = (x - m) * p["contrast"][b] + m
      np.testing.assert_allclose(out[b, t], x, atol=1e-6)


def test_translation_shifts_with_zero_fill():
  frames = np.arange(2 * 2 * 8 * 8 * 3, dtype=np.float32).reshape(2, 2, 8, 8, 3) + 1
  shifts = np.array([[1, -2], [0, 3]], np.int32)
  out = np.asarray(augment.apply_frames(frames, {"translate": shifts}, "translation"))
  for b, (dh, dw) in enumerate(shifts):
    expected = np.zeros_like(frames[b])
    for i in range(8):
      for j in range(8):
        if 0 <= i + dh < 8 and 0 <= j + dw < 8:
          expected[:, i, j] = frames[b, :, i + dh, j + dw]
    np.testing.assert_array_equal(out[b], expected)


def test_cutout_matches_official_box():
  """Official: offset ~ U[0, H + 1 - c % 2), box rows clamp(offset - c//2 + [0, c)) zeroed."""
  h, ratio = 8, 0.5
  c = augment.shift_size(h, ratio)
  frames = np.ones((3, 2, h, h, 3), np.float32)
  params = augment.sample_params(jax.random.key(5), 3, h, "cutout", cutout=ratio)
  out = np.asarray(augment.apply_frames(frames, params, "cutout", cutout=ratio))
  for b in range(3):
    off = np.asarray(params["cutout"][b]) + c // 2  # the official offset
    mask = np.ones((h, h), np.float32)
    rows = np.clip(np.arange(c) + off[0] - c // 2, 0, h - 1)
    cols = np.clip(np.arange(c) + off[1] - c // 2, 0, h - 1)
    mask[np.ix_(rows, cols)] = 0
    np.testing.assert_array_equal(out[b, 0, ..., 0], mask)
    np.testing.assert_array_equal(out[b, 1, ..., 0], mask)


def test_random_ranges_per_video():
  p = augment.sample_params(jax.random.key(7), 4096, 128, "color,translation")
  shifts = np.asarray(p["translate"])
  assert shifts.min() == -16 and shifts.max() == 16  # ⌊128/8 + 0.5⌋
  assert 0.0 <= float(p["saturation"].min()) and float(p["saturation"].max()) < 2.0
  assert 0.5 <= float(p["contrast"].min()) and float(p["contrast"].max()) < 1.5
  assert -0.5 <= float(p["brightness"].min()) and float(p["brightness"].max()) < 0.5


def test_differentiable_translation_gradient_is_the_valid_mask():
  frames = jnp.ones((1, 2, 8, 8, 3))
  params = {"translate": jnp.array([[2, -1]], jnp.int32)}
  g = jax.grad(lambda x: jnp.sum(augment.apply_frames(x, params, "translation")))(frames)
  expected = np.zeros((8, 8))
  expected[2:, :7] = 1  # sources i + 2 and j - 1 inside the frame
  np.testing.assert_array_equal(g[0, 0, ..., 0], expected)


def test_empty_policy_is_identity_and_bad_policy_fails():
  x7 = _x7()
  np.testing.assert_array_equal(augment.augment_pair7(jax.random.key(0), x7, ""), x7)
  with pytest.raises(ValueError, match="unknown DiffAugment op"):
    augment.parse_policy("color,flip")
