"""The paper's property measurements of a run's checkpoint, one JSON card each (paper Tables 2-4,
Fig. 10).

  python -m digan_jax.paper_measures --workdir=WORKDIR --output=DIR --measure=table2
  python -m digan_jax.paper_measures --checkpoint=WORKDIR/checkpoints --output=DIR --measure=table3
  python -m digan_jax.paper_measures --workdir=WORKDIR --output=DIR --measure=table4
  python -m digan_jax.paper_measures --workdir=WORKDIR --output=DIR --measure=fig10

- table2: FVD of time interpolation (64 frames at t = linspace(0, 1, 64)) and extrapolation (32 frames
  at t = i / 15), beside the 16 training-grid frames under the same settings.
- table3: generation time of 16, 32 and 64 frames (median of timed repeats after compilation).
- table4: FVD at 2x resolution of the INR rendered on a 2x grid against nearest / bilinear / bicubic
  upsampling of the normal render of the same latents.
- fig10: the motion discriminator's logits of a far real pair (first and last frame of a training
  clip, true Δt = 1) as the Δt plane sweeps [0, 1]; also a PNG plot.

Real clips come from the run's config (WORKDIR/config.json: dataset, evaluation split, training frame
stride) and their I3D features are cached in WORKDIR/eval/real_cache like the evaluator's. Time t is in
units of one training clip: t = 1 is frame 15 of a clip, i.e. 15 * config.data.frame_stride source
frames, so real clips are drawn at strides derived from the training stride (each card says how).
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from digan_jax import cli_flags, fileio, quantize, sampling, sharding
from digan_jax.errors import UserError
from digan_jax.evaluation import evaluator, features, protocols, real_data

MEASURES = ("table2", "table3", "table4", "fig10")
SR_VARIANTS = ("inr_x2", "nearest", "bilinear", "bicubic")
TABLE2_ROWS = ("interpolation_64", "extrapolation_32", "training_grid_16")
TRAIN_FRAMES = protocols.TRAIN_CLIP_FRAMES  # t = i / 15 is frame i of a training clip


@dataclasses.dataclass(frozen=True)
class TimedProtocol(protocols.Protocol):
  """A protocol whose fakes are rendered at explicit `times` rather than k * frame_stride / 15.

  Separating the two lets frame_stride be the real clips' stride in source frames of the dataset
  (TaiChi trains on stride 4, so t = 1 / 15 is 4 source frames) while the fake times stay in
  training-clip units.
  """

  times: tuple = ()

  def __post_init__(self):
    super().__post_init__()
    if len(self.times) != self.num_frames:
      raise ValueError(
        f"protocol {self.name!r}: {len(self.times)} times for {self.num_frames} frames"
      )

  def fake_times(self) -> np.ndarray:
    return np.asarray(self.times, np.float32)

  def card(self) -> dict[str, Any]:
    card = super().card()
    card.pop("times")
    card["fake_times"] = [round(float(t), 6) for t in self.times]
    card["real_frames"] = f"{self.num_frames} frames, every {self.real_stride}th source frame"
    return card


def _timed(name: str, times: np.ndarray, reference: str) -> TimedProtocol:
  # Everything but the frame grid is DIGAN's protocol (2048 vs 2048, 10 trials, floor uint8, ...).
  base = dataclasses.asdict(protocols.get_protocol("digan"))
  base.update(name=name, num_frames=len(times), times=tuple(float(t) for t in times))
  base.update(reference=reference, overrides=())
  return TimedProtocol(**base)


for _p in (
  _timed(
    "digan_interp64",
    np.linspace(0.0, 1.0, 64),
    "DIGAN Table 2 time interpolation: 64 frames at t = linspace(0, 1, 64), 4x finer than "
    "training; whole clip through I3D against 64-frame real clips (stride: see the card)",
  ),
  _timed(
    "digan_extrap32",
    np.arange(32) / (TRAIN_FRAMES - 1),
    "DIGAN Table 2 time extrapolation by 16 frames: 32 frames at t = i / 15; whole clip through "
    "I3D against 32-frame real clips at the training stride",
  ),
  _timed(
    "digan_grid16",
    np.arange(TRAIN_FRAMES) / (TRAIN_FRAMES - 1),
    "16 frames at t = i / 15 (the training grid) against 16-frame real clips at the training "
    "stride; the reference row of Table 2 and the protocol of Table 4",
  ),
):
  if _p.name not in protocols.protocol_names():  # `python -m` may import this module twice
    protocols.register_protocol(_p)


def _mesh():
  """The evaluation mesh (tests replace it by one device)."""
  return sharding.data_parallel_mesh()


# ----------------------------------------------------------------------------------------------
# The run: config, checkpoint, real clips.


def run_config(workdir):
  """The run's config (WORKDIR/config.json, as training wrote it) as a ConfigDict."""
  import ml_collections  # pylint: disable=g-import-not-at-top

  path = fileio.as_path(workdir) / "config.json"
  if not path.is_file():
    raise UserError(
      f"{path} not found: --workdir must be a training run (config.json, checkpoints/)"
    )
  return ml_collections.ConfigDict(fileio.read_json(path))


