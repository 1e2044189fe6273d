"""Input pipelines: training frame pairs and evaluation clips, from prepared TFDS datasets (tf.data)
or from in-memory NumPy videos (no TensorFlow; synthetic data on accelerator machines without TF).

Both paths share `clip_plans`: the frames of step s are a pure function of (seed, s), each process takes
its own slots of the global batch, and a run restarted at step k continues the same sequence. The
tf.data path copies only the encoded bytes of the sampled frames out of each video record and decodes
only those (2 per training example).

Batches are NumPy dicts, NHWC, values in [-1, 1] float32:
  train: frames [B, 2, H, W, 3] (t_lo, t_hi), times [B, 2] in [0, 1], delta_t [B], label [B] int32
  eval:  video [B, T, H, W, 3], label [B] int32, valid [B] bool (False on padding of the last batch)
with B the per-process batch. Evaluation can also return uint8 video (dtype='uint8') for metric
protocols that quantise real clips.

Resizing, when the requested resolution differs from the stored one, is bilinear without antialias
(the official loader's map; see image_ops). Horizontal flips (p = 0.5, both frames of a pair or the
whole clip) are for training only.
"""

import itertools

import numpy as np

from digan_jax import quantize
from digan_jax.data import image_ops
from digan_jax.data import clip_plans


def _to_float(frames):
  return frames.astype(np.float32) / 127.5 - 1.0


# ----------------------------------------------------------------------------------------------
# tf.data pipelines over prepared datasets.


def _tf_decode(tf, encoded, stored_resolution, resolution):
  """Encoded [k] strings -> float32 [k, R, R, 3] in [0, 255] (decoding only these k frames)."""

  def decode_one(data):
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image.set_shape([stored_resolution, stored_resolution, 3])
    return image

  frames = tf.map_fn(
    decode_one,
    encoded,
    fn_output_signature=tf.TensorSpec([stored_resolution, stored_resolution, 3], tf.uint8),
  )
  frames = tf.cast(frames, tf.float32)
  if resolution != stored_resolution:
    frames = tf.image.resize(frames, [resolution, resolution], method="bilinear", antialias=False)
  return frames


def _tf_options(tf, ds):
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  # No autotuning thread: deleting an iterator waits for that thread's next wake-up, up to 60 s
  # into a run (seen as up to a minute between a trainer's last log line and its exit). The
  # parallel map then uses one call per core.
  options.autotune.enabled = False
  return ds.with_options(options)


def _batched_numpy(tf, indices, fetch, decode, batch_size, prefetch):
  """indices -> fetch (a batch of encoded examples per index) -> decode -> fixed batches."""
  ds = indices.map(fetch, num_parallel_calls=2, deterministic=True)
  ds = ds.unbatch()
  ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(batch_size, drop_remainder=True)
  return _tf_options(tf, ds).prefetch(prefetch).as_numpy_iterator()


def _naming_corrupt_records(iterator, dataset, plan_of):
  """`iterator`, except that a read or decode error of batch k (tf.data raises errors in order)
  becomes a CorruptDataError naming the damaged record; plan_of(k) -> (videos, frames) of batch
  k. The record is found by re-reading the batch's records, never by a decoder traceback."""
  from digan_jax.errors import CorruptDataError  # pylint: disable=g-import-not-at-top

  k = 0
  while True:
    try:
      batch = next(iterator)
    except StopIteration:
      return
    except Exception as e:  # tf.errors.OpError and what numpy_function wraps
      if "tensorflow" not in type(e).__module__:
        raise
      # Prefetching may surface a later batch's error first only if order were not kept; look a
      # few batches ahead as well.
      for ahead in range(k, k + 4):
        message = dataset.find_damage(*plan_of(ahead))
        if message is not None:
          raise CorruptDataError(message) from None
      raise
    yield batch
    k += 1


