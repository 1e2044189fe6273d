"""Sampling: chunked rendering, seeds, extrapolation/zoom/super-resolution files from a checkpoint."""

import json

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from digan_jax import sampling
from digan_jax.import_official import import_npz
from digan_jax.models import Generator

import tiny_digan

TINY = tiny_digan.tiny_generator_config()


def test_chunked_render_equals_single_pass():
  g = Generator(TINY)
  z = sampling.latents(0, 2, 32)
  zm = sampling.latents(1, 2, 32)
  variables = g.init(jax.random.key(0), z, zm, jnp.zeros((1,)))
  times = sampling.sample_times(7, -0.5, 2.0)
  full = sampling.render(g, variables, z, zm, times)
  chunked = jax.jit(lambda v: sampling.render(g, v, z, zm, times, frames_per_chunk=3))(variables)
  assert chunked.shape == (2, 7, 32, 32, 3)
  np.testing.assert_allclose(np.asarray(chunked), np.asarray(full), atol=1e-5)


def test_latents_do_not_depend_on_count():
  a = sampling.latents(3, 5, 8)
  b = sampling.latents(3, 2, 8)
  np.testing.assert_array_equal(np.asarray(a[:2]), np.asarray(b))
  assert not np.allclose(a[0], sampling.latents(4, 1, 8)[0])


def test_sampling_from_imported_official_checkpoint(
  official_npz_with_distinct_g_ema, tmp_path, monkeypatch
):
  ckpt = tmp_path / "ckpt"
  import_npz(official_npz_with_distinct_g_ema, ckpt)
  from digan_jax import checkpointing
  from digan_jax.models import official

  nets = official.split_networks(official.load_npz(official_npz_with_distinct_g_ema)[0])
  want_ema, not_g = official.convert_generator(nets["G_ema"]), official.convert_generator(nets["G"])

  # The CLI renders the EMA generator (spied on, then rendered for real).
  passed = []
  real_sample_to_dir = sampling.sample_to_dir
  monkeypatch.setattr(
    sampling,
    "sample_to_dir",
    lambda gcfg, g, *a, **k: passed.append(g) or real_sample_to_dir(gcfg, g, *a, **k),
  )
  out = tmp_path / "samples"
  sampling.run(
    [
      "sampling",
      "--checkpoint",
      str(ckpt),
      "--num_videos=2",
      "--num_frames=3",
      "--batch_size=2",
      "--output",
      str(out / "cli"),
      "--t_end=2.0",
    ]
  )
  monkeypatch.undo()
  for name in ("video_0000.mp4", "video_0001.gif", "grid.mp4", "grid.gif", "sampling.json"):
    assert (out / "cli" / name).stat().st_size > 0
  assert json.loads((out / "cli" / "sampling.json").read_text())["t_end"] == 2.0
  # The still picture: one row per video, every frame of these 3-frame videos in it.
  import imageio.v3 as iio  # pylint: disable=g-import-not-at-top

  still = iio.imread(out / "cli" / "frames.png")
  grid = iio.imread(out / "cli" / "grid.gif")  # [T, H, 2W + 2, 3]: videos 0 and 1 side by side
  h, w = grid.shape[1], (grid.shape[2] - 2) // 2
  assert still.shape == (2 * h + 2, 3 * w + 4, 3)
  assert np.abs(still[:h, :w].astype(int) - grid[0, :, :w]).mean() < 4  # GIF palette error
  (used,) = passed
  for a, b in zip(jax.tree.leaves(used), jax.tree.leaves(want_ema)):
    np.testing.assert_array_equal(a, b)
  assert any(
    not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(used), jax.tree.leaves(not_g))
  )

  gcfg, g_ema, _ = checkpointing.restore_generator(ckpt)
  kw = dict(num_videos=2, num_frames=3, t_end=2.0, batch_size=2, formats=("gif",))
  a = sampling.sample_to_dir(gcfg, g_ema, out / "a", **kw)["videos"]
  b = sampling.sample_to_dir(gcfg, g_ema, out / "b", **kw)["videos"]
  c = sampling.sample_to_dir(gcfg, g_ema, out / "c", motion_seed=7, **kw)["videos"]
  assert a.shape == (2, 3, 128, 128, 3)
  np.testing.assert_array_equal(a, b)  # deterministic per seed
  # The motion MLP's input, lrelu(0.25·t·affine(w, z_motion)), is 0 at t = 0, so the t = 0 frame
  # ignores z_motion (official CoordFuser, src/training/layers.py).
  np.testing.assert_array_equal(a[:, 0], c[:, 0])
  # Another motion seed moves the whole picture at t = 1 and 2, not a grey level here and there.
  changed = np.abs(a[:, 1:].astype(int) - c[:, 1:].astype(int))
  frac, mean = float((changed > 2).mean()), float(changed.mean())
  print(
    f"other motion seed, t = 1, 2: {frac:.3f} of the values differ by > 2, mean |diff| {mean:.2f}"
  )
  assert frac > 0.05 and mean > 2.0, (frac, mean)  # measured 0.354 and 17.3; ignoring it gives 0
  zoom = sampling.sample_to_dir(gcfg, g_ema, out / "zoom", zoom=1.5, **kw)["videos"]
  assert zoom.shape == (2, 3, 192, 192, 3)
  np.testing.assert_array_equal(zoom[:, :, 32:160, 32:160], a)
  sr = sampling.sample_to_dir(gcfg, g_ema, out / "sr", scale=2, **{**kw, "num_frames": 1})
  assert sr["frame_size"] == [256, 256] and sr["videos"].shape == (2, 1, 256, 256, 3)
  # x2: close to the normal render at the shared coordinates, with detail of its own inside each
  # 2x2 block (a nearest-upsampled normal render has none).
  video = sr["videos"].astype(float)
  near = np.abs(video[:, :, ::2, ::2] - a[:, :1]).mean()
  far = np.abs(video[:, :, ::2, ::2] - a[::-1, :1]).mean()
  within = video.reshape(2, 1, 128, 2, 128, 2, 3).std(axis=(3, 5)).mean()
  print(
    f"x2 render vs normal render at shared pixels: mean |diff| {near:.2f} (other video {far:.2f}); "
    f"mean spread within 2x2 blocks {within:.2f} grey levels"
  )
  # measured 6.1 vs 124 and 0.33; nearest upsampling gives a spread of exactly 0
  assert near < 0.3 * far and within > 0.05, (near, far, within)


