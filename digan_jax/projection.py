"""Projection (GAN inversion) of given frames, and prediction of the others (paper Fig. 5, App. E).

  python -m digan_jax.projection --checkpoint=WORKDIR/checkpoints --video=clip.mp4 \\
      --given=6,7,8 --predict=3:12 --output=out/

The StyleGAN2 projector (Karras et al. 2020, `projector.py`), which the paper used, with DIGAN's
motion latent added: w starts at w_avg (the mean mapping of `w_avg_samples` latents) and z_M at 0 (its
prior mean); both are optimised with Adam under a linear lr ramp-up and cosine ramp-down, with
Gaussian noise on them whose scale (w_std for w, 1 for z_M, times `noise_factor`) falls quadratically
to zero over the first `noise_ramp` of the steps. The loss is the pixel loss (MSE or L1) over the
given frames at their times, plus an optional perceptual term: LPIPS/VGG weights cannot be
downloaded here, so the features are the checkpoint's own image discriminator's block outputs,
unit-normalised per position as LPIPS does. Since a frame index i means t = i / (clip_frames - 1),
any frame index can be predicted: before the given ones (backward), after them (forward), between.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags

from digan_jax import cli_flags, fileio, quantize, sampling
from digan_jax.models.generator import Generator
from digan_jax.models.inr import CoordGrid

LOSSES = ("mse", "l1")
PERCEPTUAL = ("none", "discriminator")


@dataclasses.dataclass(frozen=True)
class ProjectionConfig:
  """The projector's settings (StyleGAN2's defaults, except the step count: the paper ran 20,000)."""

  num_steps: int = 1000
  learning_rate: float = 0.1
  lr_rampup: float = 0.05  # share of the steps with a linear lr ramp-up
  lr_rampdown: float = 0.25  # share of the steps at the end with a cosine lr ramp-down
  noise_factor: float = 0.05  # latent noise at step 0, in units of the latent's spread
  noise_ramp: float = 0.75  # share of the steps over which that noise falls to 0
  w_avg_samples: int = 10000
  loss: str = "mse"
  perceptual: str = "none"
  perceptual_weight: float = 1.0
  num_starts: int = 1  # > 1: also descend from random latents, keep each video's best (see project)
  seed: int = 0

  def __post_init__(self):
    if self.loss not in LOSSES:
      raise ValueError(f"loss={self.loss!r}: use one of {LOSSES}")
    if self.perceptual not in PERCEPTUAL:
      raise ValueError(f"perceptual={self.perceptual!r}: use one of {PERCEPTUAL}")
    if self.num_steps < 1 or self.w_avg_samples < 2 or self.num_starts < 1:
      raise ValueError("num_steps and num_starts must be >= 1, w_avg_samples >= 2")


def lr_at(cfg: ProjectionConfig, t):
  """The projector's learning rate at progress t = step / num_steps."""
  ramp = jnp.minimum(1.0, (1.0 - t) / cfg.lr_rampdown)
  ramp = 0.5 - 0.5 * jnp.cos(ramp * jnp.pi)
  return cfg.learning_rate * ramp * jnp.minimum(1.0, t / cfg.lr_rampup)


def noise_at(cfg: ProjectionConfig, t):
  """Latent noise scale (in units of the latent's spread) at progress t."""
  return cfg.noise_factor * jnp.maximum(0.0, 1.0 - t / cfg.noise_ramp) ** 2


def w_stats(generator: Generator, variables, num_samples: int, seed: int, labels=None):
  """(w_avg [B, w_dim], w_std [B]) of each video's class (one row per label row; [1, .] without
  labels): the mean of the mapping of `num_samples` latents and the RMS distance from it."""
  z = sampling.latents(seed, num_samples, generator.config.z_dim)

  def stats(label):
    lab = None if label is None else jnp.broadcast_to(label, (num_samples,) + label.shape)
    w = generator.apply(variables, z, lab, method=Generator.map)
    avg = w.mean(0)
    return avg, jnp.sqrt(jnp.mean(jnp.sum((w - avg) ** 2, -1)))

  if labels is None:
    avg, std = stats(None)
    return avg[None], std[None]
  return jax.lax.map(stats, labels)


def frame_times(indices, clip_frames: int) -> np.ndarray:
  """Times of frame indices: the training convention t = i / (clip_frames - 1)."""
  return np.asarray(indices, np.float32) / np.float32(clip_frames - 1)


def _normalised(x):
  return x / jnp.sqrt(jnp.sum(x * x, -1, keepdims=True) + 1e-10)


