"""FVD/KVD evaluation: named protocols, sharded in-graph feature extraction, cached real features,
and result files that carry a protocol card.

This module owns:
- `Protocol`, the frozen description of one way of computing FVD/KVD (sample counts, trials, frames,
  frame stride, real-clip selection, fake quantisation, resize to 224, covariance convention), and
  the registry of the literature's protocols (spec fvd_protocol.md §1-3, §12): `digan`,
  `stylegan_v_*`, `proxy`, `tf_reference`. `get_protocol(name, **overrides)` returns one, with
  the overrides recorded.
- `fake_features`: latents -> generator -> uint8 (protocol rule) -> resize to 224 -> I3D logits, all
  in one jitted graph, batch-sharded over a mesh.
- `real_features`: uint8 clips (an array or an iterator of pipeline batches) -> the same I3D path.
- the real-feature cache (one .npz per protocol and dataset fingerprint, written atomically).
- `evaluate` (features -> float64 FVD/KVD per trial -> mean +- population std, result JSON with the
  protocol card) and `evaluate_checkpoint`, which the `--mode=eval` entry point calls.

Multi-process runs: every process calls these functions with the same arguments (collective). Fake
latents are indexed globally, so each device renders its own slice of the batch; real batches from
the data pipeline are process-local shares (as `data.pipeline.make_eval_iterator` yields them) and
are assembled into global arrays with `jax.make_array_from_process_local_data`. Features are then
gathered to every host with `multihost_utils.process_allgather`; only process 0 writes files.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import time
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from digan_jax import fileio, sharding
from digan_jax.evaluation import i3d
from digan_jax.evaluation import metrics

# A training clip has 16 frames at t = i / 15 (spec digan_reference.md "Time"); fakes are rendered
# on that frame grid, so 128-frame protocols extrapolate to t = 127 / 15 like longer real clips.
TRAIN_CLIP_FRAMES = 16
# Bump when the cache file layout or the feature graph changes meaning.
CACHE_VERSION = 1
# Mesh axes the batch may be split over (sharding.py's mesh has both; a plain ('data',) mesh works).
BATCH_AXIS_NAMES = ("data", "fsdp")

_UINT8_MODES = ("floor", "round")
_RESIZES = ("center_crop", "direct")
_COVARIANCES = ("unbiased", "biased")
_SQRT_METHODS = ("eigh", "svd", "sqrtm")
_REAL_SAMPLINGS = ("windows", "per_video")


# ----------------------------------------------------------------------------------------------
# Protocols.

@dataclasses.dataclass(frozen=True)
class Protocol:
  """One FVD/KVD protocol. Every field changes the number; all of them go into the card.

  num_fake / num_real: clips per trial. num_trials: independent repeats (fresh fakes each; fresh
  reals too when `resample_real`), reported as mean +- population std. num_frames / frame_stride:
  clip length and the gap between its frames (reals and fakes alike). fake_uint8: how generated
  [-1, 1] frames are quantised ('floor' DIGAN, 'round' StyleGAN-V). resize: 'center_crop' (shorter
  side to 224, half-pixel bilinear, centre crop) or 'direct' (TF1-legacy bilinear to 224x224).
  covariance: 'unbiased' (N - 1) or 'biased' (N). sqrt_method: the matrix square-root route of the
  reference (all agree to ~1e-10 in float64, spec §9). real_sampling: 'windows' (uniform over all
  clip windows of all videos) or 'per_video' (one random window per video). seed: base seed of fake
  latents and real-clip draws. overrides: (field, value) pairs changed from the registered protocol.
  """
  name: str
  num_fake: int
  num_real: int
  num_trials: int
  num_frames: int = 16
  frame_stride: int = 1
  fake_uint8: str = "floor"
  resize: str = "center_crop"
  covariance: str = "unbiased"
  sqrt_method: str = "svd"
  real_sampling: str = "windows"
  resample_real: bool = True
  seed: int = 42
  reference: str = ""
  overrides: tuple = ()

  def __post_init__(self):
    for field, allowed in (("fake_uint8", _UINT8_MODES), ("resize", _RESIZES),
                           ("covariance", _COVARIANCES), ("sqrt_method", _SQRT_METHODS),
                           ("real_sampling", _REAL_SAMPLINGS)):
      if getattr(self, field) not in allowed:
        raise ValueError(f"protocol {self.name!r}: {field}={getattr(self, field)!r}; "
                         f"expected one of {allowed}")
    if self.num_fake < 2 or self.num_real < 2:
      raise ValueError(f"protocol {self.name!r}: FVD needs at least 2 fake and 2 real clips, got "
                       f"num_fake={self.num_fake}, num_real={self.num_real}")
    if self.num_trials < 1 or self.frame_stride < 1:
      raise ValueError(f"protocol {self.name!r}: num_trials and frame_stride must be >= 1")
    if self.num_frames < i3d.MIN_FRAMES:
      raise ValueError(f"protocol {self.name!r}: num_frames={self.num_frames}, but I3D needs at "
                       f"least {i3d.MIN_FRAMES} frames")

  @property
  def frame_span(self) -> int:
    """Source frames one clip covers."""
    return (self.num_frames - 1) * self.frame_stride + 1

  @property
  def num_real_sets(self) -> int:
    return self.num_trials if self.resample_real else 1

  def fake_times(self) -> np.ndarray:
    """Generator times of the clip's frames: frame index k * stride <-> t = k * stride / 15."""
    frame_index = np.arange(self.num_frames) * self.frame_stride
    return (frame_index / (TRAIN_CLIP_FRAMES - 1)).astype(np.float32)

  def fake_seeds(self, trial: int) -> tuple[int, int]:
    """(content seed, motion seed) of a trial, as `python -m digan_jax.sampling --seed` uses them
    (motion = content + 1), so any evaluated video can be rendered again."""
    content = self.seed + 2 * trial
    return content, content + 1

  def real_seed(self, trial: int) -> int:
    return self.seed + (trial if self.resample_real else 0)

  def real_fields(self) -> dict[str, Any]:
    """The fields that decide the real features (the cache key)."""
    return dict(num_real=self.num_real, num_real_sets=self.num_real_sets,
                num_frames=self.num_frames, frame_stride=self.frame_stride, resize=self.resize,
                real_sampling=self.real_sampling, seed=self.seed)

  def card(self) -> dict[str, Any]:
    fields = dataclasses.asdict(self)
    fields["overrides"] = {k: v for k, v in self.overrides}
    fields.update(
        frame_span=self.frame_span,
        fake_times=f"t = frame_index / {TRAIN_CLIP_FRAMES - 1} (frame_index = k * frame_stride)",
        fake_seeds=[list(self.fake_seeds(t)) for t in range(self.num_trials)],
        real_seeds=[self.real_seed(t) for t in range(self.num_real_sets)],
        fake_labels="one-hot of video index mod c_dim (class-conditional generators only)",
        real_uint8="uint8 as delivered; float clips in [-1, 1] are rounded to the nearest level",
        statistics_dtype="float64",
        std="population (ddof=0) over trials",
        kvd="unbiased MMD^2, kernel (x.y/400 + 1)^3, one block over all clips (DIGAN), float64",
        features="I3D Kinetics-400 time-averaged logits [400] (TF-Hub RGB/inception_i3d/Mean:0), "
                 "float32, highest precision",
        i3d_weights_sha256=i3d.WEIGHTS_SHA256,
    )
    return fields