def make_train_iterator(
  data_dir,
  name,
  split,
  batch_size_per_process,
  num_frames=16,
  resolution=None,
  seed=0,
  start_step=0,
  process_index=0,
  process_count=1,
  *,
  frame_stride=1,
  clip_hop=1,
  policy="clips",
  random_flip=True,
  prefetch=2,
  dataset=None,
):
  """Training frame pairs from a prepared dataset; batch k of the iterator is step start_step + k.

  Args:
    data_dir, name, split: the prepared dataset (split may join splits: 'train+test').
    batch_size_per_process: this process's share B of the global batch (global = B·process_count).
    num_frames: clip length T; frame-pair times as in `clip_plans` (official, 16 -> T, 15 -> T − 1).
    resolution: output side (default: as stored).
    seed, start_step: the sequence is a pure function of (seed, step).
    process_index, process_count: multi-host split of every global batch.
    frame_stride: source frames between consecutive clip frames (TaiChi: 4).
    clip_hop: source frames between consecutive clip starts (1 = every window, DIGAN).
    policy: 'clips' (uniform over clip windows, DIGAN) or 'videos' (uniform over videos, StyleGAN-V).
    random_flip: horizontal flip of the pair with probability 0.5.
    prefetch: batches prepared ahead.
    dataset: an already opened `storage.VideoDataset` (skips opening it again).

  Returns:
    An iterator of NumPy dicts {frames, times, delta_t, label}.
  """
  from digan_jax.data import storage  # pylint: disable=g-import-not-at-top
  from digan_jax.data import tf_utils  # pylint: disable=g-import-not-at-top

  tf = tf_utils.import_tf()
  dataset = dataset or storage.open_dataset(data_dir, name, split)
  index = clip_plans.ClipIndex(dataset.lengths, num_frames, frame_stride, clip_hop)
  stored = dataset.resolution
  resolution = resolution or stored

  def load_step(step):
    plan = clip_plans.train_plan(
      index,
      seed=seed,
      step=int(step),
      batch_size_per_process=batch_size_per_process,
      process_index=process_index,
      process_count=process_count,
      policy=policy,
      random_flip=random_flip,
    )
    encoded = dataset.fetch(plan.video, plan.frames)
    return encoded, plan.times, plan.delta_t, plan.flip, dataset.labels[plan.video]

  def fetch(step):
    encoded, times, delta_t, flip, label = tf.numpy_function(
      load_step, [step], [tf.string, tf.float32, tf.float32, tf.bool, tf.int32]
    )
    batch = batch_size_per_process
    encoded.set_shape([batch, 2])
    times.set_shape([batch, 2])
    delta_t.set_shape([batch])
    flip.set_shape([batch])
    label.set_shape([batch])
    return {"encoded": encoded, "times": times, "delta_t": delta_t, "flip": flip, "label": label}

  def decode(example):
    frames = _tf_decode(tf, example.pop("encoded"), stored, resolution)
    frames = tf.where(example.pop("flip"), tf.reverse(frames, axis=[2]), frames)
    example["frames"] = frames / 127.5 - 1.0
    return example

  def plan_of(k):
    plan = clip_plans.train_plan(
      index,
      seed=seed,
      step=start_step + k,
      batch_size_per_process=batch_size_per_process,
      process_index=process_index,
      process_count=process_count,
      policy=policy,
      random_flip=random_flip,
    )
    return plan.video, plan.frames

  batches = _batched_numpy(
    tf, tf.data.Dataset.range(start_step, 2**62), fetch, decode, batch_size_per_process, prefetch
  )
  return _naming_corrupt_records(batches, dataset, plan_of)


def make_eval_iterator(
  data_dir,
  name,
  split,
  batch_size_per_process,
  num_frames=16,
  resolution=None,
  seed=0,
  process_index=0,
  process_count=1,
  *,
  frame_stride=1,
  clip_hop=None,
  num_clips=None,
  policy="clips",
  dtype="float32",
  prefetch=2,
  dataset=None,
):
  """Whole evaluation clips (any length and stride), one pass, no flips.

  num_clips=None: every window of the split in order, `clip_hop` apart (default: the clip span, i.e.
  non-overlapping clips). Otherwise `num_clips` clips drawn with `seed` (see clip_plans.eval_clips).
  Every process yields the same number of batches; padding of the last global batch is marked
  valid=False. dtype: 'float32' ([-1, 1]) or 'uint8' ([0, 255], exact stored values when no resize).
  """
  from digan_jax.data import storage  # pylint: disable=g-import-not-at-top
  from digan_jax.data import tf_utils  # pylint: disable=g-import-not-at-top

  tf = tf_utils.import_tf()
  dataset = dataset or storage.open_dataset(data_dir, name, split)
  span = (num_frames - 1) * frame_stride + 1
  index = clip_plans.ClipIndex(dataset.lengths, num_frames, frame_stride, clip_hop or span)
  videos, starts = clip_plans.eval_clips(index, num_clips=num_clips, seed=seed, policy=policy)
  plans = clip_plans.eval_batches(
    index,
    videos,
    starts,
    batch_size_per_process=batch_size_per_process,
    process_index=process_index,
    process_count=process_count,
  )
  stored = dataset.resolution
  resolution = resolution or stored

  def load_batch(b):
    plan = plans[int(b)]
    return dataset.fetch(plan.video, plan.frames), dataset.labels[plan.video], plan.valid

  def fetch(b):
    encoded, label, valid = tf.numpy_function(load_batch, [b], [tf.string, tf.int32, tf.bool])
    encoded.set_shape([batch_size_per_process, num_frames])
    label.set_shape([batch_size_per_process])
    valid.set_shape([batch_size_per_process])
    return {"encoded": encoded, "label": label, "valid": valid}

  def decode(example):
    video = _tf_decode(tf, example.pop("encoded"), stored, resolution)
    if dtype == "uint8":
      example["video"] = tf.cast(tf.clip_by_value(tf.round(video), 0, 255), tf.uint8)
    else:
      example["video"] = video / 127.5 - 1.0
    return example

  if dtype not in ("float32", "uint8"):
    raise ValueError(f"dtype must be 'float32' or 'uint8', got {dtype!r}")
  batches = _batched_numpy(
    tf, tf.data.Dataset.range(len(plans)), fetch, decode, batch_size_per_process, prefetch
  )
  return _naming_corrupt_records(
    batches,
    dataset,
    lambda k: (plans[min(k, len(plans) - 1)].video, plans[min(k, len(plans) - 1)].frames),
  )