def real_source(config, workdir, protocol, resolution: int):
  """(ClipSource of the run's evaluation split at `resolution`, a dict describing it)."""
  from digan_jax.data import resolve, storage  # pylint: disable=g-import-not-at-top

  try:
    data_dir, name = resolve.resolve_dataset(config, fileio.as_path(workdir))
    split = config.data.eval_split
    dataset = storage.open_dataset(data_dir, name, split)
    stored = dataset.resolution
    longest = int(max(dataset.lengths))
    source = real_data.clip_source_from_dataset(
      data_dir, name, split, protocol, resolution=resolution, batch_size=int(config.eval.batch_size)
    )
  except (ValueError, storage.DatasetNotFoundError, FileNotFoundError) as e:
    raise UserError(f"real clips: {e} (set --data_dir to where the run's dataset is)") from e
  if longest < protocol.frame_span:
    raise UserError(
      f"{protocol.name} compares clips of {protocol.num_frames} frames at a stride of "
      f"{protocol.real_stride} ({protocol.frame_span} source frames), but the longest video "
      f"of {name} ({split}) has {longest}: leave that row out (--table2_rows) or prepare the "
      "dataset with longer videos"
    )
  return source, dict(
    dataset=name, split=split, stored_resolution=int(stored), resolution=int(resolution)
  )


def _resize_note(info: dict) -> str:
  stored, res = info.get("stored_resolution"), info["resolution"]
  if stored is None or stored == res:
    return "frames as stored"
  kind = "upsampled" if stored < res else "downsampled"
  return f"{kind} from the stored {stored}x{stored} to {res}x{res}, bilinear without antialias"


def _data_stride(config) -> int:
  return int(config.data.get("frame_stride", 1))


# ----------------------------------------------------------------------------------------------
# table2: FVD of time interpolation and extrapolation.


def table2_protocols(data_stride: int, interp_real_stride: int = 0, **overrides):
  """{row: protocol}. Every clip goes to I3D whole (I3D takes any length >= 9 and averages its
  logits over time), against real clips of the same length whose frames are as far apart in time
  as the fake frames: t = 1 / 15 is `data_stride` source frames, so extrapolation (step 1 / 15) uses
  the training stride and interpolation (step 1 / 63) the stride nearest data_stride * 15 / 63
  (TaiChi: 4 -> 1), at least 1."""
  interp = interp_real_stride or max(1, round(data_stride * 15 / 63))
  return {
    "interpolation_64": protocols.get_protocol("digan_interp64", frame_stride=interp, **overrides),
    "extrapolation_32": protocols.get_protocol(
      "digan_extrap32", frame_stride=data_stride, **overrides
    ),
    "training_grid_16": protocols.get_protocol(
      "digan_grid16", frame_stride=data_stride, **overrides
    ),
  }


def time_match(protocol, data_stride: int) -> dict[str, float]:
  """Fake and real frame spacing in source frames; a real/fake ratio != 1 means the reals move
  faster (> 1) or slower than the fakes, which FVD then counts against the model."""
  times = protocol.fake_times()
  fake_step = float(times[1] - times[0]) * (TRAIN_FRAMES - 1) * data_stride
  return dict(
    fake_step_source_frames=fake_step,
    real_step_source_frames=float(protocol.real_stride),
    real_over_fake_speed=protocol.real_stride / fake_step,
  )