_REGISTRY: dict[str, Protocol] = {p.name: p for p in (
    Protocol(
        name="digan", num_fake=2048, num_real=2048, num_trials=10, num_frames=16,
        fake_uint8="floor", resize="center_crop", covariance="unbiased", sqrt_method="svd",
        real_sampling="windows", resample_real=True, seed=42,
        reference="DIGAN src/scripts/compute_fvd_kvd.py (spec §2, §12); FD/KVD in float64"),
    Protocol(
        name="stylegan_v_fvd2048_16f", num_fake=2048, num_real=2048, num_trials=1, num_frames=16,
        fake_uint8="round", resize="center_crop", covariance="biased", sqrt_method="sqrtm",
        real_sampling="per_video", resample_real=False, seed=0,
        reference="StyleGAN-V fvd2048_16f (spec §3); reals: one random window for each of 2048 "
                  "shuffled videos (SV takes the first 2048 in directory order); resize kernel of "
                  "SV's TorchScript unverified (§11), half-pixel bilinear used"),
    Protocol(
        name="stylegan_v_fvd2048_128f", num_fake=2048, num_real=2048, num_trials=1, num_frames=128,
        fake_uint8="round", resize="center_crop", covariance="biased", sqrt_method="sqrtm",
        real_sampling="per_video", resample_real=False, seed=0,
        reference="StyleGAN-V fvd2048_128f (spec §3); videos shorter than 128 frames are skipped"),
    Protocol(
        name="stylegan_v_fvd2048_128f_subsample8f", num_fake=2048, num_real=2048, num_trials=1,
        num_frames=16, frame_stride=8, fake_uint8="round", resize="center_crop",
        covariance="biased", sqrt_method="sqrtm", real_sampling="per_video", resample_real=False,
        seed=0, reference="StyleGAN-V fvd2048_128f_subsample8f (spec §3): 16 frames every 8th"),
    Protocol(
        name="proxy", num_fake=512, num_real=512, num_trials=5, num_frames=16,
        fake_uint8="floor", resize="center_crop", covariance="unbiased", sqrt_method="svd",
        real_sampling="windows", resample_real=False, seed=42,
        reference="DIGAN in-training fvd_proxy (spec §2.8): 512 vs 512, the same reals for all 5 "
                  "repeats; not comparable with 2048-clip numbers"),
    Protocol(
        name="tf_reference", num_fake=2048, num_real=2048, num_trials=10, num_frames=16,
        fake_uint8="floor", resize="direct", covariance="unbiased", sqrt_method="svd",
        real_sampling="windows", resample_real=True, seed=42,
        reference="official google-research FVD preprocessing (spec §1): TF1-legacy bilinear "
                  "straight to 224x224; counts and trials as DIGAN"),
)}
_ALIASES = {"stylegan_v": "stylegan_v_fvd2048_16f"}