def test_sampling_cli_missing_checkpoint(tmp_path):
  with pytest.raises(SystemExit, match="does not exist"):
    sampling.run(
      ["sampling", "--checkpoint", str(tmp_path / "nope"), "--output", str(tmp_path / "o")]
    )


def _tiny_checkpoint(path, c_dim=0):
  """A checkpoint of an initialised tiny generator (its EMA copy is what the CLI renders)."""
  import dataclasses

  from digan_jax import checkpointing

  gcfg = dataclasses.replace(TINY, c_dim=c_dim)
  g = Generator(gcfg)
  z = sampling.latents(0, 2, gcfg.z_dim)
  labels = jax.nn.one_hot(jnp.arange(2) % c_dim, c_dim) if c_dim else None
  variables = g.init(jax.random.key(0), z, z, jnp.zeros((1,)), labels)
  # A w_avg away from 0, as after training, so that truncation has something to pull towards.
  variables = jax.tree_util.tree_map_with_path(
    lambda p, x: x + 0.5 if "w_avg" in jax.tree_util.keystr(p) else x, variables
  )
  checkpointing.save_networks(path, 0, g=variables, g_ema=variables, d=None, gcfg=gcfg, dcfg=None)
  return path


def _cli(ckpt, out, *extra):
  args = ["sampling", f"--checkpoint={ckpt}", f"--output={out}", "--num_frames=3"]
  sampling.run([*args, "--batch_size=2", "--num_videos=2", *extra])
  return json.loads((out / "sampling.json").read_text())


def _videos(ckpt, tmp_path, **kw):
  """Videos as rendered (the written GIFs are palette-quantised per file)."""
  from digan_jax import checkpointing

  gcfg, g_ema, _ = checkpointing.restore_generator(ckpt)
  kw = dict(num_videos=2, num_frames=3, batch_size=2, formats=("gif",), **kw)
  return sampling.sample_to_dir(gcfg, g_ema, tmp_path / "api", **kw)["videos"]


def test_labels_select_classes_and_an_unconditional_model_refuses_them(tmp_path):
  cond = _tiny_checkpoint(tmp_path / "cond", c_dim=3)
  assert _cli(cond, tmp_path / "default")["labels"] == [0, 1]  # video i is class i mod 3
  assert _cli(cond, tmp_path / "all2", "--labels=2")["labels"] == [2, 2]
  assert _cli(cond, tmp_path / "listed", "--labels=2,0")["labels"] == [2, 0]
  default = _videos(cond, tmp_path)
  np.testing.assert_array_equal(_videos(cond, tmp_path, labels="0,1"), default)
  # Same latents, another class: another video (the label embedding enters the mapping).
  all2 = _videos(cond, tmp_path, labels=2)
  assert np.abs(all2[0].astype(int) - default[0].astype(int)).mean() > 1.0
  np.testing.assert_array_equal(_videos(cond, tmp_path, labels=[2, 1])[1], default[1])
  for bad, message in (
    ("--labels=3", r"out of range: this generator has classes 0..2"),
    ("--labels=0,1,2", "names 3 classes for 2 videos"),
    ("--labels=dog", "expected a class id"),
  ):
    with pytest.raises(SystemExit, match=message):
      _cli(cond, tmp_path / "bad", bad)
  uncond = _tiny_checkpoint(tmp_path / "uncond")
  with pytest.raises(SystemExit, match=r"unconditional \(c_dim=0\): drop --labels"):
    _cli(uncond, tmp_path / "refused", "--labels=1")


