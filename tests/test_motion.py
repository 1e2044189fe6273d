"""DIGAN learns motion: on videos of one disc moving at a known velocity, a tiny DIGAN's generated
videos show the disc and move it between t = 0 and t = 1 in the data's direction at the data's
speed. The same run with G's motion path frozen at its initial weights (train.freeze) fails the
speed check, so the speed comes from the motion path learning, not from the rest of the network.
"""

import jax
import numpy as np
import pytest

import tiny_digan
from digan_jax import optim, projection, sampling, sharding
from digan_jax import steps as steps_lib

RES = 16
RADIUS = 2.5  # pixels
VELOCITY = np.array([6.0, 0.0])  # pixels per unit time (t in [0, 1] spans a 16-frame clip)
SPEED_TOLERANCE = 0.35  # |measured - data| / data
MOTION_PATH = "g/.*coord_fuser/(affine|motion_mlp)"
STEPS = 500
BATCH = 16


def disc_frames(centers: np.ndarray) -> np.ndarray:
  """[..., 2] disc centres (x, y in pixels) -> frames [..., RES, RES, 3] in [-1, 1]: a bright
  disc with a one-pixel soft edge on a dark background."""
  pix = np.arange(RES) + 0.5
  dx = pix[None, :] - centers[..., 0, None, None]
  dy = pix[:, None] - centers[..., 1, None, None]
  alpha = np.clip(RADIUS + 0.5 - np.sqrt(dx * dx + dy * dy), 0.0, 1.0)
  gray = -0.8 + 1.6 * alpha
  return np.repeat(gray[..., None], 3, axis=-1).astype(np.float32)


def real_batch(i: int, mesh):
  """Pairs of frames at times drawn like the fakes' (Beta(2,1), Beta(1,2), sorted: D_M cannot win
  on the time gap alone; docs/frame_pairs.md), starts spread so the disc stays in view."""
  rng = np.random.default_rng(i)
  t = np.sort(
    np.stack([np.sqrt(rng.uniform(size=BATCH)), 1 - np.sqrt(rng.uniform(size=BATCH))], 1), 1
  )
  start = np.stack([rng.uniform(3.0, 7.0, BATCH), rng.uniform(4.0, 12.0, BATCH)], 1)
  centers = start[:, None, :] + t[:, :, None] * VELOCITY
  batch = {"frames": disc_frames(centers), "delta_t": (t[:, 1] - t[:, 0]).astype(np.float32)}
  return sharding.global_batch_from_local(batch, mesh)


def measure(steps, state, num_videos: int = 64) -> dict:
  """Disc area and centroid in the EMA generator's frames at t = 0 and t = 1."""
  z = sampling.latents(1, num_videos, steps.gcfg.z_dim)
  zm = sampling.latents(2, num_videos, steps.gcfg.motion_dim)
  frames = jax.jit(
    lambda v: sampling.render(steps.generator, v, z, zm, np.array([0.0, 1.0], np.float32))
  )(state.g_ema)
  mask = np.asarray(frames).mean(axis=-1) > 0.0  # [N, 2, H, W]
  area = mask.sum(axis=(2, 3))
  pix = np.arange(RES) + 0.5
  with np.errstate(invalid="ignore", divide="ignore"):
    cx = (mask * pix[None, None, None, :]).sum(axis=(2, 3)) / area
    cy = (mask * pix[None, None, :, None]).sum(axis=(2, 3)) / area
  seen = (area > 0.5 * np.pi * RADIUS**2).all(axis=1) & (area < 2.5 * np.pi * RADIUS**2).all(axis=1)
  shift = np.stack([cx[:, 1] - cx[:, 0], cy[:, 1] - cy[:, 0]], 1)[seen]
  return {
    "seen": float(seen.mean()),
    "area": float(np.median(area)),
    "shift": shift.mean(axis=0) if len(shift) else np.full(2, np.nan),
  }


