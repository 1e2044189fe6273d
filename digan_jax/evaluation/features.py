"""I3D features of generated and real clips, in one jitted graph each, batch-sharded over a mesh.

- `fake_features`: latents -> generator -> uint8 (the protocol's rule) -> resize to 224 -> I3D logits.
- `real_features`: uint8 clips (an array, or an iterator of pipeline batches) -> the same I3D path.

Multi-process runs: every process calls these with the same arguments (they are collective). Fake
latents are indexed globally, so each device renders its own slice of the batch; real batches from
the data pipeline are process-local shares (as `data.pipeline.make_eval_iterator` yields them) and
are assembled into global arrays with `jax.make_array_from_process_local_data`. Features are
gathered to every host.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from digan_jax import quantize, sharding
from digan_jax.evaluation import i3d, i3d_weights
from digan_jax.evaluation.protocols import Protocol


def _progress(total: int, desc: str, enabled: bool):
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

  return tqdm(
    total=total,
    desc=desc,
    unit="clip",
    leave=False,
    disable=not enabled or jax.process_index() != 0,
  )


_I3D_VARIABLES: dict[str, Any] = {}


def i3d_variables(path=None):
  """The Kinetics-400 I3D variables, loaded once per process and path."""
  key = str(path or i3d_weights.default_weights_path())
  if key not in _I3D_VARIABLES:
    _I3D_VARIABLES[key] = i3d_weights.load_weights(path)
  return _I3D_VARIABLES[key]


@functools.lru_cache(maxsize=16)
def _fake_fn(
  generator, times: tuple, fake_uint8: str, resize: str, frames_per_chunk: int | None, mesh: Mesh
):
  """The jitted fake-feature graph; cached so trials and repeated calls reuse one compilation."""
  from digan_jax import sampling  # pylint: disable=g-import-not-at-top

  cfg = generator.config
  times = np.asarray(times, np.float32)

  def graph(g_vars, i3d_vars, indices, content_seed, motion_seed):
    z_content = sampling.latents_at(content_seed, indices, cfg.z_dim)
    z_motion = sampling.latents_at(motion_seed, indices, cfg.motion_dim)
    labels = jax.nn.one_hot(indices % cfg.c_dim, cfg.c_dim) if cfg.c_dim else None
    video = sampling.render(
      generator,
      g_vars,
      z_content,
      z_motion,
      jnp.asarray(times),
      labels,
      frames_per_chunk=frames_per_chunk,
    )
    video = quantize.to_uint8(video, fake_uint8)
    return i3d.i3d_logits(i3d_vars, i3d.preprocess_for_i3d(video, resize))

  return jax.jit(graph, out_shardings=sharding.batch_sharding(mesh, 2))


@functools.lru_cache(maxsize=16)
def _real_fn(resize: str, mesh: Mesh):
  def graph(i3d_vars, video_uint8):
    return i3d.i3d_logits(i3d_vars, i3d.preprocess_for_i3d(video_uint8, resize))

  return jax.jit(graph, out_shardings=sharding.batch_sharding(mesh, 2))


def as_generator(generator):
  """A Generator, from itself or its GeneratorConfig."""
  from digan_jax.models.generator import Generator, GeneratorConfig  # pylint: disable=g-import-not-at-top

  if isinstance(generator, GeneratorConfig):
    return Generator(generator)
  if not isinstance(generator, Generator):
    raise TypeError(f"expected a Generator or GeneratorConfig, got {type(generator).__name__}")
  return generator


def fake_features(
  generator,
  g_ema_vars,
  protocol: Protocol,
  seed: int,
  motion_seed: int | None = None,
  *,
  num: int | None = None,
  mesh: Mesh | None = None,
  batch_size: int = 16,
  i3d_vars=None,
  frames_per_chunk: int | None = 16,
  progress: bool = True,
) -> np.ndarray:
  """I3D features [num, 400] (float32) of `num` (default protocol.num_fake) generated clips.

  Video i uses the i-th latents of `seed` (content) and `motion_seed` (default seed + 1), the
  protocol's frame times, uint8 rule and resize. Rendering, quantisation, resize and I3D run in one
  jitted graph per batch, split over the mesh's batch axes (batch_size is rounded up to a multiple
  of the device count); the last batch renders a few extra videos that are dropped.
  """
  generator = as_generator(generator)
  mesh = mesh or sharding.data_parallel_mesh()
  num = protocol.num_fake if num is None else num
  motion_seed = seed + 1 if motion_seed is None else motion_seed
  i3d_vars = i3d_variables() if i3d_vars is None else i3d_vars
  replicated = sharding.replicated(mesh)
  batch = sharding.padded_batch(mesh, batch_size)
  index_sharding = sharding.batch_sharding(mesh, 1)
  fn = _fake_fn(
    generator,
    tuple(protocol.fake_times().tolist()),
    protocol.fake_uint8,
    protocol.resize,
    frames_per_chunk,
    mesh,
  )
  g_vars = jax.device_put(g_ema_vars, replicated)
  i3d_vars = jax.device_put(i3d_vars, replicated)
  seeds = [jax.device_put(jnp.asarray(s, jnp.uint32), replicated) for s in (seed, motion_seed)]
  out = []
  with _progress(num, f"{protocol.name} fake", progress) as bar:
    for start in range(0, num, batch):
      indices = jax.make_array_from_callback(
        (batch,),
        index_sharding,
        lambda idx, start=start: np.arange(start, start + batch, dtype=np.int32)[idx],
      )
      out.append(sharding.to_host(fn(g_vars, i3d_vars, indices, *seeds)))
      bar.update(min(batch, num - start))
  return np.concatenate(out)[:num]


def _iter_batches(clips, batch_size: int):
  """Normalises the accepted real inputs to (uint8 video [b, T, H, W, 3], valid [b]) batches."""
  if isinstance(clips, (np.ndarray, jax.Array)):
    for start in range(0, clips.shape[0], batch_size):
      video = np.asarray(clips[start : start + batch_size])
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
    # Pipeline floats are uint8 / 127.5 - 1: rint recovers the stored level exactly, where floor
    # could drop a level through float error.
    return quantize.to_uint8(video, "rint")
  raise TypeError(f"real clips must be uint8 or float in [-1, 1], got dtype {video.dtype}")


def real_features(
  clips,
  protocol: Protocol,
  *,
  mesh: Mesh | None = None,
  batch_size: int = 16,
  i3d_vars=None,
  progress: bool = True,
  total: int | None = None,
) -> np.ndarray:
  """I3D features [N, 400] (float32) of real clips, through the same graph as the fakes.

  clips: an array [N, T, H, W, 3] (uint8, or float in [-1, 1] as the data pipeline's default), or
  an iterable of batches (arrays, or dicts with 'video' and optional 'valid' as
  `data.pipeline.make_eval_iterator` yields them; in multi-process runs each process passes its own
  share, and padding rows with valid=False are dropped). T must be protocol.num_frames: clips are
  already subsampled by the protocol's frame_stride.
  """
  mesh = mesh or sharding.data_parallel_mesh()
  i3d_vars = i3d_variables() if i3d_vars is None else i3d_vars
  replicated = sharding.replicated(mesh)
  i3d_vars = jax.device_put(i3d_vars, replicated)
  video_sharding = sharding.batch_sharding(mesh, 5)
  fn = _real_fn(protocol.resize, mesh)
  is_array = isinstance(clips, (np.ndarray, jax.Array))
  if is_array:
    total = clips.shape[0]
    batch = sharding.padded_batch(
      mesh, min(batch_size, total)
    )  # small sets need no padding to batch_size
  # Each process pads its rows to a multiple of its own devices (equal counts on every process).
  local_multiple = max(1, sharding.batch_devices(mesh) // jax.process_count())
  out = []
  with _progress(total or 0, f"{protocol.name} real", progress) as bar:
    for video, valid in _iter_batches(clips, batch if is_array else batch_size):
      video = _clips_to_uint8(video)
      if video.ndim != 5 or video.shape[1] != protocol.num_frames or video.shape[-1] != 3:
        raise ValueError(
          f"real clips must be [N, {protocol.num_frames}, H, W, 3] for protocol "
          f"{protocol.name!r}, got a batch of shape {video.shape}"
        )
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
          video_sharding, video, (video.shape[0] * jax.process_count(),) + video.shape[1:]
        )
        keep = valid if jax.process_count() == 1 else _gather_mask(valid)
      feats = sharding.to_host(fn(i3d_vars, arr))
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