def discriminator_features(discriminator, d_variables):
  """frames [N, H, W, 3] -> the image D's block outputs (LPIPS-style perceptual features)."""
  from digan_jax.models.discriminator import DiscriminatorBlock  # pylint: disable=g-import-not-at-top

  def one_frame(frame):
    _, state = discriminator.apply(
      d_variables,
      frame[None],
      method=type(discriminator).image,
      capture_intermediates=lambda m, name: (
        isinstance(m, DiscriminatorBlock) and name == "__call__"
      ),
    )
    return [x[0] for x in jax.tree.leaves(state["intermediates"])]

  # One frame per call: the epilogue's minibatch-std would otherwise mix frames (and needs a batch
  # divisible by its group size); the block outputs before it are per frame anyway.
  return jax.vmap(one_frame)


def project(
  generator: Generator,
  variables,
  frames,
  times,
  cfg: ProjectionConfig,
  labels=None,
  features=None,
  grid: CoordGrid = CoordGrid(),
):
  """Latents that render `frames` [B, K, H, W, 3] (in [-1, 1]) at `times` ([K] or [B, K]).

  Returns (w [B, w_dim], z_motion [B, motion_dim], losses [num_steps, B]). Each video's loss is its
  own mean, and the total their sum, so each video's latents get the gradient of their own loss.
  With cfg.num_starts > 1 the descent also runs from random latents (w of random z, random z_M)
  beside the StyleGAN2 start (w_avg, 0), all in one batch, and each video keeps the start with the
  lowest final loss: from w_avg alone the descent can stall in a poor local minimum.
  `features`: frames -> list of feature maps, for the perceptual term (cfg.perceptual).
  Pure: jit it (`num_steps` and the rest of cfg are static).
  """
  batch, starts = frames.shape[0], cfg.num_starts
  gcfg = generator.config
  times = jnp.broadcast_to(jnp.asarray(times, jnp.float32), (batch, frames.shape[1]))
  w_avg, w_std = w_stats(generator, variables, cfg.w_avg_samples, cfg.seed, labels)
  w_avg = jnp.broadcast_to(w_avg, (batch, gcfg.w_dim))
  w_std = jnp.broadcast_to(w_std, (batch,))
  if cfg.perceptual != "none" and features is None:
    raise ValueError(f"perceptual={cfg.perceptual!r} needs its feature function")
  k_z, k_m = jax.random.split(jax.random.key(cfg.seed + 2))
  z = jax.random.normal(k_z, (starts - 1, batch, gcfg.z_dim))
  tiled_labels = None if labels is None else jnp.broadcast_to(labels, (batch,) + labels.shape[1:])
  random_w = jax.vmap(
    lambda zz: generator.apply(variables, zz, tiled_labels, method=Generator.map)
  )(z)
  w0 = jnp.concatenate([w_avg[None], random_w]).reshape(starts * batch, -1)
  zm0 = jnp.concatenate(
    [
      jnp.zeros((1, batch, gcfg.motion_dim)),
      jax.random.normal(k_m, (starts - 1, batch, gcfg.motion_dim)),
    ]
  ).reshape(starts * batch, -1)
  tile = lambda x: jnp.broadcast_to(x[None], (starts,) + x.shape).reshape((-1,) + x.shape[1:])
  w, zm, losses = _descend(
    generator, variables, tile(frames), tile(times), w0, zm0, tile(w_std), cfg, features, grid
  )
  best = jnp.argmin(losses[-1].reshape(starts, batch), axis=0)  # [B]
  pick = lambda x: x.reshape((starts, batch) + x.shape[1:])[best, jnp.arange(batch)]
  per_start = losses.reshape(cfg.num_steps, starts, batch)
  return pick(w), pick(zm), per_start[:, best, jnp.arange(batch)]