def protocol_names() -> list[str]:
  return sorted(_REGISTRY) + sorted(_ALIASES)


def get_protocol(name: str | Protocol, **overrides) -> Protocol:
  """A registered protocol by name, optionally with fields changed (recorded in its card).

  Overrides are for tests and small runs, e.g. get_protocol('proxy', num_fake=64, num_real=64);
  the name stays, so results say which protocol was scaled down.
  """
  if isinstance(name, Protocol):
    base = name
  else:
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
      raise ValueError(f"unknown FVD protocol {name!r}; valid names: {', '.join(protocol_names())}")
    base = _REGISTRY[key]
  if not overrides:
    return base
  settable = {f.name for f in dataclasses.fields(Protocol)} - {"name", "overrides", "reference"}
  unknown = sorted(set(overrides) - settable)
  if unknown:
    raise ValueError(f"unknown protocol field(s) {unknown}; settable: {sorted(settable)}")
  recorded = dict(base.overrides)
  recorded.update(overrides)
  return dataclasses.replace(base, **overrides, overrides=tuple(sorted(recorded.items())))


# ----------------------------------------------------------------------------------------------
# Mesh and batching helpers.

def default_mesh() -> Mesh:
  """All devices of all processes on one 'data' axis."""
  return Mesh(np.array(jax.devices()), ("data",))


def _batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  axes = tuple(a for a in mesh.axis_names if a in BATCH_AXIS_NAMES)
  if not axes:
    raise ValueError(f"the mesh has axes {mesh.axis_names}; evaluation splits the batch over "
                     f"{BATCH_AXIS_NAMES}, so the mesh needs at least one of them")
  return NamedSharding(mesh, P(axes, *([None] * (ndim - 1))))


def _batch_devices(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in mesh.axis_names if a in BATCH_AXIS_NAMES)


def _global_batch(mesh: Mesh, batch_size: int) -> int:
  # Round up so the batch splits evenly over the devices.
  devices = _batch_devices(mesh)
  return max(1, math.ceil(batch_size / devices)) * devices


def _to_host(x: jax.Array) -> np.ndarray:
  if x.is_fully_addressable:
    return np.asarray(x)
  from jax.experimental import multihost_utils  # only multi-process runs get here
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _progress(total: int, desc: str, enabled: bool):
  from tqdm.auto import tqdm
  return tqdm(total=total, desc=desc, unit="clip", leave=False,
              disable=not enabled or jax.process_index() != 0)


_I3D_VARIABLES: dict[str, Any] = {}


def i3d_variables(path=None):
  """The Kinetics-400 I3D variables, loaded once per process and path."""
  key = str(path or i3d.default_weights_path())
  if key not in _I3D_VARIABLES:
    _I3D_VARIABLES[key] = i3d.load_weights(path)
  return _I3D_VARIABLES[key]


# ----------------------------------------------------------------------------------------------
# In-graph feature extraction.

def latents_at(seed, indices, dim: int):
  """Latents of videos `indices` for a seed; equals sampling.latents(seed, n, dim)[indices]."""
  key = jax.random.key(seed)
  return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (dim,)))(indices)


@functools.lru_cache(maxsize=16)
def _fake_fn(generator, times: tuple, fake_uint8: str, resize: str,
             frames_per_chunk: int | None, mesh: Mesh):
  """The jitted fake-feature graph; cached so trials and repeated calls reuse one compilation."""
  from digan_jax import sampling  # local: keeps the evaluator importable without the models

  cfg = generator.config
  times = np.asarray(times, np.float32)

  def graph(g_vars, i3d_vars, indices, content_seed, motion_seed):
    z_content = latents_at(content_seed, indices, cfg.z_dim)
    z_motion = latents_at(motion_seed, indices, cfg.motion_dim)
    labels = jax.nn.one_hot(indices % cfg.c_dim, cfg.c_dim) if cfg.c_dim else None
    video = sampling.render(generator, g_vars, z_content, z_motion, jnp.asarray(times), labels,
                            frames_per_chunk=frames_per_chunk)
    video = i3d.to_uint8(video, fake_uint8)
    return i3d.i3d_logits(i3d_vars, i3d.preprocess_for_i3d(video, resize))

  return jax.jit(graph, out_shardings=_batch_sharding(mesh, 2))