def table2(
  gcfg, g_ema, source_fn, *, data_stride, cache_dir, mesh, batch_size, rows=TABLE2_ROWS, **kw
) -> dict:
  chosen, rows = rows, {}
  for row, protocol in table2_protocols(data_stride, **kw).items():
    if row not in chosen:
      continue
    source, info = source_fn(protocol, gcfg.resolution)
    result = evaluator.evaluate(
      gcfg, g_ema, protocol, source, mesh=mesh, batch_size=batch_size, cache_dir=cache_dir
    )
    result.update(time_match=time_match(protocol, data_stride), real_clips=info)
    result["real_clips"]["resize"] = _resize_note(info)
    rows[row] = result
  return dict(
    rows=rows,
    comparison="each generated clip goes through I3D whole (64 or 32 frames), against real clips "
    "of the same length drawn from the evaluation split at the stride whose frame spacing matches "
    "the fakes' (time_match); training_grid_16 is the usual 16-frame FVD under the same settings",
  )


# ----------------------------------------------------------------------------------------------
# table3: generation time.


def table3(gcfg, g_ema, *, batch_size, repeats, warmup, frames_per_chunk, seed=0) -> dict:
  """Seconds to render 16, 32 and 64 frames (t = i / 15) of `batch_size` videos in one jitted
  call (mapping + synthesis, float32), median over `repeats` calls after compiling and `warmup`."""
  from digan_jax.benchmark import measure  # pylint: disable=g-import-not-at-top
  from digan_jax.models.generator import Generator  # pylint: disable=g-import-not-at-top

  generator = Generator(gcfg)
  render = functools.partial(sampling.render, generator, frames_per_chunk=frames_per_chunk or None)
  fn = jax.jit(render)
  variables = jax.device_put(g_ema)
  labels = sampling.class_labels(None, batch_size, gcfg.c_dim)
  z_content = sampling.latents(seed, batch_size, gcfg.z_dim)
  z_motion = sampling.latents(seed + 1, batch_size, gcfg.motion_dim)
  rows = {}
  for num_frames in (16, 32, 64):
    times = np.arange(num_frames, dtype=np.float32) / (TRAIN_FRAMES - 1)
    m, _, _ = measure.measure(
      fn, (variables, z_content, z_motion, times, labels), repeats=repeats, warmup=warmup
    )
    median = float(np.median(m["step_s_all"]))
    rows[str(num_frames)] = dict(
      median_s_per_call=median,
      median_s_per_video=median / batch_size,
      frames_per_s=num_frames * batch_size / median,
      compile_s=m.get("compile_s"),
      call_s=m["step_s_all"],
    )
  return dict(
    rows=rows,
    environment=measure.run_fields(),
    settings=dict(
      batch_size=batch_size,
      repeats=repeats,
      warmup=warmup,
      frames_per_chunk=frames_per_chunk or "all frames in one call",
      times="t = i / 15",
      dtype="float32",
      resolution=gcfg.resolution,
      seeds=[seed, seed + 1],
      timed="the jitted render (mapping + synthesis) blocked until ready; no transfer to the host",
    ),
  )


# ----------------------------------------------------------------------------------------------
# table4: x2 super-resolution against upsampling.


def sr_videos(generator, g_vars, z_content, z_motion, times, labels=None, frames_per_chunk=None):
  """{variant: float frames [B, T, 2R, 2R, 3]}: the INR on the 2x grid, and the normal render of
  the same latents upsampled 2x (nearest = pixel repeat; bilinear / bicubic = jax.image.resize,
  half-pixel centres, Keys cubic a = -0.5)."""
  render = functools.partial(
    sampling.render, generator, g_vars, z_content, z_motion, times, labels,
    frames_per_chunk=frames_per_chunk,
  )  # fmt: skip
  base = render()
  b, t, h, w, c = base.shape
  out = {"inr_x2": render(grid=sampling.grid_for(2))}
  out["nearest"] = jnp.repeat(jnp.repeat(base, 2, axis=2), 2, axis=3)
  for method in ("bilinear", "bicubic"):
    out[method] = jax.image.resize(base, (b, t, 2 * h, 2 * w, c), method=method)
  return out


