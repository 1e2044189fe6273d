"""Parity with the official PyTorch DIGAN networks (../shared/fixtures/official_digan_128.npz).

The networks are configured from the fixture's `meta_json` alone, so any fixture of this format
(other resolutions, widths, batch sizes, seeds, c_dim > 0 with labels) is checked the same way:
point DIGAN_PARITY_FIXTURE at it.
"""

import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from digan_jax.models import official
from digan_jax.models.discriminator import DualDiscriminator
from digan_jax.models.generator import Generator

# About 2x / 10x / 10x the measured errors (video 4.8e-5, ws 2.6e-6, logits 1.1e-6 relative).
VIDEO_ATOL = 1e-4
WS_ATOL = 3e-5
LOGIT_RTOL = 1e-5


@pytest.fixture(scope="module")
def fixture():
  path = os.environ.get("DIGAN_PARITY_FIXTURE")
  if path is None:
    path = (
      pathlib.Path(__file__).resolve().parents[1].parent / "shared/fixtures/official_digan_128.npz"
    )
  path = pathlib.Path(path)
  if not path.is_file():
    pytest.skip(f"parity fixture not found at {path} (set DIGAN_PARITY_FIXTURE or place ../shared)")
  arrays, meta = official.load_npz(path)
  gcfg, dcfg = official.configs_from_meta(meta)
  nets = official.split_networks(arrays)
  labels = arrays["in/c"] if gcfg.c_dim else None
  return dict(arrays=arrays, gcfg=gcfg, dcfg=dcfg, nets=nets, labels=labels)


@pytest.fixture(scope="module")
def generator(fixture):
  return Generator(fixture["gcfg"]), official.convert_generator(fixture["nets"]["G"])


def _nchw_video(video):
  return np.asarray(video).transpose(0, 1, 4, 2, 3)


@pytest.mark.parametrize("psi,key", [(1.0, "out/ws"), (0.7, "out/ws_trunc0.7")])
def test_mapping(fixture, generator, psi, key):
  g, variables = generator
  with jax.default_matmul_precision("highest"):
    w = g.apply(variables, fixture["arrays"]["in/z"], fixture["labels"], psi, method=Generator.map)
  ref = fixture["arrays"][key]
  assert ref.shape[1] == fixture["gcfg"].num_ws
  ws = np.broadcast_to(np.asarray(w)[:, None], ref.shape)
  print(f"measured: {key} max abs error {np.abs(ws - ref).max():.3g}")
  np.testing.assert_allclose(ws, ref, rtol=0, atol=WS_ATOL)


@pytest.mark.parametrize("name", ["t16", "tfree"])
def test_video(fixture, generator, name):
  g, variables = generator
  a = fixture["arrays"]
  with jax.default_matmul_precision("highest"):
    video = jax.jit(g.apply)(
      variables, a["in/z"], a["in/z_motion"], a[f"in/times_{name}"], fixture["labels"]
    )
  ref = a[f"out/video_{name}"]
  err = np.abs(_nchw_video(video) - ref).max()
  print(f"measured: video_{name} max abs error {err:.3g}")
  assert err < VIDEO_ATOL, f"max abs error {err}"


def test_discriminator_logits(fixture):
  a = fixture["arrays"]
  d = DualDiscriminator(fixture["dcfg"])
  variables = official.convert_dual_discriminator(fixture["nets"]["D"])
  x7 = a["in/d_input"].transpose(0, 2, 3, 1)
  with jax.default_matmul_precision("highest"):
    motion, image = jax.jit(d.apply)(variables, x7, fixture["labels"])
  for got, key in ((motion, "out/d_motion_logits"), (image, "out/d_image_logits")):
    rel = np.abs(np.asarray(got) - a[key]).max() / np.abs(a[key]).max()
    print(f"measured: {key} max error / max |logit| {rel:.3g}")
  for got, key in ((motion, "out/d_motion_logits"), (image, "out/d_image_logits")):
    rel = np.abs(np.asarray(got) - a[key]).max() / np.abs(a[key]).max()
    assert rel < LOGIT_RTOL, (key, rel)


def test_converted_tree_matches_fresh_init(fixture):
  """Every imported tensor lands on a parameter of the same shape, and none is missing."""
  g = Generator(fixture["gcfg"])
  a = fixture["arrays"]
  shapes = jax.eval_shape(
    lambda: g.init(
      jax.random.key(0), a["in/z"], a["in/z_motion"], jnp.zeros((1,)), fixture["labels"]
    )
  )
  converted = official.convert_generator(fixture["nets"]["G"])
  assert jax.tree.map(lambda x: x.shape, shapes) == jax.tree.map(lambda x: x.shape, converted)
  d = DualDiscriminator(fixture["dcfg"])
  dshapes = jax.eval_shape(
    lambda: d.init(jax.random.key(0), a["in/d_input"].transpose(0, 2, 3, 1), fixture["labels"])
  )
  dconv = official.convert_dual_discriminator(fixture["nets"]["D"])
  assert jax.tree.map(lambda x: x.shape, dshapes) == jax.tree.map(lambda x: x.shape, dconv)


def test_configs_inferred_from_shapes_match_meta(fixture):
  gcfg, dcfg = official.infer_configs(
    fixture["nets"], mbstd_group_size=fixture["dcfg"].mbstd_group_size
  )
  assert gcfg == fixture["gcfg"]
  assert dcfg == fixture["dcfg"]
