"""Shapes, parameter counts and the INR properties of the generator and discriminators."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from digan_jax.models import CoordGrid, Discriminator, DiscriminatorConfig, DualDiscriminator
from digan_jax.models import Generator, GeneratorConfig
from digan_jax.models.layers import add_upsampled_nearest2x, minibatch_std

import tiny_digan

TINY = tiny_digan.tiny_generator_config()


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _init_random_biases(variables, key):
  """Fresh-init weights plus random biases, so no property holds by accident of zero biases."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(variables["params"])
  keys = jax.random.split(key, len(leaves))
  out = [
    0.1 * jax.random.normal(k, x.shape) if path[-1].key == "bias" else x
    for (path, x), k in zip(leaves, keys)
  ]
  return {**variables, "params": jax.tree_util.tree_unflatten(treedef, out)}


@pytest.fixture(scope="module")
def tiny():
  g = Generator(TINY)
  key = jax.random.key(0)
  z = jax.random.normal(jax.random.key(1), (2, TINY.z_dim))
  zm = jax.random.normal(jax.random.key(2), (2, TINY.motion_dim))
  variables = g.init(key, z, zm, jnp.zeros((1,)))
  return g, variables, z, zm


def test_paper_parameter_counts():
  g = Generator(GeneratorConfig())
  shapes = jax.eval_shape(
    lambda: g.init(jax.random.key(0), jnp.zeros((1, 512)), jnp.zeros((1, 512)), jnp.zeros((1,)))
  )
  assert _count(shapes["params"]) == 63_538_706
  assert _count(shapes["params"]["mapping"]) == 525_312
  assert _count(shapes["stats"]) == 512  # w_avg is a buffer, not a parameter
  dcfg = DiscriminatorConfig()
  for channels, expected in [(3, 28_389_121), (7, 28_390_145)]:
    d = Discriminator(dcfg)
    dshapes = jax.eval_shape(
      lambda c=channels: d.init(jax.random.key(0), jnp.zeros((4, 128, 128, c)))
    )
    assert _count(dshapes["params"]) == expected
  assert GeneratorConfig().num_ws == 13


def test_coordinate_grid_matches_official_convention():
  grid = CoordGrid().coords(4)
  np.testing.assert_array_equal(grid[0, :, 0], [-1, -0.5, 0, 0.5])
  np.testing.assert_array_equal(grid[:, 0, 1], [0.5, 0, -0.5, -1])
  assert CoordGrid.zoom_out(1.5).shape(32) == (48, 48)
  assert CoordGrid.super_resolution(4).shape(32) == (128, 128)
  with pytest.raises(ValueError, match="multiple of"):
    CoordGrid(-1.1, 1.0).coords(32)


def test_output_shape_and_times_per_video(tiny):
  g, variables, z, zm = tiny
  video = g.apply(variables, z, zm, jnp.array([[0.0, 0.5, 1.0], [-1.0, 2.5, 0.25]]))
  assert video.shape == (2, 3, 32, 32, 3)
  assert bool(jnp.all(jnp.isfinite(video)))
  # Per-video times: video 1's frame at t=0.25 equals a render of only that time.
  single = g.apply(variables, z, zm, jnp.array([[0.0], [0.25]]))
  np.testing.assert_allclose(single[1, 0], video[1, 2], atol=1e-5)
  with pytest.raises(ValueError, match="times must be"):
    g.apply(variables, z, zm, jnp.zeros((3, 2)))


def test_first_frame_does_not_depend_on_motion_at_init(tiny):
  g, variables, z, zm = tiny
  times = jnp.array([0.0, 0.7])
  a = g.apply(variables, z, zm, times)
  b = g.apply(variables, z, -zm + 1.0, times)
  np.testing.assert_array_equal(np.asarray(a[:, 0]), np.asarray(b[:, 0]))
  assert float(jnp.abs(a[:, 1] - b[:, 1]).max()) > 1e-3  # motion does act at t > 0