# ----------------------------------------------------------------------------------------------
# In-memory NumPy pipelines (no TensorFlow).


def _finish_numpy(frames, resolution, flip=None):
  """uint8 [B, k, H, W, 3] -> float32 [-1, 1] at `resolution`, flipped where `flip`."""
  if frames.shape[2] != frames.shape[3]:
    frames = np.stack(
      [np.stack([image_ops.center_crop_square(f) for f in clip]) for clip in frames]
    )
  if resolution is not None and frames.shape[2] != resolution:
    frames = image_ops.resize_bilinear(frames, resolution)
  if flip is not None:
    frames = np.where(flip[:, None, None, None, None], frames[:, :, :, ::-1], frames)
  return _to_float(frames)


def make_numpy_train_iterator(
  videos,
  labels,
  batch_size_per_process,
  num_frames=16,
  resolution=None,
  seed=0,
  start_step=0,
  process_index=0,
  process_count=1,
  *,
  frame_stride=1,
  clip_hop=1,
  policy="clips",
  random_flip=True,
):
  """The training iterator of `make_train_iterator` over in-memory uint8 videos [L_i, H, W, 3].

  Given the same videos (in dataset order) and arguments, it yields the same batches as the tf.data
  path (exactly, when no resize is needed).
  """
  lengths = np.array([len(v) for v in videos])
  labels = np.asarray(labels, np.int32)
  index = clip_plans.ClipIndex(lengths, num_frames, frame_stride, clip_hop)
  for step in itertools.count(start_step):
    plan = clip_plans.train_plan(
      index,
      seed=seed,
      step=step,
      batch_size_per_process=batch_size_per_process,
      process_index=process_index,
      process_count=process_count,
      policy=policy,
      random_flip=random_flip,
    )
    frames = np.stack([videos[v][f] for v, f in zip(plan.video, plan.frames)])
    yield {
      "frames": _finish_numpy(frames, resolution, plan.flip),
      "times": plan.times,
      "delta_t": plan.delta_t,
      "label": labels[plan.video],
    }


def make_numpy_eval_iterator(
  videos,
  labels,
  batch_size_per_process,
  num_frames=16,
  resolution=None,
  seed=0,
  process_index=0,
  process_count=1,
  *,
  frame_stride=1,
  clip_hop=None,
  num_clips=None,
  policy="clips",
  dtype="float32",
):
  """The evaluation iterator of `make_eval_iterator` over in-memory uint8 videos."""
  lengths = np.array([len(v) for v in videos])
  labels = np.asarray(labels, np.int32)
  span = (num_frames - 1) * frame_stride + 1
  index = clip_plans.ClipIndex(lengths, num_frames, frame_stride, clip_hop or span)
  clip_videos, starts = clip_plans.eval_clips(index, num_clips=num_clips, seed=seed, policy=policy)
  for plan in clip_plans.eval_batches(
    index,
    clip_videos,
    starts,
    batch_size_per_process=batch_size_per_process,
    process_index=process_index,
    process_count=process_count,
  ):
    frames = np.stack([videos[v][f] for v, f in zip(plan.video, plan.frames)])
    if dtype == "uint8":
      if resolution is not None and frames.shape[2] != resolution:
        frames = quantize.levels_to_uint8(image_ops.resize_bilinear(frames, resolution))
      video = frames
    else:
      video = _finish_numpy(frames, resolution)
    yield {"video": video, "label": labels[plan.video], "valid": plan.valid}


def make_synthetic_train_iterator(
  num_videos,
  resolution,
  batch_size_per_process,
  num_frames=16,
  seed=0,
  start_step=0,
  process_index=0,
  process_count=1,
  *,
  video_lengths=(24, 48),
  data_seed=0,
  **kwargs,
):
  """Training pairs from synthetic videos generated in memory (the benchmark path without TF).

  Same videos as the TFDS train split of synthetic_videos/r<resolution>_n<num_videos> (data_seed is
  the set seed), so both paths give identical batches.
  """
  from digan_jax.data import synthetic_videos  # pylint: disable=g-import-not-at-top

  data = synthetic_videos.generate(num_videos, resolution, video_lengths, data_seed)
  return make_numpy_train_iterator(
    data.videos,
    data.labels,
    batch_size_per_process,
    num_frames,
    resolution,
    seed,
    start_step,
    process_index,
    process_count,
    **kwargs,
  )