def _descend(generator, variables, frames, times, w0, zm0, w_std, cfg, features, grid):
  """The projector's Adam descent from (w0, zm0) for every row of `frames` [N, K, H, W, 3]."""
  batch = frames.shape[0]
  target_feats = None if features is None else features(frames.reshape((-1,) + frames.shape[2:]))

  def per_video_loss(latents, t, key):
    kw, km = jax.random.split(key)
    noise = noise_at(cfg, t)
    w = latents["w"] + jax.random.normal(kw, w0.shape) * (w_std * noise)[:, None]
    zm = latents["z_motion"] + jax.random.normal(km, zm0.shape) * noise
    out = generator.apply(variables, w, zm, times, grid, method=Generator.synthesize)
    err = out - frames
    loss = jnp.mean(err * err if cfg.loss == "mse" else jnp.abs(err), axis=(1, 2, 3, 4))
    if cfg.perceptual != "none":
      fake_feats = features(out.reshape((-1,) + out.shape[2:]))
      for f, r in zip(fake_feats, target_feats):
        d = (_normalised(f) - _normalised(r)) ** 2
        loss += cfg.perceptual_weight * jnp.mean(d.reshape(batch, -1), axis=1)
    return loss

  adam = optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8)
  latents = {"w": w0, "z_motion": zm0}

  def step(carry, i):
    latents, opt_state, key = carry
    key, sub = jax.random.split(key)
    t = i.astype(jnp.float32) / cfg.num_steps
    loss_fn = lambda lat: (lambda l: (jnp.sum(l), l))(per_video_loss(lat, t, sub))
    (_, losses), grads = jax.value_and_grad(loss_fn, has_aux=True)(latents)
    updates, opt_state = adam.update(grads, opt_state)
    latents = jax.tree.map(lambda p, u: p - lr_at(cfg, t) * u, latents, updates)
    return (latents, opt_state, key), losses

  carry = (latents, adam.init(latents), jax.random.key(cfg.seed + 1))
  (latents, _, _), losses = jax.lax.scan(step, carry, jnp.arange(cfg.num_steps))
  return latents["w"], latents["z_motion"], losses


def predict(generator: Generator, variables, w, z_motion, times, grid: CoordGrid = CoordGrid()):
  """Frames [B, T, H, W, 3] of projected latents at any times."""
  return generator.apply(variables, w, z_motion, times, grid, method=Generator.synthesize)


# ----------------------------------------------------------------------------------- baselines


def nearest_frame(given, given_idx, target_idx) -> np.ndarray:
  """Baseline: each target frame is a copy of the given frame nearest in time ([B, T, ...])."""
  given_idx, target_idx = np.asarray(given_idx), np.asarray(target_idx)
  pick = np.abs(target_idx[:, None] - given_idx[None, :]).argmin(1)
  return np.asarray(given)[:, pick]


def linear_blend(given, given_idx, target_idx) -> np.ndarray:
  """Baseline: per-pixel linear interpolation in time between the given frames that bracket a target,
  linear extrapolation from the two nearest given frames outside them (clipped to [-1, 1])."""
  given = np.asarray(given, np.float64)
  order = np.argsort(given_idx)
  g_idx = np.asarray(given_idx, np.float64)[order]
  given = given[:, order]
  if len(g_idx) == 1:
    return nearest_frame(given, g_idx, target_idx).astype(np.float32)
  out = []
  for t in np.asarray(target_idx, np.float64):
    j = int(np.clip(np.searchsorted(g_idx, t) - 1, 0, len(g_idx) - 2))
    a = (t - g_idx[j]) / (g_idx[j + 1] - g_idx[j])
    out.append((1 - a) * given[:, j] + a * given[:, j + 1])
  return np.clip(np.stack(out, 1), -1.0, 1.0).astype(np.float32)


def psnr(pred, truth) -> np.ndarray:
  """PSNR in dB of frames in [-1, 1] on the [0, 1] scale, per frame ([B, T, H, W, C] -> [B, T])."""
  pred = np.clip((np.asarray(pred, np.float64) + 1) / 2, 0, 1)
  truth = np.clip((np.asarray(truth, np.float64) + 1) / 2, 0, 1)
  mse = np.mean((pred - truth) ** 2, axis=(2, 3, 4))
  return 10 * np.log10(1.0 / np.maximum(mse, 1e-12))