def table4(gcfg, g_ema, source_fn, *, data_stride, cache_dir, mesh, batch_size, **overrides):
  from digan_jax.models.generator import Generator  # pylint: disable=g-import-not-at-top

  protocol = protocols.get_protocol("digan_grid16", frame_stride=data_stride, **overrides)
  source, info = source_fn(protocol, 2 * gcfg.resolution)
  i3d_vars = features.i3d_variables()
  kw = dict(mesh=mesh, batch_size=batch_size, i3d_vars=i3d_vars, progress=False)
  real_sets, real_info = real_data.real_feature_sets(source, protocol, cache_dir=cache_dir, **kw)
  generator = Generator(gcfg)
  times = protocol.fake_times()

  @jax.jit
  def render(g_vars, indices, content_seed, motion_seed):
    z_content = sampling.latents_at(content_seed, indices, gcfg.z_dim)
    z_motion = sampling.latents_at(motion_seed, indices, gcfg.motion_dim)
    labels = jax.nn.one_hot(indices % gcfg.c_dim, gcfg.c_dim) if gcfg.c_dim else None
    videos = sr_videos(generator, g_vars, z_content, z_motion, times, labels, 16)
    return {k: quantize.to_uint8(v, protocol.fake_uint8) for k, v in videos.items()}

  g_vars = jax.device_put(g_ema)
  trials = {k: {"fvd": [], "kvd": []} for k in SR_VARIANTS}
  for trial in range(protocol.num_trials):
    seeds = protocol.fake_seeds(trial)
    feats = {k: [] for k in SR_VARIANTS}
    # Video i of a trial has the i-th latents of its seeds, as the evaluator's fakes do.
    for start in range(0, protocol.num_fake, batch_size):
      indices = jnp.arange(start, min(start + batch_size, protocol.num_fake))
      for k, v in render(g_vars, indices, *seeds).items():
        feats[k].append(features.real_features(np.asarray(v), protocol, **kw))
    for k in SR_VARIANTS:
      fvd, kvd = evaluator.fvd_kvd(
        real_sets[trial % len(real_sets)], np.concatenate(feats[k]), protocol
      )
      trials[k]["fvd"].append(fvd)
      trials[k]["kvd"].append(kvd)
  rows = {
    k: dict(
      fvd=float(np.mean(v["fvd"])),
      fvd_std=float(np.std(v["fvd"])),
      kvd=float(np.mean(v["kvd"])),
      kvd_std=float(np.std(v["kvd"])),
      fvd_trials=v["fvd"],
    )
    for k, v in trials.items()
  }
  return dict(
    rows=rows,
    card=protocol.card(),
    dataset_fingerprint=real_info["dataset_fingerprint"],
    real_selection=real_info.get("selection"),
    real_cache=real_info["cache"],
    real_clips=dict(info, resize=_resize_note(info)),
    resolution=dict(generator=gcfg.resolution, evaluated=2 * gcfg.resolution),
    variants=dict(
      inr_x2="the INR rendered on CoordGrid.super_resolution(2) (2x the points over the same view)",
      nearest="normal render, each pixel repeated 2x2",
      bilinear="normal render, jax.image.resize bilinear (half-pixel centres)",
      bicubic="normal render, jax.image.resize bicubic (Keys a = -0.5, half-pixel centres)",
      order="render in float, upsample in float, then the protocol's uint8 rule, then I3D",
    ),
  )


# ----------------------------------------------------------------------------------------------
# fig10: motion discriminator logits of a far real pair against Δt.


def motion_logits(dcfg, d_vars, frame_lo, frame_hi, delta_t, labels=None):
  """D_M logits [B] of frames [B, H, W, 3] (float, [-1, 1]) with the Δt plane [B]."""
  from digan_jax.models.discriminator import DualDiscriminator, pack_pair  # pylint: disable=g-import-not-at-top

  x7 = pack_pair(frame_lo, frame_hi, delta_t)
  return DualDiscriminator(dcfg).apply(d_vars, x7, labels, method=DualDiscriminator.motion)[:, 0]