@functools.lru_cache(maxsize=16)
def _real_fn(resize: str, mesh: Mesh):
  def graph(i3d_vars, video_uint8):
    return i3d.i3d_logits(i3d_vars, i3d.preprocess_for_i3d(video_uint8, resize))
  return jax.jit(graph, out_shardings=_batch_sharding(mesh, 2))


def _as_generator(generator):
  from digan_jax.models.generator import Generator, GeneratorConfig
  if isinstance(generator, GeneratorConfig):
    return Generator(generator)
  if not isinstance(generator, Generator):
    raise TypeError(f"expected a Generator or GeneratorConfig, got {type(generator).__name__}")
  return generator


def fake_features(generator, g_ema_vars, protocol: Protocol, seed: int,
                  motion_seed: int | None = None, *, num: int | None = None,
                  mesh: Mesh | None = None, batch_size: int = 16, i3d_vars=None,
                  frames_per_chunk: int | None = 16, progress: bool = True) -> np.ndarray:
  """I3D features [num, 400] (float32) of `num` (default protocol.num_fake) generated clips.

  Video i uses the i-th latents of `seed` (content) and `motion_seed` (default seed + 1), the
  protocol's frame times, uint8 rule and resize. Rendering, quantisation, resize and I3D run in one
  jitted graph per batch, split over the mesh's batch axes (batch_size is rounded up to a multiple
  of the device count); the last batch renders a few extra videos that are dropped.
  """
  generator = _as_generator(generator)
  mesh = mesh or default_mesh()
  num = protocol.num_fake if num is None else num
  motion_seed = seed + 1 if motion_seed is None else motion_seed
  i3d_vars = i3d_variables() if i3d_vars is None else i3d_vars
  replicated = NamedSharding(mesh, P())
  batch = _global_batch(mesh, batch_size)
  index_sharding = _batch_sharding(mesh, 1)
  fn = _fake_fn(generator, tuple(protocol.fake_times().tolist()), protocol.fake_uint8,
                protocol.resize, frames_per_chunk, mesh)
  g_vars = jax.device_put(g_ema_vars, replicated)
  i3d_vars = jax.device_put(i3d_vars, replicated)
  seeds = [jax.device_put(jnp.asarray(s, jnp.uint32), replicated) for s in (seed, motion_seed)]
  out = []
  with _progress(num, f"{protocol.name} fake", progress) as bar:
    for start in range(0, num, batch):
      indices = jax.make_array_from_callback(
          (batch,), index_sharding,
          lambda idx, start=start: np.arange(start, start + batch, dtype=np.int32)[idx])
      out.append(_to_host(fn(g_vars, i3d_vars, indices, *seeds)))
      bar.update(min(batch, num - start))
  return np.concatenate(out)[:num]


def _iter_batches(clips, batch_size: int):
  """Normalises the accepted real inputs to (uint8 video [b, T, H, W, 3], valid [b]) batches."""
  if isinstance(clips, (np.ndarray, jax.Array)):
    for start in range(0, clips.shape[0], batch_size):
      video = np.asarray(clips[start:start + batch_size])
      yield video, np.ones(video.shape[0], bool)
    return
  for item in clips:
    if isinstance(item, Mapping):
      video = np.asarray(item["video"])
      valid = np.asarray(item.get("valid", np.ones(video.shape[0], bool)), bool)
    else:
      video = np.asarray(item)
      valid = np.ones(video.shape[0], bool)
    yield video, valid