def evaluate(generator, variables, videos, given_idx, target_idx, cfg, clip_frames=16, **kw):
  """Projects the `given_idx` frames of `videos` [B, T, H, W, 3] (in [-1, 1]; T covers the targets)
  and scores the `target_idx` predictions against the videos and the two baselines.

  Returns a dict: mean PSNR (dB) over the targets that are not given, for the projection, the
  nearest-frame copy and the linear blend; per-frame means; the predictions and the loss curve.
  """
  given_idx, target_idx = list(given_idx), list(target_idx)
  given = np.asarray(videos)[:, given_idx]
  fn = jax.jit(
    lambda v, f: project(generator, v, f, frame_times(given_idx, clip_frames), cfg, **kw)
  )
  w, zm, losses = fn(variables, jnp.asarray(given))
  pred = np.asarray(
    jax.jit(lambda v, a, b: predict(generator, v, a, b, frame_times(target_idx, clip_frames)))(
      variables, w, zm
    )
  )
  truth = np.asarray(videos)[:, target_idx]
  scores = {
    "projection": psnr(pred, truth),
    "nearest_frame": psnr(nearest_frame(given, given_idx, target_idx), truth),
    "linear_blend": psnr(linear_blend(given, given_idx, target_idx), truth),
  }
  regions = {name: [] for name in ("backward", "intermediate", "forward")}
  for i, t in enumerate(target_idx):
    if t not in given_idx:
      name = (
        "backward" if t < min(given_idx) else "forward" if t > max(given_idx) else "intermediate"
      )
      regions[name].append(i)
  unseen = sorted(sum(regions.values(), []))
  return dict(
    psnr_unseen={k: float(v[:, unseen].mean()) for k, v in scores.items()},
    psnr_by_region={
      name: {k: float(v[:, idx].mean()) for k, v in scores.items()}
      for name, idx in regions.items()
      if idx
    },
    psnr_per_frame={k: v.mean(0).round(3).tolist() for k, v in scores.items()},
    predictions=pred,
    losses=np.asarray(losses),
    w=np.asarray(w),
    z_motion=np.asarray(zm),
  )


# ----------------------------------------------------------------------------------------- CLI


def parse_indices(text: str, name: str) -> list[int]:
  """'6,7,8' or '3:12' (end exclusive) or a mix ('0:3,13:16') -> frame indices."""
  out = []
  try:
    for part in text.split(","):
      if ":" in part:
        lo, hi = part.split(":")
        out.extend(range(int(lo), int(hi)))
      elif part.strip():
        out.append(int(part))
  except ValueError:
    raise ValueError(f"--{name}={text!r}: expected indices like 6,7,8 or 3:12") from None
  if not out or min(out) < 0:
    raise ValueError(f"--{name}={text!r}: give at least one frame index >= 0")
  return out


def load_clip(path, resolution: int) -> np.ndarray:
  """A video file or frame folder -> float frames [T, R, R, 3] in [-1, 1] (centre crop, resize)."""
  from digan_jax.data import image_ops, video_io  # pylint: disable=g-import-not-at-top

  frames = video_io.read_video(path)
  frames = np.stack([image_ops.crop_and_resize(f, resolution) for f in frames])
  return frames.astype(np.float32) / 127.5 - 1.0


def side_by_side(given_idx, target_idx, given, pred, truth) -> np.ndarray:
  """uint8 [T, H, 3W + 4, 3] per target frame: given (black if not given) | predicted | truth
  (black where unknown)."""
  h, w = pred.shape[1:3]
  rows = []
  for i, t in enumerate(target_idx):
    panels = [np.zeros((h, w, 3), np.uint8)] * 3
    if t in given_idx:
      panels[0] = given[given_idx.index(t)]
    panels[1] = pred[i]
    if truth is not None and t < truth.shape[0]:
      panels[2] = truth[t]
    gap = np.full((h, 2, 3), 255, np.uint8)
    rows.append(np.concatenate([panels[0], gap, panels[1], gap, panels[2]], 1))
  return np.stack(rows)


def _define_flags(fv: flags.FlagValues) -> flags.FlagValues:
  defaults = ProjectionConfig()
  flags.DEFINE_string(
    "checkpoint", None, "checkpoint directory (WORKDIR/checkpoints)", flag_values=fv
  )
  flags.DEFINE_integer("step", None, "checkpoint step (default: latest)", flag_values=fv)
  flags.DEFINE_string("video", None, "video file or frame folder", flag_values=fv)
  flags.DEFINE_string("output", None, "directory for the outputs", flag_values=fv)
  flags.DEFINE_string(
    "given", "6,7,8", "indices of the frames given to the projector", flag_values=fv
  )
  flags.DEFINE_string(
    "predict", "0:16", "indices of the frames to render (end exclusive ranges)", flag_values=fv
  )
  flags.DEFINE_integer(
    "clip_frames",
    16,
    "frames of a training clip: index i is time i / (clip_frames - 1)",
    flag_values=fv,
  )
  flags.DEFINE_integer("label", None, "class id (class-conditional checkpoints)", flag_values=fv)
  flags.DEFINE_integer("fps", 4, "frame rate of the side-by-side video", flag_values=fv)
  for field in dataclasses.fields(ProjectionConfig):
    value = getattr(defaults, field.name)
    define = {int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string}
    define[type(value)](field.name, value, f"projector: {field.name}", flag_values=fv)
  flags.mark_flags_as_required(["checkpoint", "video", "output"], flag_values=fv)
  return fv


