"""quantize.to_uint8: each rounding convention pinned on edges and exact ties, NumPy and jax alike."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from digan_jax import quantize
from digan_jax.evaluation import i3d

# Exact float32 values: x = -0.5 gives (x + 1) * 127.5 = 63.75, x = 0 the tie 127.5; +-1.5 clip.
X = np.array([-1.5, -1.0, -0.5, 0.0, 0.5, 0.999, 1.0, 1.5], np.float32)
EXPECTED = {
  # trunc((clip(x) + 1) / 2 * 255)
  "floor": [0, 0, 63, 127, 191, 254, 255, 255],
  # trunc(clip(x * 127.5 + 128)): the tie at x = 0 (127.5) goes up
  "round_half_up": [0, 0, 64, 128, 191, 255, 255, 255],
  # rint((x + 1) * 127.5), clipped: 127.5 goes to the even 128
  "rint": [0, 0, 64, 128, 191, 255, 255, 255],
}


@pytest.mark.parametrize("mode", quantize.MODES)
def test_modes_on_edges_numpy_and_jax(mode):
  host = quantize.to_uint8(X, mode)
  assert isinstance(host, np.ndarray) and host.dtype == np.uint8
  np.testing.assert_array_equal(host, EXPECTED[mode])
  traced = jax.jit(lambda v: quantize.to_uint8(v, mode))(jnp.asarray(X))
  assert traced.dtype == jnp.uint8
  np.testing.assert_array_equal(np.asarray(traced), EXPECTED[mode])


def test_ties_separate_half_up_from_half_even():
  # (x + 1) * 127.5 = k + 0.5 exactly for these x (float32): an even k tells the two apart.
  k = np.arange(0, 255, dtype=np.float32)
  x = (k + 0.5) / np.float32(127.5) - np.float32(1.0)
  exact = (x + np.float32(1.0)) * np.float32(127.5) == k + 0.5
  x, k = x[exact], k[exact]
  assert (k % 2 == 0).any() and (k % 2 == 1).any(), "need ties on both parities"
  np.testing.assert_array_equal(quantize.to_uint8(x, "rint"), np.where(k % 2 == 0, k, k + 1))
  # x * 127.5 + 128 is k + 0.5 + 0.5 up to float error: half up lands on k + 1 for every tie.
  np.testing.assert_array_equal(quantize.to_uint8(x, "round_half_up"), k + 1)
  np.testing.assert_array_equal(quantize.to_uint8(x, "floor"), k)


def test_rint_inverts_the_pipeline_and_i3d_scalings():
  levels = np.arange(256, dtype=np.uint8)
  pipeline_floats = levels.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
  np.testing.assert_array_equal(quantize.to_uint8(pipeline_floats, "rint"), levels)
  unit = i3d.uint8_to_unit_range(levels)
  np.testing.assert_array_equal(np.asarray(quantize.to_uint8(unit, "rint")), levels)
  np.testing.assert_array_equal(np.asarray(quantize.to_uint8(unit, "round_half_up")), levels)


def test_levels_to_uint8_rounds_ties_to_even_and_clips():
  x = np.array([-3.0, 0.5, 1.5, 2.5, 254.5, 255.4, 300.0])
  np.testing.assert_array_equal(quantize.levels_to_uint8(x), [0, 0, 2, 2, 254, 255, 255])


def test_unknown_mode_names_the_valid_ones():
  with pytest.raises(ValueError, match="round_half_up"):
    quantize.to_uint8(X, "round")