def _clips_to_uint8(video: np.ndarray) -> np.ndarray:
  if video.dtype == np.uint8:
    return video
  if np.issubdtype(video.dtype, np.floating):
    # Pipeline floats are uint8 / 127.5 - 1: rounding recovers the stored level exactly, where
    # floor could drop a level through float error.
    return np.clip(np.rint((video.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
  raise TypeError(f"real clips must be uint8 or float in [-1, 1], got dtype {video.dtype}")


def real_features(clips, protocol: Protocol, *, mesh: Mesh | None = None, batch_size: int = 16,
                  i3d_vars=None, progress: bool = True, total: int | None = None) -> np.ndarray:
  """I3D features [N, 400] (float32) of real clips, through the same graph as the fakes.

  clips: an array [N, T, H, W, 3] (uint8, or float in [-1, 1] as the data pipeline's default), or
  an iterable of batches (arrays, or dicts with 'video' and optional 'valid' as
  `data.pipeline.make_eval_iterator` yields them; in multi-process runs each process passes its own
  share, and padding rows with valid=False are dropped). T must be protocol.num_frames: clips are
  already subsampled by the protocol's frame_stride.
  """
  mesh = mesh or default_mesh()
  i3d_vars = i3d_variables() if i3d_vars is None else i3d_vars
  replicated = NamedSharding(mesh, P())
  i3d_vars = jax.device_put(i3d_vars, replicated)
  video_sharding = _batch_sharding(mesh, 5)
  fn = _real_fn(protocol.resize, mesh)
  is_array = isinstance(clips, (np.ndarray, jax.Array))
  if is_array:
    total = clips.shape[0]
    batch = _global_batch(mesh, min(batch_size, total))  # small sets need no padding to batch_size
  # Each process pads its rows to a multiple of its own devices (equal counts on every process).
  local_multiple = max(1, _batch_devices(mesh) // jax.process_count())
  out = []
  with _progress(total or 0, f"{protocol.name} real", progress) as bar:
    for video, valid in _iter_batches(clips, batch if is_array else batch_size):
      video = _clips_to_uint8(video)
      if video.ndim != 5 or video.shape[1] != protocol.num_frames or video.shape[-1] != 3:
        raise ValueError(f"real clips must be [N, {protocol.num_frames}, H, W, 3] for protocol "
                         f"{protocol.name!r}, got a batch of shape {video.shape}")
      rows = video.shape[0]
      if is_array:
        # An array is global (the same on every process): pad to the fixed batch, one compile.
        pad = batch - rows
      else:
        pad = -rows % local_multiple
      if pad:
        video = np.concatenate([video, np.repeat(video[-1:], pad, axis=0)])
        valid = np.concatenate([valid, np.zeros(pad, bool)])
      if is_array:
        arr = jax.make_array_from_callback(video.shape, video_sharding, lambda idx, v=video: v[idx])
        keep = valid
      else:
        arr = jax.make_array_from_process_local_data(
            video_sharding, video, (video.shape[0] * jax.process_count(),) + video.shape[1:])
        keep = valid if jax.process_count() == 1 else _gather_mask(valid)
      feats = _to_host(fn(i3d_vars, arr))
      out.append(feats[keep])
      bar.update(int(valid.sum()) if jax.process_count() == 1 else int(keep.sum()))
  if not out:
    raise ValueError(f"no real clips were given for protocol {protocol.name!r}")
  return np.concatenate(out)


def _gather_mask(valid: np.ndarray) -> np.ndarray:
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(valid, tiled=True)).astype(bool)


# ----------------------------------------------------------------------------------------------
# Real clip sources and the real-feature cache.

@dataclasses.dataclass(frozen=True)
class ClipSource:
  """Real clips on demand: `make(num_clips, seed)` -> iterable of batches of uint8 clips.

  `fingerprint` names the data (dataset, split, version, resolution): it keys the feature cache.
  """
  make: Callable[[int, int], Iterable]
  fingerprint: str
  description: str = ""

  def __call__(self, num_clips: int, seed: int) -> Iterable:
    return self.make(num_clips, seed)


def _pipeline_policy(protocol: Protocol) -> str:
  return {"windows": "clips", "per_video": "videos"}[protocol.real_sampling]


def clip_source_from_videos(videos, protocol: Protocol, *, labels=None,
                            resolution: int | None = None, batch_size: int = 16) -> ClipSource:
  """In-memory uint8 videos ([L_i, H, W, 3] each) -> a ClipSource following the protocol's real
  sampling (windows with hop 1 and the protocol's frame stride). resolution: resize frames first,
  bilinear without antialias (DIGAN resizes reals to the generator's resolution). The fingerprint
  hashes the videos' bytes."""
  from digan_jax.data import pipeline

  videos = list(videos)
  labels = np.zeros(len(videos), np.int32) if labels is None else np.asarray(labels, np.int32)
  digest = hashlib.sha256()
  for video in videos:
    video = np.ascontiguousarray(video, np.uint8)
    digest.update(str(video.shape).encode())
    digest.update(video.tobytes())

  def make(num_clips, seed):
    return pipeline.make_numpy_eval_iterator(
        videos, labels, batch_size, num_frames=protocol.num_frames, resolution=resolution,
        seed=seed, process_index=jax.process_index(), process_count=jax.process_count(),
        frame_stride=protocol.frame_stride, clip_hop=1, num_clips=num_clips,
        policy=_pipeline_policy(protocol), dtype="uint8")

  fingerprint = (f"memory:{len(videos)}videos:r{resolution or 'native'}:"
                 f"sha256={digest.hexdigest()[:16]}")
  return ClipSource(make, fingerprint, f"{len(videos)} in-memory videos")


def clip_source_from_dataset(data_dir, name: str, split: str, protocol: Protocol, *,
                             resolution: int | None = None, batch_size: int = 16) -> ClipSource:
  """A prepared dataset split (data.pipeline's tf.data eval iterator, uint8) -> a ClipSource.

  DIGAN evaluates UCF-101 on 'train+test'. resolution: resize reals to the generator's resolution.
  """
  from digan_jax.data import pipeline, storage

  dataset = storage.open_dataset(data_dir, name, split)

  def make(num_clips, seed):
    return pipeline.make_eval_iterator(
        data_dir, name, split, batch_size, num_frames=protocol.num_frames, resolution=resolution,
        seed=seed, process_index=jax.process_index(), process_count=jax.process_count(),
        frame_stride=protocol.frame_stride, clip_hop=1, num_clips=num_clips,
        policy=_pipeline_policy(protocol), dtype="uint8", dataset=dataset)

  version = dataset.info.get("version", "?")
  fingerprint = (f"{name}/{split}:v{version}:{len(dataset)}videos:"
                 f"{int(dataset.lengths.sum())}frames:r{resolution or dataset.resolution}")
  return ClipSource(make, fingerprint, f"{name} {split} ({dataset.dataset_dir})")


def real_cache_path(cache_dir, protocol: Protocol, dataset_fingerprint: str) -> epath.Path:
  """<cache_dir>/real_<protocol>_<sha of the real-deciding protocol fields + fingerprint>.npz."""
  key = json.dumps({"protocol": protocol.real_fields(), "dataset": dataset_fingerprint,
                    "i3d": i3d.WEIGHTS_SHA256, "version": CACHE_VERSION}, sort_keys=True)
  digest = hashlib.sha256(key.encode()).hexdigest()[:20]
  return fileio.as_path(cache_dir) / f"real_{protocol.name}_{digest}.npz"


def real_feature_sets(real_clips, protocol: Protocol, *, dataset_fingerprint: str | None = None,
                      cache_dir=None, mesh: Mesh | None = None, batch_size: int = 16,
                      i3d_vars=None, progress: bool = True) -> tuple[np.ndarray, dict]:
  """The protocol's real features [num_real_sets, num_real, 400] and a dict describing them.

  real_clips: a ClipSource (asked for num_real fresh clips per set, seeded with
  protocol.real_seed(set)), or a fixed array of clips [N, T, H, W, 3] with N >= num_real (the
  first num_real when reals are not resampled; otherwise a seeded subset per trial, the whole
  array's features being computed once). With cache_dir and a fingerprint (a ClipSource brings
  its own), the sets are read from / written to the cache.
  """
  if isinstance(real_clips, ClipSource):
    dataset_fingerprint = dataset_fingerprint or real_clips.fingerprint
  elif not isinstance(real_clips, (np.ndarray, jax.Array)):
    raise TypeError("real_clips must be a ClipSource (clip_source_from_dataset / "
                    "clip_source_from_videos) or an array [N, T, H, W, 3] of clips, "
                    f"got {type(real_clips).__name__}")
  info = {"dataset_fingerprint": dataset_fingerprint, "cache": None, "seconds": 0.0}
  path = None
  if cache_dir is not None and dataset_fingerprint:
    path = real_cache_path(cache_dir, protocol, dataset_fingerprint)
    info["cache"] = str(path)
    cached = _read_cache(path, protocol, dataset_fingerprint)
    # One decision for all processes: a process that computed the features while another read them
    # would wait forever in the feature graph's collectives.
    if sharding.from_process_0(cached is not None):
      if cached is None:  # process 0 read a cache this process cannot see (yet)
        cached = _read_cache(path, protocol, dataset_fingerprint, wait_s=60.0)
      if cached is None:
        raise FileNotFoundError(f"process {jax.process_index()} cannot read the real-feature cache "
                                f"{path} that process 0 read; put it on storage all hosts share")
      sets, meta = cached
      info.update(cache_hit=True, selection=meta.get("selection"))
      return sets, info
  start = time.perf_counter()
  kwargs = dict(mesh=mesh, batch_size=batch_size, i3d_vars=i3d_vars, progress=progress)
  if isinstance(real_clips, ClipSource):
    sets = []
    for s in range(protocol.num_real_sets):
      feats = real_features(real_clips(protocol.num_real, protocol.real_seed(s)), protocol,
                            total=protocol.num_real, **kwargs)
      if feats.shape[0] != protocol.num_real:
        raise ValueError(f"the clip source gave {feats.shape[0]} clips, expected "
                         f"{protocol.num_real}")
      sets.append(feats)
    sets = np.stack(sets)
    selection = (f"{real_clips.description}: {protocol.real_sampling} sampling, "
                 f"{protocol.num_real_sets} set(s) seeded {protocol.real_seed(0)}..")
  else:
    n = real_clips.shape[0]
    if n < protocol.num_real:
      raise ValueError(f"protocol {protocol.name!r} needs {protocol.num_real} real clips, got {n}; "
                       "pass more clips or override num_real")
    if protocol.resample_real and n > protocol.num_real:
      pool = real_features(real_clips, protocol, **kwargs)
      sets = np.stack([pool[_subset(n, protocol.num_real, protocol.real_seed(s))]
                       for s in range(protocol.num_real_sets)])
      selection = f"array of {n} clips: seeded subset of {protocol.num_real} per trial"
    else:
      feats = real_features(real_clips[:protocol.num_real], protocol, **kwargs)
      sets = np.repeat(feats[None], protocol.num_real_sets, axis=0)
      selection = f"array: the first {protocol.num_real} of {n} clips in every trial"
  info.update(cache_hit=False, selection=selection, seconds=time.perf_counter() - start)
  if path is not None and jax.process_index() == 0:
    meta = {"dataset_fingerprint": dataset_fingerprint, "protocol": protocol.real_fields(),
            "selection": selection, "i3d_weights_sha256": i3d.WEIGHTS_SHA256}
    fileio.write_npz(path, features=sets.astype(np.float32), meta=np.array(json.dumps(meta)))
  return sets, info


def _read_cache(path: epath.Path, protocol: Protocol, dataset_fingerprint: str,
                wait_s: float = 0.0) -> tuple[np.ndarray, dict] | None:
  """(sets, meta) of a valid cache file, or None (missing, unreadable or for other settings)."""
  deadline = time.monotonic() + wait_s
  while True:
    try:
      data = fileio.read_npz(path) if path.exists() else None
    except (OSError, ValueError):
      data = None  # a damaged cache is recomputed and replaced
    if data is not None or time.monotonic() >= deadline:
      break
    time.sleep(1.0)
  if data is None:
    return None
  sets, meta = data["features"], json.loads(str(data["meta"]))
  want = (protocol.num_real_sets, protocol.num_real, i3d.NUM_CLASSES)
  if sets.shape != want or meta.get("dataset_fingerprint") != dataset_fingerprint:
    return None
  return sets, meta


def _subset(n: int, k: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EB5E7]))
  return np.sort(rng.choice(n, size=k, replace=False))


# ----------------------------------------------------------------------------------------------
# Metrics, evaluation and result files.

def fvd_kvd(real, fake, protocol: Protocol) -> tuple[float, float]:
  """(FVD, KVD) of one trial under the protocol's covariance and square-root conventions."""
  fvd = metrics.frechet_distance(real, fake, unbiased=protocol.covariance == "unbiased",
                                 method=protocol.sqrt_method)
  return fvd, metrics.kernel_distance(real, fake)


def _summary(values: list[float]) -> tuple[float, float]:
  return float(np.mean(values)), float(np.std(values))  # population std, as DIGAN reports


def evaluate(generator, g_ema_vars, protocol: Protocol | str, real_clips, *,
             dataset_fingerprint: str | None = None, step: int | None = None,
             mesh: Mesh | None = None, batch_size: int = 16, cache_dir=None, out_path=None,
             i3d_vars=None, frames_per_chunk: int | None = 16,
             progress: bool = True) -> dict[str, Any]:
  """FVD and KVD of a generator under a protocol: mean +- population std over its trials.

  generator: a Generator or GeneratorConfig; g_ema_vars its (EMA) variables. real_clips: see
  `real_feature_sets`. Returns the result dict (protocol card, per-trial values, summary, timing)
  and, with out_path, writes it as JSON (atomically).
  """
  protocol = get_protocol(protocol)
  generator = _as_generator(generator)
  mesh = mesh or default_mesh()
  i3d_vars = i3d_variables() if i3d_vars is None else i3d_vars
  wall_start = time.perf_counter()
  real_sets, real_info = real_feature_sets(
      real_clips, protocol, dataset_fingerprint=dataset_fingerprint, cache_dir=cache_dir,
      mesh=mesh, batch_size=batch_size, i3d_vars=i3d_vars, progress=progress)
  fvds, kvds, fake_seconds = [], [], 0.0
  for trial in range(protocol.num_trials):
    start = time.perf_counter()
    fake = fake_features(generator, g_ema_vars, protocol, *protocol.fake_seeds(trial), mesh=mesh,
                         batch_size=batch_size, i3d_vars=i3d_vars,
                         frames_per_chunk=frames_per_chunk, progress=progress)
    fake_seconds += time.perf_counter() - start
    fvd, kvd = fvd_kvd(real_sets[trial % len(real_sets)], fake, protocol)
    fvds.append(fvd)
    kvds.append(kvd)
  fvd_mean, fvd_std = _summary(fvds)
  kvd_mean, kvd_std = _summary(kvds)
  num_real_computed = 0 if real_info.get("cache_hit") else real_sets.shape[0] * real_sets.shape[1]
  device = jax.devices()[0]
  result = {
      "protocol": protocol.name,
      "card": protocol.card(),
      "step": step,
      "dataset_fingerprint": real_info["dataset_fingerprint"],
      "real_selection": real_info.get("selection"),
      "real_cache": real_info["cache"],
      "real_cache_hit": bool(real_info.get("cache_hit")),
      "generator_resolution": generator.config.resolution,
      "fvd": fvd_mean, "fvd_std": fvd_std, "kvd": kvd_mean, "kvd_std": kvd_std,
      "fvd_trials": fvds, "kvd_trials": kvds,
      "timing": {
          "wall_s": time.perf_counter() - wall_start,
          "fake_features_s": fake_seconds,
          "real_features_s": real_info["seconds"],
          "fake_clips": protocol.num_trials * protocol.num_fake,
          "real_clips_computed": num_real_computed,
          "fake_clips_per_s": protocol.num_trials * protocol.num_fake / max(fake_seconds, 1e-9),
      },
      "environment": {"backend": jax.default_backend(),
                      "device": getattr(device, "device_kind", str(device)),
                      "num_devices": int(mesh.size), "processes": jax.process_count(),
                      "jax": jax.__version__, "batch_size": _global_batch(mesh, batch_size)},
  }
  if out_path is not None and jax.process_index() == 0:
    fileio.write_json(out_path, result)
  return result


def checkpoint_dir(workdir_or_ckpt_dir) -> epath.Path:
  """WORKDIR/checkpoints when given a workdir, else the directory itself."""
  path = fileio.as_path(workdir_or_ckpt_dir)
  return path / "checkpoints" if (path / "checkpoints").is_dir() else path


def evaluate_checkpoint(workdir_or_ckpt_dir, protocol_name: str, real_clips,
                        dataset_fingerprint: str | None = None, step: int | None = None,
                        out_dir=None, *, protocol_overrides: Mapping[str, Any] | None = None,
                        **kwargs) -> dict[str, Any]:
  """Evaluates a checkpoint's EMA generator (latest step by default) and writes eval/<step>.json.

  out_dir defaults to WORKDIR/eval (the checkpoint directory's parent). The file maps protocol
  names to results, so several protocols of one step live side by side: {"step": s, "results":
  {name: result}}. Returns this protocol's result. kwargs go to `evaluate` (mesh, batch_size,
  cache_dir, ...); the real-feature cache defaults to WORKDIR/eval/real_cache.
  """
  from digan_jax import checkpointing

  ckpt_dir = checkpoint_dir(workdir_or_ckpt_dir)
  protocol = get_protocol(protocol_name, **dict(protocol_overrides or {}))
  gcfg, g_ema, step = checkpointing.restore_generator(ckpt_dir, step)
  out_dir = fileio.as_path(out_dir) if out_dir is not None else ckpt_dir.parent / "eval"
  kwargs.setdefault("cache_dir", out_dir / "real_cache")
  result = evaluate(gcfg, g_ema, protocol, real_clips, dataset_fingerprint=dataset_fingerprint,
                    step=step, **kwargs)
  result["checkpoint"] = str(ckpt_dir)
  record_result(out_dir, step, result)
  return result


def record_result(out_dir, step: int, result: Mapping[str, Any]) -> epath.Path:
  """Adds `result` to <out_dir>/<step>.json ({"step": s, "results": {protocol: result}}), atomically.

  Several protocols of one step live side by side; only process 0 writes.
  """
  path = fileio.as_path(out_dir) / f"{step}.json"
  if jax.process_index() != 0:
    return path
  record = {"step": step, "results": {}}
  if path.is_file():
    try:
      record = fileio.read_json(path)
    except (OSError, json.JSONDecodeError):
      pass  # a damaged file is replaced, never merged into
  record.setdefault("results", {})[result["protocol"]] = dict(result)
  record["step"] = step
  fileio.write_json(path, record)
  return path