def test_zeroing_motion_modules_freezes_the_video(tiny):
  g, variables, z, zm = tiny
  variables = _init_random_biases(variables, jax.random.key(5))
  times = jnp.linspace(0.0, 1.0, 4)
  moving = g.apply(variables, z, zm, times)
  assert float(jnp.abs(moving[:, 0] - moving[:, -1]).max()) > 1e-3

  def zero_motion(path, x):
    names = [p.key for p in path]
    is_motion = any(n.endswith("coord_fuser") for n in names) and any(
      n in ("affine", "motion_mlp0", "motion_mlp1") for n in names
    )
    return jnp.zeros_like(x) if is_motion else x

  frozen = {
    **variables,
    "params": jax.tree_util.tree_map_with_path(zero_motion, variables["params"]),
  }
  video = np.asarray(g.apply(frozen, z, zm, times))
  for t in range(1, 4):
    np.testing.assert_array_equal(video[:, t], video[:, 0])


def test_zoom_out_center_equals_normal_render(tiny):
  g, variables, z, zm = tiny
  times = jnp.array([0.0, 0.5])
  normal = np.asarray(g.apply(variables, z, zm, times))
  zoomed = np.asarray(g.apply(variables, z, zm, times, grid=CoordGrid.zoom_out(1.5)))
  assert zoomed.shape == (2, 2, 48, 48, 3)
  np.testing.assert_array_equal(zoomed[:, :, 8:40, 8:40], normal)
  assert np.abs(zoomed[:, :, :8]).max() > 0  # the border is rendered, not padded


def test_super_resolution_render(tiny):
  g, variables, z, zm = tiny
  times = jnp.array([0.0, 0.5])
  normal = np.asarray(g.apply(variables, z, zm, times))
  sr = np.asarray(g.apply(variables, z, zm, times, grid=CoordGrid.super_resolution(2)))
  assert sr.shape == (2, 2, 64, 64, 3)
  up = normal.repeat(2, axis=2).repeat(2, axis=3)
  # The even pixels of the x2 grid share their coordinates with the normal grid at every level,
  # but the lower levels of the network see x2 grids too, so only closeness is expected.
  dist = np.abs(sr - up).mean() / np.abs(up).mean()
  other = np.asarray(g.apply(variables, -z, zm, times, grid=CoordGrid.super_resolution(2)))
  dist_other = np.abs(other - up).mean() / np.abs(up).mean()
  print(
    f"x2 super-resolution vs nearest-upsampled render: mean rel distance {dist:.4f} "
    f"(other latents: {dist_other:.4f})"
  )
  assert dist < 0.5 * dist_other, (dist, dist_other)
  # The x2 render has detail of its own inside each 2x2 block; a nearest-upsampled normal render
  # (zero spread within every block) would pass the closeness check above but not this one.
  blocks = sr.reshape(2, 2, 32, 2, 32, 2, 3)
  within = float(blocks.std(axis=(3, 5)).mean() / sr.std())
  print(f"x2 super-resolution: mean spread within 2x2 blocks / overall std {within:.4f}")
  assert within > 0.005, within  # measured 0.020; nearest upsampling gives exactly 0


def test_bfloat16_compute_close_to_float32(tiny):
  g, variables, z, zm = tiny
  times = jnp.array([0.0, 0.5])
  # Jitted (op-by-op bfloat16 on CPU spends minutes in dispatch), without XLA's backend
  # optimisations (compiling dominates; they do not change bfloat16 rounding).
  jit = functools.partial(jax.jit, compiler_options=tiny_digan.COMPILER_OPTIONS)
  ref = np.asarray(jit(g.apply)(variables, z, zm, times))
  g16 = Generator(TINY, dtype=jnp.bfloat16)
  out = jit(g16.apply)(variables, z, zm, times)
  assert out.dtype == jnp.float32
  rel = np.abs(np.asarray(out) - ref).max() / np.abs(ref).max()
  print(f"bfloat16 vs float32 generator: max abs error / max |output| = {rel:.4g}")
  assert 0 < rel < 0.05, rel
  dcfg = DiscriminatorConfig(resolution=32, channel_base=256, channel_max=16)
  x = jax.random.normal(jax.random.key(3), (4, 32, 32, 7))
  d = DualDiscriminator(dcfg)
  dv = d.init(jax.random.key(4), x)
  m32, i32 = jit(d.apply)(dv, x)
  m16, i16 = jit(DualDiscriminator(dcfg, dtype=jnp.bfloat16).apply)(dv, x)
  # bfloat16 keeps ~3 significant digits per matmul; logits at init are small (|l| ~ 0.05).
  for lo, hi in [(m16, m32), (i16, i32)]:
    rel = float(jnp.abs(lo - hi).max() / jnp.abs(hi).max())
    assert 0 < rel < 0.15, rel