def train_disc_videos(freeze: str = "") -> dict:
  config = tiny_digan.tiny_config(resolution=RES, global_batch=BATCH, r1_every=16)
  config.model.generator.channel_max = config.model.discriminator.channel_max = 16
  config.train.augment = ""
  config.train.base_lr = 0.01
  config.train.ema_kimg = 0.1
  config.train.freeze = freeze
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  steps = steps_lib.DiganSteps(config, mesh, compiler_options=tiny_digan.COMPILER_OPTIONS)
  state = steps.create_train_state()
  frozen_before = tiny_digan.host_params(state)
  step_fn = steps.jit_train_step()
  for i in range(STEPS):
    state, _ = step_fn(state, real_batch(i, mesh), steps.lazy_phases(i))
  out = measure(steps, state)
  out["frozen"] = steps.frozen
  out["generator"], out["g_ema"] = steps.generator, jax.device_get(state.g_ema)
  out["frozen_unchanged"] = _unchanged(frozen_before, tiny_digan.host_params(state), steps.frozen)
  return out


def _unchanged(before, after, names) -> bool:
  flat = lambda p: dict(zip(optim.param_names("g", p["g"]), jax.tree.leaves(p["g"])))
  b, a = flat(before), flat(after)
  return all(np.array_equal(b[n], a[n]) for n in names)


def _speed_ok(shift) -> bool:
  speed, data_speed = np.linalg.norm(shift), np.linalg.norm(VELOCITY)
  direction = shift @ VELOCITY / (speed * data_speed + 1e-9)
  return direction > 0.9 and abs(speed - data_speed) < SPEED_TOLERANCE * data_speed


@pytest.fixture(scope="module")
def runs():
  return {"trained": train_disc_videos(), "frozen": train_disc_videos(MOTION_PATH)}


def test_generated_disc_moves_at_the_data_velocity(runs):
  trained, frozen = runs["trained"], runs["frozen"]
  for name, r in runs.items():
    print(
      f"{name}: disc seen in {r['seen']:.0%} of videos (median area {r['area']:.1f} px, data "
      f"{np.pi * RADIUS**2:.1f}); shift t=0->1 {np.round(r['shift'], 2).tolist()} px, speed "
      f"{np.linalg.norm(r['shift']):.2f} px per unit time (data {np.linalg.norm(VELOCITY):.2f}, "
      f"direction {VELOCITY.tolist()})"
    )
  assert trained["seen"] > 0.8  # the object appears
  assert _speed_ok(trained["shift"]), trained["shift"]  # and moves like the data
  assert frozen["seen"] > 0.8  # the control still draws the disc...
  assert not _speed_ok(frozen["shift"]), frozen["shift"]  # ...but cannot learn its motion


def test_freeze_keeps_the_motion_path_and_names_it(runs):
  frozen = runs["frozen"]
  assert frozen["frozen_unchanged"]
  assert len(frozen["frozen"]) == 3 * 2 * 3  # 3 fusers (4², 8², 16²) x 3 layers x (weight, bias)
  assert all("coord_fuser" in n for n in frozen["frozen"])


PROJECTION_MARGIN_DB = 2.0


def test_projection_predicts_unseen_frames_better_than_copying_or_blending(runs):
  """Paper Fig. 5 on known latents: videos the trained generator renders, frames {6, 7, 8} given,
  3..11 predicted (backward and forward); then frames 3..12 from the first and last three
  (intermediate). The prediction beats copying the nearest given frame and blending the given frames
  linearly in time by a PSNR margin, in each direction."""
  generator, g_ema = runs["trained"]["generator"], runs["trained"]["g_ema"]
  z = sampling.latents(10, 8, generator.config.z_dim)
  zm = sampling.latents(11, 8, generator.config.motion_dim)
  videos = np.asarray(
    jax.jit(lambda v: sampling.render(generator, v, z, zm, sampling.sample_times(16)))(g_ema)
  )
  cfg = projection.ProjectionConfig(num_steps=300, w_avg_samples=1000)
  for given, target in (([6, 7, 8], range(3, 12)), ([0, 1, 2, 13, 14, 15], range(3, 13))):
    result = projection.evaluate(generator, g_ema, videos, given, list(target), cfg)
    for region, psnr in result["psnr_by_region"].items():
      print(
        f"given {given}, {region}: PSNR projection {psnr['projection']:.2f} dB, nearest frame "
        f"{psnr['nearest_frame']:.2f} dB, linear blend {psnr['linear_blend']:.2f} dB"
      )
      assert psnr["projection"] > psnr["nearest_frame"] + PROJECTION_MARGIN_DB, (region, psnr)
      assert psnr["projection"] > psnr["linear_blend"] + PROJECTION_MARGIN_DB, (region, psnr)
    assert set(result["psnr_by_region"]) == (
      {"backward", "forward"} if given[0] == 6 else {"intermediate"}
    )