def test_truncation_zero_renders_every_video_from_w_avg(tmp_path):
  ckpt = _tiny_checkpoint(tmp_path / "ckpt")
  assert _cli(ckpt, tmp_path / "trunc", "--truncation=0")["truncation_psi"] == 0.0
  free = _videos(ckpt, tmp_path)
  trunc = _videos(ckpt, tmp_path, truncation_psi=0.0)
  # psi = 0 maps every content latent to w_avg; the t = 0 frame ignores the motion latent, so both
  # videos start with the same frame, which they do not without truncation.
  np.testing.assert_array_equal(trunc[1, 0], trunc[0, 0])
  assert np.abs(free[1, 0].astype(int) - free[0, 0].astype(int)).mean() > 1.0
  half = _videos(ckpt, tmp_path, truncation_psi=0.5)
  assert 0 < np.abs(half[0].astype(int) - free[0].astype(int)).mean()


def test_diverse_motion_figure_shares_content_and_parts_with_time(tmp_path):
  ckpt = _tiny_checkpoint(tmp_path / "ckpt")
  out = tmp_path / "motion"
  sampling.run(
    ["sampling", f"--checkpoint={ckpt}", f"--output={out}", "--num_frames=4", "--diverse_motion=3"]
  )
  card = json.loads((out / "diverse_motion.json").read_text())
  print("diverse motion, mean |diff| per frame:", card["mean_abs_difference"])
  diff = card["mean_abs_difference"]
  assert diff[0] == 0.0 and diff[-1] > 0.5, diff  # one content: same first frame, then apart
  figure = iio.imread(out / "diverse_motion.png")
  assert figure.shape == (4 * 34 - 2, 4 * 34 - 2, 3)  # 3 videos + the difference row, 4 times
  assert figure[-32:, :32].max() == 0  # the difference row starts black (t = 0)
  # Video i is content latent 0 of --seed with motion latent i of --motion_seed: the first two
  # rows are the first video of an ordinary sample and that sample with motion seed + 1's video 1.
  kw = dict(num_videos=2, num_frames=4, batch_size=2, formats=("gif",))
  from digan_jax import checkpointing

  gcfg, g_ema, _ = checkpointing.restore_generator(ckpt)
  plain = sampling.sample_to_dir(gcfg, g_ema, tmp_path / "plain", **kw)["videos"]
  np.testing.assert_array_equal(figure[:32, :32], plain[0, 0])
  np.testing.assert_array_equal(figure[:32, -32:], plain[0, -1])
  assert np.abs(figure[34:66, -32:].astype(int) - plain[1, -1].astype(int)).mean() > 1.0
  with pytest.raises(SystemExit, match="at least 2 motion latents"):
    sampling.run(["sampling", f"--checkpoint={ckpt}", f"--output={out}", "--diverse_motion=1"])


def test_mp4_holds_every_frame_in_colour_at_the_given_rate(tmp_path):
  """A red square moving right over a blue ramp, odd sizes: every frame comes back from the H.264
  file (padded to even sides), in RGB order, at the frame rate asked for."""
  import av

  frames = np.zeros((12, 17, 23, 3), np.uint8)
  frames[..., 2] = np.linspace(0, 255, 23).astype(np.uint8)
  for t in range(12):
    frames[t, 4:11, t : t + 7] = (255, 0, 0)
  sampling.write_video(tmp_path / "v.mp4", frames, fps=6)
  back = iio.imread(tmp_path / "v.mp4", plugin="pyav")
  assert back.shape == (12, 18, 24, 3)
  error = np.abs(back[:, :17, :23].astype(int) - frames.astype(int))
  # yuv420p halves the chroma resolution: sharp colour edges blur, everything else is close.
  assert np.median(error) <= 2 and error.mean() < 16, (np.median(error), error.mean())
  red = (back[:, :17, :23, 0] > 128) & (back[:, :17, :23, 2] < 128)
  centre_x = np.array([np.nonzero(m)[1].mean() for m in red])  # the square spans x = t .. t + 6
  np.testing.assert_allclose(centre_x, np.arange(12) + 3, atol=1)
  with av.open(str(tmp_path / "v.mp4")) as container:
    stream = container.streams.video[0]
    assert stream.average_rate == 6 and stream.codec_context.pix_fmt == "yuv420p"