def test_class_conditional_networks():
  cfg = dataclasses.replace(TINY, c_dim=3)
  g = Generator(cfg)
  z = jax.random.normal(jax.random.key(1), (2, cfg.z_dim))
  zm = jax.random.normal(jax.random.key(2), (2, cfg.motion_dim))
  labels = jax.nn.one_hot(jnp.array([0, 2]), 3)
  variables = g.init(jax.random.key(0), z, zm, jnp.zeros((1,)), labels)
  a = g.apply(variables, z, zm, jnp.zeros((1,)), labels)
  b = g.apply(variables, z, zm, jnp.zeros((1,)), labels[::-1])
  assert float(jnp.abs(a - b).max()) > 1e-4
  with pytest.raises(ValueError, match="class-conditional"):
    g.apply(variables, z, zm, jnp.zeros((1,)))
  dcfg = DiscriminatorConfig(resolution=32, channel_base=256, channel_max=16, c_dim=3)
  d = DualDiscriminator(dcfg)
  x = jax.random.normal(jax.random.key(3), (4, 32, 32, 7))
  lab4 = jax.nn.one_hot(jnp.array([0, 1, 2, 0]), 3)
  dv = d.init(jax.random.key(4), x, lab4)
  m, i = d.apply(dv, x, lab4)
  assert m.shape == (4, 1) and i.shape == (8, 1)
  m2, i2 = d.apply(dv, x, lab4[::-1])
  print(
    f"conditional D: logit change with other labels: motion {float(jnp.abs(m - m2).max()):.3g}, "
    f"image {float(jnp.abs(i - i2).max()):.3g}"
  )
  assert float(jnp.abs(m - m2).max()) > 1e-6
  assert float(jnp.abs(i - i2).max()) > 1e-6
  # D_I gets each video's label for both of its frames, in (b t) order (official: repeated).
  frames = (
    np.asarray(x[..., :6]).reshape(4, 32, 32, 2, 3).transpose(0, 3, 1, 2, 4).reshape(8, 32, 32, 3)
  )
  image_d = lambda module, f, lab: module.image_d(f, lab)
  repeated = d.apply(dv, frames, jnp.repeat(lab4, 2, axis=0), method=image_d)
  tiled = d.apply(dv, frames, jnp.tile(lab4, (2, 1)), method=image_d)
  np.testing.assert_allclose(np.asarray(i), np.asarray(repeated), rtol=1e-6, atol=1e-6)
  assert float(jnp.abs(i - tiled).max()) > 1e-6


def test_minibatch_std_uses_strided_global_groups():
  x = jax.random.normal(jax.random.key(0), (8, 4, 4, 3))
  out = np.asarray(minibatch_std(x, 4))
  xs = np.asarray(x, np.float64)
  n = 8 // 4
  for i in range(8):
    members = xs[[g * n + i % n for g in range(4)]]
    expected = np.sqrt(members.var(axis=0) + 1e-8).mean()
    np.testing.assert_allclose(out[i, :, :, 3], expected, rtol=1e-5)
  np.testing.assert_array_equal(out[..., :3], np.asarray(x))
  with pytest.raises(ValueError, match="divisible"):
    minibatch_std(x[:6], 4)