def real_pair_clips(source, num_clips: int, seed: int):
  """(uint8 clips [N, 16, H, W, 3], labels [N]) from a ClipSource (padding rows dropped)."""
  videos, labels = [], []
  for batch in source(num_clips, seed):
    valid = np.asarray(batch["valid"], bool)
    videos.append(np.asarray(batch["video"])[valid])
    labels.append(np.asarray(batch["label"])[valid])
  return np.concatenate(videos)[:num_clips], np.concatenate(labels)[:num_clips]


def fig10(dcfg, d_vars, clips, labels, delta_ts, batch_size: int) -> dict:
  """Logits [len(delta_ts), N] of D_M on (first, last frame) of each clip with each Δt.

  All clips of a batch share the Δt; D_M's minibatch-std groups (4) mix clips of one batch, so the
  clip count is cut to a multiple of the batch and the batch to a multiple of the group."""
  group = min(dcfg.mbstd_group_size, batch_size) if dcfg.mbstd_num_channels else 1
  if batch_size % group or len(clips) < batch_size:
    raise UserError(
      f"fig10: --batch_size={batch_size} must be a multiple of D's minibatch-std group ({group}) "
      f"and at most the {len(clips)} clips"
    )
  n = len(clips) // batch_size * batch_size
  frames = clips[:n].astype(np.float32) / 127.5 - 1.0  # the pipeline's scaling of real frames
  onehot = jax.nn.one_hot(labels[:n], dcfg.c_dim) if dcfg.c_dim else None
  fn = jax.jit(functools.partial(motion_logits, dcfg))
  logits = np.zeros((len(delta_ts), n), np.float32)
  for i, dt in enumerate(delta_ts):
    for s in range(0, n, batch_size):
      lab = None if onehot is None else onehot[s : s + batch_size]
      lo, hi = frames[s : s + batch_size, 0], frames[s : s + batch_size, -1]
      logits[i, s : s + batch_size] = fn(d_vars, lo, hi, jnp.full((batch_size,), dt), lab)
  return dict(
    delta_t=[float(d) for d in delta_ts],
    mean_logit=logits.mean(axis=1).tolist(),
    std_logit=logits.std(axis=1).tolist(),
    num_clips=n,
    logits=logits,
  )


