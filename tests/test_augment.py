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
    alone = augment.apply_frames(frames[:, t : t + 1], params, POLICY)
    np.testing.assert_allclose(pair[:, t : t + 1], alone, atol=1e-6)


def test_color_matches_formula():
  rng = np.random.default_rng(3)
  frames = rng.uniform(-1, 1, (2, 2, 4, 4, 3)).astype(np.float32)
  p = {
    "brightness": np.array([0.1, -0.3], np.float32),
    "saturation": np.array([0.5, 1.7], np.float32),
    "contrast": np.array([0.6, 1.4], np.float32),
  }
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


def _official_cutout_boxes(h, ratio=0.5):
  """The official DiffAugment `rand_cutout` (src/training/diffaugment.py), written out in NumPy
  (c = int(ratio·H + 0.5); offset ~ randint(0, H + 1 − c % 2); rows clamp(offset − c//2 +
  arange(c), 0, H − 1) are zeroed) -> c and {offset: (first zeroed row, last zeroed row)} for
  every offset."""
  c = int(h * ratio + 0.5)
  boxes = {}
  for offset in range(0, h + (1 - c % 2)):
    rows = np.clip(offset - c // 2 + np.arange(c), 0, h - 1)
    boxes[offset] = (int(rows.min()), int(rows.max()))
  return c, boxes


@pytest.mark.parametrize("h,c_expected", [(6, 3), (7, 4), (8, 4)])
def test_cutout_box_range_and_size_match_official_draws(h, c_expected):
  """Many draws through the public path: every box is one the official code can make, and the
  boxes cover the official offset range exactly, including the clipped ones at both edges.

  Independent of augment's helpers (the expectation is NumPy from the formula above). H = 6 gives an
  odd box (c = 3, offsets 0..5), H = 7 checks the +0.5 rounding (c = 4, not 3), H = 8 an even box
  (c = 4, offsets 0..8: one more than H). Uniformity: each offset's frequency within 40 % of 1/n
  (n = 2000 draws per axis, >= 222 expected per offset, so chance failures are astronomically rare).
  """
  c, boxes = _official_cutout_boxes(h)
  assert c == c_expected
  by_box = {box: offset for offset, box in boxes.items()}
  assert len(by_box) == len(boxes)  # an official box identifies its offset
  n = 2000
  x7 = np.ones((n, h, h, 7), np.float32)
  out = np.asarray(augment.augment_pair7(jax.random.key(11), x7, "cutout"))
  np.testing.assert_array_equal(out[..., 6], 1.0)  # Δt plane untouched
  zero = out[..., :6] == 0
  assert np.all(zero == zero[..., :1])  # all channels of both frames share the box
  assert np.all((out[..., :6] == 0) | (out[..., :6] == 1))
  zero = zero[..., 0]
  rows_hit, cols_hit = zero.any(axis=2), zero.any(axis=1)  # [n, H]
  offsets = {0: [], 1: []}
  for b in range(n):
    for axis, hit in ((0, rows_hit[b]), (1, cols_hit[b])):
      idx = np.nonzero(hit)[0]
      assert len(idx) > 0, f"video {b}: no cutout"
      box = (int(idx.min()), int(idx.max()))
      assert len(idx) == box[1] - box[0] + 1, (
        f"video {b}: cutout not contiguous along axis {axis}: {idx}"
      )
      assert box in by_box, (
        f"video {b}: axis {axis} box {box} is not an official box {sorted(by_box)}"
      )
      offsets[axis].append(by_box[box])
    np.testing.assert_array_equal(zero[b], np.outer(rows_hit[b], cols_hit[b]))  # a rectangle
  for axis in (0, 1):
    counts = np.bincount(offsets[axis], minlength=len(boxes))
    print(f"H={h} c={c} axis {axis}: offset counts {counts.tolist()}")
    assert set(offsets[axis]) == set(boxes), (sorted(set(offsets[axis])), sorted(boxes))
    expected = n / len(boxes)
    assert np.all(np.abs(counts - expected) < 0.4 * expected), counts
  # The unclipped boxes are exactly c wide.
  interior = [box for box in boxes.values() if box[0] > 0 and box[1] < h - 1]
  assert interior and all(hi - lo + 1 == c for lo, hi in interior)


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