def main(argv, fv: flags.FlagValues = flags.FLAGS) -> int:
  cli_flags.reject_positional(argv)
  from digan_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from digan_jax.data.video_io import VideoReadError  # pylint: disable=g-import-not-at-top

  try:
    cfg = ProjectionConfig(
      **{f.name: fv[f.name].value for f in dataclasses.fields(ProjectionConfig)}
    )
    given_idx = parse_indices(fv.given, "given")
    target_idx = parse_indices(fv.predict, "predict")
    gcfg, g_ema, step = checkpointing.restore_generator(fv.checkpoint, fv.step)
    clip = load_clip(fv.video, gcfg.resolution)
    if max(given_idx) >= clip.shape[0]:
      raise ValueError(f"--given={fv.given}: {fv.video} has only {clip.shape[0]} frames")
    labels = sampling.class_labels(None if fv.label is None else fv.label, 1, gcfg.c_dim)
    features = None
    if cfg.perceptual == "discriminator":
      features = _checkpoint_discriminator_features(fv.checkpoint, step)
  except (ValueError, FileNotFoundError, VideoReadError) as e:
    sys.exit(f"error: {e}")
  generator = Generator(gcfg)
  given = clip[given_idx][None]
  w, zm, losses = jax.jit(
    lambda v, f: project(
      generator, v, f, frame_times(given_idx, fv.clip_frames), cfg, labels, features
    )
  )(g_ema, jnp.asarray(given))
  pred = np.asarray(predict(generator, g_ema, w, zm, frame_times(target_idx, fv.clip_frames)))[0]
  known = [(i, t) for i, t in enumerate(target_idx) if t < clip.shape[0]]
  to8 = lambda x: quantize.to_uint8(np.asarray(x), "rint")
  frame_psnr = {}
  if known:
    rows, ts = zip(*known)
    truth = clip[list(ts)][None]
    scores = {
      "projection": psnr(pred[None, list(rows)], truth),
      "nearest_frame": psnr(nearest_frame(given, given_idx, list(ts)), truth),
      "linear_blend": psnr(linear_blend(given, given_idx, list(ts)), truth),
    }
    # The baselines reproduce given frames exactly: only their unseen frames are scored.
    frame_psnr = {
      name: {
        str(t): round(float(s[0, k]), 3)
        for k, t in enumerate(ts)
        if name == "projection" or t not in given_idx
      }
      for name, s in scores.items()
    }
  output = fileio.as_path(fv.output)
  panels = side_by_side(given_idx, target_idx, to8(clip[given_idx]), to8(pred), to8(clip))
  for fmt in ("gif", "mp4"):
    sampling.write_video(output / f"projection.{fmt}", panels, fv.fps)
  fileio.write_npz(
    output / "projection.npz", predicted=to8(pred), w=np.asarray(w), z_motion=np.asarray(zm)
  )
  card = dict(
    checkpoint=str(fv.checkpoint),
    checkpoint_step=step,
    video=str(fv.video),
    given=given_idx,
    predicted=target_idx,
    times={str(t): float(x) for t, x in zip(target_idx, frame_times(target_idx, fv.clip_frames))},
    projector=dataclasses.asdict(cfg),
    perceptual_features=(
      "none (pixel loss only)"
      if cfg.perceptual == "none"
      else "the checkpoint's image discriminator block outputs, unit-normalised per position"
    ),
    layout="projection.gif/.mp4: given (black: not given) | predicted | ground truth (black: unknown)",
    psnr_db=frame_psnr,
    loss_curve=np.asarray(losses)[:, 0].round(6).tolist(),
  )
  fileio.write_json(output / "projection.json", card)
  print(
    json.dumps({k: card[k] for k in ("checkpoint_step", "given", "predicted", "psnr_db")}, indent=1)
  )
  return 0


def _checkpoint_discriminator_features(checkpoint, step):
  from digan_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from digan_jax.models.discriminator import DualDiscriminator  # pylint: disable=g-import-not-at-top

  dcfg, d_variables = checkpointing.restore_discriminator(checkpoint, step)
  return discriminator_features(DualDiscriminator(dcfg), d_variables)


def run(argv) -> int:
  """The tool in this process (program name first in argv); returns the exit code."""
  return cli_flags.run_in_process(_define_flags, main, argv)


if __name__ == "__main__":
  cli_flags.run_as_program(_define_flags, main)