def plot_fig10(result: dict, path, title: str) -> None:
  """Mean D_M logit against Δt with a ±1 std band; a dashed line at the pair's true Δt (1)."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top

  from digan_jax.data import image_ops  # pylint: disable=g-import-not-at-top
  from digan_jax.plot_eval import _CURVE, _FLOOR, _GRID, _font, _ticks  # pylint: disable=g-import-not-at-top

  size, (left, right, top, bottom) = (560, 380), (70, 18, 40, 52)
  dts, mean, std = (np.asarray(result[k]) for k in ("delta_t", "mean_logit", "std_logit"))
  lo, hi = float((mean - std).min()), float((mean + std).max())
  pad = 0.08 * max(hi - lo, 1e-6)
  lo, hi = lo - pad, hi + pad
  img = Image.new("RGB", size, "white")
  draw = ImageDraw.Draw(img)
  x0, x1, y0, y1 = left, size[0] - right, top, size[1] - bottom
  px = lambda d: x0 + (x1 - x0) * d
  py = lambda v: y1 - (y1 - y0) * (v - lo) / (hi - lo)
  small = _font(12)
  for v in _ticks(lo, hi):
    draw.line([(x0, py(v)), (x1, py(v))], fill=_GRID)
    draw.text((x0 - 6, py(v)), f"{v:.3g}", fill="black", font=small, anchor="rm")
  for d in _ticks(0.0, 1.0):
    draw.line([(px(d), y1), (px(d), y1 + 4)], fill="black")
    draw.text((px(d), y1 + 6), f"{d:g}", fill="black", font=small, anchor="ma")
  band = [(px(d), py(v)) for d, v in zip(dts, mean + std)]
  band += [(px(d), py(v)) for d, v in zip(dts[::-1], (mean - std)[::-1])]
  draw.polygon(band, fill=(205, 220, 240))
  for y in np.arange(y0, y1, 12):
    draw.line([(px(1.0) - 1, y), (px(1.0) - 1, min(y + 6, y1))], fill=_FLOOR, width=2)
  points = [(px(d), py(v)) for d, v in zip(dts, mean)]
  draw.line(points, fill=_CURVE, width=2)
  for x, y in points:
    draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=_CURVE)
  draw.rectangle([x0, y0, x1, y1], outline="black")
  draw.text(((x0 + x1) / 2, 10), title, fill="black", font=_font(15), anchor="ma")
  draw.text(
    ((x0 + x1) / 2, size[1] - 20), "delta-t plane fed to D_M", fill="black", font=small, anchor="ma"
  )
  draw.text((8, (y0 + y1) / 2), "logit", fill="black", font=_font(14), anchor="lm")
  fileio.write_bytes(path, image_ops.encode_image(np.asarray(img), "png"))


# ----------------------------------------------------------------------------------------------
# CLI.


def _define_flags(fv: flags.FlagValues) -> flags.FlagValues:
  flags.DEFINE_enum("measure", None, MEASURES, "which measurement", flag_values=fv)
  flags.DEFINE_string(
    "workdir",
    None,
    "the run's directory (config.json, checkpoints/; its dataset via the config): needed by "
    "table2, table4 and fig10",
    flag_values=fv,
  )
  flags.DEFINE_string(
    "checkpoint", None, "checkpoint directory (default WORKDIR/checkpoints)", flag_values=fv
  )
  flags.DEFINE_string(
    "output", None, "directory for <measure>.json (and fig10.png)", flag_values=fv
  )
  flags.DEFINE_integer("step", None, "checkpoint step (default: latest)", flag_values=fv)
  flags.DEFINE_string("data_dir", None, "override config.data.data_dir", flag_values=fv)
  flags.DEFINE_integer(
    "num_videos", 0, "FVD: fake and real clips per trial (0: the protocol's 2048)", flag_values=fv
  )
  flags.DEFINE_integer("num_trials", 0, "FVD: trials (0: the protocol's 10)", flag_values=fv)
  flags.DEFINE_integer(
    "interp_real_stride",
    0,
    "table2: real stride of the 64-frame interpolation clips (0: nearest to "
    "config.data.frame_stride * 15 / 63, at least 1)",
    flag_values=fv,
  )
  flags.DEFINE_multi_enum(
    "table2_rows", list(TABLE2_ROWS), TABLE2_ROWS, "table2: the rows to measure", flag_values=fv
  )
  flags.DEFINE_integer(
    "batch_size",
    16,
    "videos per jitted call (FVD, table3 timing) / clips per D call (fig10)",
    flag_values=fv,
  )
  flags.DEFINE_integer(
    "frames_per_chunk",
    16,
    "frames rendered per step inside a call (FVD memory); table3 renders all frames at once "
    "unless this flag is given",
    flag_values=fv,
  )
  flags.DEFINE_integer("repeats", 10, "table3: timed calls per frame count", flag_values=fv)
  flags.DEFINE_integer("warmup", 2, "table3: untimed calls after compiling", flag_values=fv)
  flags.DEFINE_integer("num_clips", 256, "fig10: real clips", flag_values=fv)
  flags.DEFINE_integer("num_delta_t", 16, "fig10: Δt values, linspace(0, 1, n)", flag_values=fv)
  flags.DEFINE_integer(
    "seed", 0, "fig10: seed of the real clip draw; table3: latents", flag_values=fv
  )
  flags.mark_flags_as_required(["measure", "output"], flag_values=fv)
  return fv


def _measure(fv, step_out: dict) -> dict:
  """The chosen measurement's fields (everything but checkpoint and step)."""
  from digan_jax import checkpointing  # pylint: disable=g-import-not-at-top

  checkpoint = fv.checkpoint or (fv.workdir and f"{fv.workdir}/checkpoints")
  if not checkpoint:
    raise UserError("pass --workdir (the run's directory) or --checkpoint")
  try:
    gcfg, g_ema, step = checkpointing.restore_generator(checkpoint, fv.step)
  except FileNotFoundError as e:
    raise UserError(str(e)) from e
  step_out.update(checkpoint=str(checkpoint), step=step)
  if fv.measure == "table3":
    chunk = fv.frames_per_chunk if fv["frames_per_chunk"].present else 0
    return table3(
      gcfg, g_ema, batch_size=fv.batch_size, repeats=fv.repeats, warmup=fv.warmup,
      frames_per_chunk=chunk, seed=fv.seed,
    )  # fmt: skip
  if not fv.workdir:
    raise UserError(
      f"--measure={fv.measure} needs real clips: pass --workdir (the run's directory)"
    )
  config = run_config(fv.workdir)
  if int(config.data.get("num_frames", TRAIN_FRAMES)) != TRAIN_FRAMES:
    # The paper's times (t = i / 15, linspace(0, 1, 64)) are in units of a 16-frame clip.
    raise UserError(
      f"the paper's measures assume 16-frame training clips; this run trains on "
      f"{config.data.num_frames}"
    )
  if fv.data_dir:
    config.data.data_dir = fv.data_dir
  source_fn = functools.partial(real_source, config, fv.workdir)
  data_stride = _data_stride(config)
  overrides = {}
  if fv.num_videos:
    overrides.update(num_fake=fv.num_videos, num_real=fv.num_videos)
  if fv.num_trials:
    overrides.update(num_trials=fv.num_trials)
  common = dict(
    data_stride=data_stride,
    cache_dir=fileio.as_path(fv.workdir) / "eval" / "real_cache",
    mesh=_mesh(),
    batch_size=fv.batch_size,
  )
  if fv.measure == "table2":
    return table2(
      gcfg,
      g_ema,
      source_fn,
      interp_real_stride=fv.interp_real_stride,
      rows=fv.table2_rows,
      **common,
      **overrides,
    )
  if fv.measure == "table4":
    return table4(gcfg, g_ema, source_fn, **common, **overrides)
  # fig10: real training-length clips at the training stride, the pair (frame 0, frame 15).
  try:
    dcfg, d_vars = checkpointing.restore_discriminator(checkpoint, step)
  except FileNotFoundError as e:
    raise UserError(f"fig10 needs the discriminator: {e}") from e
  protocol = protocols.get_protocol("digan_grid16", frame_stride=data_stride)
  source, info = source_fn(protocol, dcfg.resolution)
  clips, labels = real_pair_clips(source, fv.num_clips, fv.seed)
  delta_ts = np.linspace(0.0, 1.0, fv.num_delta_t)
  result = fig10(dcfg, d_vars, clips, labels, delta_ts, fv.batch_size)
  result.pop("logits")
  plot_fig10(
    result, fileio.as_path(fv.output) / "fig10.png", f"D_M logit of a far real pair (step {step})"
  )
  return dict(
    **result,
    pair="frames 0 and 15 of a 16-frame real clip at the training stride (true Δt = 1)",
    real_clips=dict(info, resize=_resize_note(info), seed=fv.seed, requested=fv.num_clips),
    settings=dict(
      batch_size=fv.batch_size,
      frames="uint8 / 127.5 - 1 (as training feeds reals), no DiffAugment",
      minibatch_std="groups of min(4, batch) clips of one batch, all with the same Δt",
      conditional="the clips' own labels" if dcfg.c_dim else None,
    ),
    plot="fig10.png",
  )


def main(argv, fv: flags.FlagValues = flags.FLAGS) -> int:
  cli_flags.reject_positional(argv)
  head: dict[str, Any] = {"measure": fv.measure}
  try:
    result = _measure(fv, head)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  out = {**head, **result}
  path = fileio.as_path(fv.output) / f"{fv.measure}.json"
  fileio.write_json(path, out)
  print(f"wrote {path}")
  return 0


def run(argv) -> int:
  """The tool in this process (program name first in argv); returns the exit code."""
  return cli_flags.run_in_process(_define_flags, main, argv)


if __name__ == "__main__":
  cli_flags.run_as_program(_define_flags, main)
