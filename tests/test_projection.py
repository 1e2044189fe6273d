"""Projection and prediction (paper Fig. 5): the projector's schedules, the two baselines, and the CLI
on a tiny model. The quality margin over the baselines is measured on a trained model in
tests/test_motion.py (a random generator's videos barely move, so copying a frame wins there)."""

import json

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from digan_jax import checkpointing, projection, sampling
from digan_jax.models import factory

import tiny_digan


def test_projector_schedules_follow_stylegan2():
  cfg = projection.ProjectionConfig(num_steps=100)
  lr = np.array([float(projection.lr_at(cfg, i / 100)) for i in range(100)])
  assert lr[0] == 0.0 and np.isclose(lr[5], cfg.learning_rate)  # linear ramp-up over 5 %
  assert np.isclose(lr[2], 0.4 * cfg.learning_rate)
  assert np.allclose(lr[5:75], cfg.learning_rate)  # flat until the last 25 %
  assert np.all(np.diff(lr[75:]) < 0) and lr[-1] < 0.01 * cfg.learning_rate  # cosine ramp-down
  noise = np.array([float(projection.noise_at(cfg, i / 100)) for i in range(100)])
  assert np.isclose(noise[0], cfg.noise_factor) and np.isclose(noise[25], cfg.noise_factor / 2.25)
  assert np.all(noise[75:] == 0)
  with pytest.raises(ValueError, match="loss='huber'"):
    projection.ProjectionConfig(loss="huber")
  with pytest.raises(ValueError, match="perceptual='vgg'"):
    projection.ProjectionConfig(perceptual="vgg")


def test_baselines_copy_the_nearest_frame_and_blend_linearly():
  # Pixels that change linearly in time: the blend is exact (inside and outside the given
  # frames), the copy is off by the slope times the distance to the nearest given frame.
  idx = np.arange(16)
  video = np.broadcast_to((-0.6 + 0.05 * idx)[None, :, None, None, None], (2, 16, 4, 4, 3))
  given_idx, target = [6, 7, 8], list(range(3, 12))
  given = video[:, given_idx]
  np.testing.assert_allclose(
    projection.linear_blend(given, given_idx, target), video[:, target], atol=1e-6
  )
  copy = projection.nearest_frame(given, given_idx, target)
  np.testing.assert_allclose(copy[:, 0], video[:, 6])
  np.testing.assert_allclose(copy[:, -1], video[:, 8])
  psnr = projection.psnr(copy, video[:, target])
  assert psnr.shape == (2, 9) and psnr[0, 3] > 100 and psnr[0, 0] < psnr[0, 2]
  # Intermediate frames from the first and last three: both ends bracket the gap.
  ends = [0, 1, 2, 13, 14, 15]
  blend = projection.linear_blend(video[:, ends], ends, list(range(16)))
  np.testing.assert_allclose(blend, video, atol=1e-6)


def test_more_starts_keep_each_videos_best_descent():
  """Without latent noise every row descends on its own: start 0 of a multi-start run is the
  single-start run, so each video's kept loss is at most the single start's, and it is the lowest
  final loss of its starts."""
  config = tiny_digan.tiny_config(resolution=16)
  g, _ = factory.build(config.model)
  z, zm = sampling.latents(3, 2, 16), sampling.latents(4, 2, 16)
  variables = g.init(jax.random.key(0), z, zm, jnp.zeros((1,)))
  frames = sampling.render(g, variables, sampling.latents(5, 2, 16), zm, np.array([0.4, 0.5]))
  kw = dict(num_steps=30, w_avg_samples=64, noise_factor=0.0)
  run = lambda n: jax.jit(
    lambda v: projection.project(
      g, v, frames, [0.4, 0.5], projection.ProjectionConfig(num_starts=n, **kw)
    )
  )(variables)
  _, _, one = run(1)
  w, _, four = run(4)
  assert four.shape == one.shape == (30, 2) and w.shape == (2, 16)
  assert np.all(np.asarray(four[-1]) <= np.asarray(one[-1]) * (1 + 1e-4))
  assert np.any(np.asarray(four[-1]) < 0.99 * np.asarray(one[-1]))  # a random start won somewhere
  print(f"final loss per video: 1 start {np.asarray(one[-1])}, 4 starts {np.asarray(four[-1])}")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
  """A tiny 16² generator and discriminator saved as a checkpoint, and a 16-frame video of it."""
  config = tiny_digan.tiny_config(resolution=16)
  g, d = factory.build(config.model)
  gcfg = g.config
  z, zm = sampling.latents(3, 1, gcfg.z_dim), sampling.latents(4, 1, gcfg.motion_dim)
  g_vars = g.init(jax.random.key(0), z, zm, jnp.zeros((1,)))
  d_vars = d.init(jax.random.key(1), jnp.zeros((2, 16, 16, 7)))
  root = tmp_path_factory.mktemp("projection")
  ckpt = root / "ckpt"
  checkpointing.save_networks(ckpt, 7, g=g_vars, g_ema=g_vars, d=d_vars, gcfg=gcfg, dcfg=d.config)
  frames = sampling.render(g, g_vars, z, zm, sampling.sample_times(16))
  video = np.asarray(
    jnp.clip(jnp.rint((frames[0] + 1) * 127.5), 0, 255).astype(jnp.uint8)
  )  # [16, 16, 16, 3]
  folder = root / "frames"
  folder.mkdir()
  for i, frame in enumerate(video):
    iio.imwrite(folder / f"{i:03d}.png", frame)
  return ckpt, folder


