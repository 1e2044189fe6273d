"""INR-weight interpolation (paper Fig. 9): φ(z, z_M), renders from φ, the λ path and its CLI."""

import json

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from digan_jax import interpolation, sampling
from digan_jax.models import Generator

import tiny_digan

TINY = tiny_digan.tiny_generator_config()


@pytest.fixture(scope="module")
def tiny():
  g = Generator(TINY)
  z, zm = sampling.latents(0, 2, 32), sampling.latents(1, 2, 32)
  variables = g.init(jax.random.key(0), z, zm, jnp.zeros((1,)))
  return g, variables, z, zm


def test_render_from_phi_equals_the_render_and_lambda_ends_are_the_videos(tiny):
  g, variables, z, zm = tiny
  assert set(variables) == {"params", "stats"}  # φ is computed per call, never a model variable
  times = sampling.sample_times(4)
  phi = jax.jit(lambda v: interpolation.inr_params(g, v, z, zm))(variables)
  fuser = phi["synthesis"]["b4_coord_fuser"]
  assert fuser["xyaffine"].shape[0] == 2 and fuser["affine"].shape[0] == 2
  assert phi["synthesis"]["b32_conv1"]["weight"].shape == (2, 8, 8)  # per-video FMM weight
  direct = np.asarray(sampling.render(g, variables, z, zm, times))
  from_phi = np.asarray(
    jax.jit(lambda v, p: interpolation.render_inr(g, v, p, times))(variables, phi)
  )
  np.testing.assert_allclose(from_phi, direct, atol=1e-5)

  path = np.asarray(
    jax.jit(lambda v: interpolation.interpolate(g, v, z, zm, [0.0, 0.5, 1.0], times))(variables)
  )
  # λ = 0 and 1 give φ1 and φ2 bit for bit; their renders match up to float reassociation (a
  # batch of 3 compiles to another program than a batch of 2).
  first, second = (jax.tree.map(lambda x, i=i: x[i : i + 1], phi) for i in (0, 1))
  for lam, want in ((0.0, first), (1.0, second)):
    got = interpolation.blend(first, second, lam)
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, got, want)))
  np.testing.assert_allclose(path[0], from_phi[0], atol=1e-5)
  np.testing.assert_allclose(path[2], from_phi[1], atol=1e-5)
  # Halfway through φ is a video of its own, not the cross-fade of the two videos' pixels.
  crossfade = 0.5 * (direct[0] + direct[1])
  to_fade = float(np.abs(path[1] - crossfade).mean())
  ends = float(np.abs(direct[0] - direct[1]).mean())
  print(f"λ = 0.5: mean |video - cross-fade| {to_fade:.3f}; between the ends {ends:.3f}")
  assert to_fade > 0.05 * ends, (to_fade, ends)


def test_render_from_phi_in_time_chunks_equals_one_pass(tiny):
  """Long interpolations render a few frames at a time (as sampling does): same frames."""
  g, variables, z, zm = tiny
  times = sampling.sample_times(5, 0.0, 2.0)
  phi = jax.jit(lambda v: interpolation.inr_params(g, v, z, zm))(variables)
  whole, chunked = (
    np.asarray(
      jax.jit(lambda v, p, c=c: interpolation.render_inr(g, v, p, times, frames_per_chunk=c))(
        variables, phi
      )
    )
    for c in (None, 2)
  )
  assert chunked.shape == whole.shape == (2, 5, 32, 32, 3)
  np.testing.assert_allclose(chunked, whole, atol=1e-5)


def test_interpolate_cli_writes_the_fig9_grid(tmp_path):
  from digan_jax import checkpointing

  g = Generator(TINY)
  z = sampling.latents(0, 2, 32)
  variables = g.init(jax.random.key(0), z, z, jnp.zeros((1,)))
  ckpt = tmp_path / "ckpt"
  checkpointing.save_networks(ckpt, 0, g=variables, g_ema=variables, d=None, gcfg=TINY, dcfg=None)
  out = tmp_path / "fig9"
  base = ["sampling", f"--checkpoint={ckpt}", f"--output={out}", "--num_frames=4"]
  sampling.run([*base, "--interpolate=3"])
  card = json.loads((out / "interpolation.json").read_text())
  assert card["lambdas"] == [0.0, 0.5, 1.0]
  figure = iio.imread(out / "interpolation.png")
  assert figure.shape == (3 * 34 - 2, 4 * 34 - 2, 3)  # one row per λ, one column per frame
  plain = sampling.sample_to_dir(
    TINY, variables, tmp_path / "plain", num_videos=2, num_frames=4, formats=("gif",)
  )["videos"]
  # Rows λ = 0 and 1 are videos 0 and 1 of the same seeds (within one grey level of rounding).
  assert np.abs(figure[:32, :32].astype(int) - plain[0, 0]).max() <= 1
  assert np.abs(figure[-32:, -32:].astype(int) - plain[1, -1]).max() <= 1
  assert (out / "interpolation.gif").stat().st_size > 0
  for extra, message in (
    (["--interpolate=1"], "at least 2 steps"),
    (["--interpolate=3", "--diverse_motion=2"], "pass one"),
  ):
    with pytest.raises(SystemExit, match=message):
      sampling.run([*base, *extra])