def test_motion_discriminator_reads_both_frames_and_delta_t():
  """D_M's input is [frame_lo, frame_hi, Δt plane]; changing Δt alone or the second frame alone
  changes its logits; the image D gets the two frames of each video in (b t) order."""
  from digan_jax.models.discriminator import pack_pair, split_frames

  d = DualDiscriminator(
    DiscriminatorConfig(resolution=16, channel_base=128, channel_max=16, mbstd_group_size=2)
  )
  f_lo, f_hi = jax.random.uniform(jax.random.key(1), (2, 4, 16, 16, 3), minval=-1, maxval=1)
  dt = jnp.array([0.1, 0.4, 0.7, 1.0])
  x7 = pack_pair(f_lo, f_hi, dt)
  np.testing.assert_array_equal(x7[..., 6], np.broadcast_to(dt[:, None, None], (4, 16, 16)))
  frames = np.asarray(split_frames(x7))  # (b t) order: video 0 lo, video 0 hi, video 1 lo, ...
  np.testing.assert_array_equal(frames[0::2], f_lo)
  np.testing.assert_array_equal(frames[1::2], f_hi)
  variables = d.init(jax.random.key(0), x7)
  motion = lambda x: np.asarray(d.apply(variables, x, method=DualDiscriminator.motion))
  base = motion(x7)
  by_dt = np.abs(motion(pack_pair(f_lo, f_hi, dt[::-1])) - base).max()
  by_frame = np.abs(motion(pack_pair(f_lo, f_lo, dt)) - base).max()
  print(f"D_M logit change: other Δt {by_dt:.3g}, second frame replaced {by_frame:.3g}")
  assert by_dt > 1e-4 and by_frame > 1e-4


def test_discriminator_rejects_wrong_shapes():
  d = DualDiscriminator(DiscriminatorConfig(resolution=32, channel_base=256, channel_max=16))
  with pytest.raises(ValueError, match="expects"):
    d.init(jax.random.key(0), jnp.zeros((2, 16, 16, 7)))
  with pytest.raises(ValueError, match="7 channels"):
    d.init(jax.random.key(0), jnp.zeros((2, 32, 32, 6)))


def test_remat_keeps_parameters_outputs_and_gradients(tiny):
  """Rematerialised G (FMM layers, nothing_saveable) and D (blocks, dots_saveable): the same
  parameter tree, outputs and gradients (recomputation only reorders float32 work), and the
  recomputation is really in the program."""
  g, variables, z, zm = tiny
  times = jnp.array([0.0, 0.5])
  dcfg = DiscriminatorConfig(resolution=32, channel_base=256, channel_max=16)
  x = jax.random.normal(jax.random.key(3), (4, 32, 32, 7))
  d = DualDiscriminator(dcfg)
  dv = d.init(jax.random.key(4), x)
  jit = functools.partial(jax.jit, compiler_options=tiny_digan.COMPILER_OPTIONS)

  def losses(gen, disc):
    def loss(gv, dv):
      frames = gen.apply(gv, z, zm, times)
      m, i = disc.apply(dv, x + jnp.mean(frames))
      return jnp.sum(m) + jnp.sum(i) + jnp.sum(frames**2)

    return jit(jax.value_and_grad(loss, argnums=(0, 1)))

  g2 = Generator(TINY, remat="nothing_saveable")
  d2 = DualDiscriminator(dcfg, remat="dots_saveable")
  assert jax.tree.structure(g2.init(jax.random.key(0), z, zm, times)) == jax.tree.structure(
    variables
  )
  assert jax.tree.structure(d2.init(jax.random.key(4), x)) == jax.tree.structure(dv)
  (v1, g1), (v2, gr2) = losses(g, d)(variables, dv), losses(g2, d2)(variables, dv)
  np.testing.assert_allclose(v2, v1, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(gr2), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6 * float(np.abs(b).max()))
  for net, args in ((g2, (variables, z, zm, times)), (d2, (dv, x))):
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda v, *a: jnp.sum(net.apply(v, *a)[0])))(*args))
    assert "remat" in jaxpr or "checkpoint" in jaxpr, type(net).__name__
  with pytest.raises(ValueError, match="choose one of"):
    Generator(TINY, remat="everything").init(jax.random.key(0), z, zm, times)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_add_upsampled_equals_adding_the_nearest_upsampled_array(dtype):
  """The blockwise broadcast add is the official `x + up2(low)` exactly, in both precisions."""
  x = jax.random.normal(jax.random.key(0), (2, 3, 8, 6, 5)).astype(dtype)
  low = jax.random.normal(jax.random.key(1), (2, 3, 4, 3, 5)).astype(dtype)
  upsampled = jnp.repeat(jnp.repeat(low, 2, axis=-3), 2, axis=-2)
  out = add_upsampled_nearest2x(x, low)
  assert out.dtype == dtype and out.shape == x.shape
  np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(x + upsampled, np.float32))