def test_projection_cli_writes_the_card_and_the_side_by_side(tiny_checkpoint, tmp_path, capsys):
  ckpt, folder = tiny_checkpoint
  out = tmp_path / "out"
  base = ["projection", f"--checkpoint={ckpt}", f"--video={folder}", "--num_steps=40"]
  base += ["--w_avg_samples=64", "--num_starts=2"]
  assert projection.run([*base, f"--output={out}", "--given=6,7,8", "--predict=3:12,20"]) == 0
  card = json.loads((out / "projection.json").read_text())
  assert card["checkpoint_step"] == 7 and card["given"] == [6, 7, 8]
  assert card["predicted"] == [3, 4, 5, 6, 7, 8, 9, 10, 11, 20]
  assert np.isclose(card["times"]["20"], 20 / 15)  # beyond the clip: extrapolated in time
  assert card["projector"]["num_steps"] == 40 and len(card["loss_curve"]) == 40
  assert card["perceptual_features"].startswith("none")
  # PSNR where the ground truth is known (frame 20 is past the 16-frame video), for all three.
  assert set(card["psnr_db"]) == {"projection", "nearest_frame", "linear_blend"}
  assert sorted(map(int, card["psnr_db"]["projection"])) == list(range(3, 12))
  assert sorted(map(int, card["psnr_db"]["linear_blend"])) == [3, 4, 5, 9, 10, 11]
  assert card["loss_curve"][-1] < card["loss_curve"][0]
  panels = iio.imread(out / "projection.gif")
  assert panels.shape[:3] == (10, 16, 3 * 16 + 4)
  assert panels[0, :, :16].max() == 0 and panels[3, :, :16].max() > 0  # frame 3 not given, 6 is
  assert panels[-1, :, -16:].max() == 0  # no ground truth for frame 20
  saved = np.load(out / "projection.npz")
  assert saved["predicted"].shape == (10, 16, 16, 3) and saved["w"].shape == (1, 16)
  assert (out / "projection.mp4").stat().st_size > 0
  capsys.readouterr()

  # The discriminator's features as the perceptual term (the only setting that differs from the
  # first run): named in the card, changes the result.
  out_d = tmp_path / "out_d"
  args = [*base, f"--output={out_d}", "--perceptual=discriminator", "--perceptual_weight=10"]
  assert projection.run(args + ["--predict=3:12,20"]) == 0
  card_d = json.loads((out_d / "projection.json").read_text())
  assert "discriminator" in card_d["perceptual_features"]
  assert card_d["loss_curve"] != card["loss_curve"]

  for extra, message in (
    (["--given=6,7,30"], "has only 16 frames"),
    (["--given=a"], "expected indices"),
    (["--loss=huber"], "loss='huber'"),
    (["--label=2"], "unconditional"),
  ):
    with pytest.raises(SystemExit, match=message):
      projection.run([*base, f"--output={tmp_path / 'err'}", *extra])
  with pytest.raises(SystemExit, match="not found"):
    projection.run([*base[:2], f"--video={tmp_path / 'none.mp4'}", f"--output={tmp_path}"])
