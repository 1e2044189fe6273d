"""Clip indexing and the deterministic per-step sampling plans shared by every input pipeline.

This module owns *which* frames a batch contains; pipelines only fetch and decode them. It is pure
NumPy, so the tf.data pipeline and the in-memory NumPy pipeline produce identical plans.

Determinism: the plan of a step is a pure function of (seed, step) — a fresh NumPy generator keyed on
SeedSequence([seed, step, domain]) draws the whole global batch, and process p takes the slots
[p*B, (p+1)*B). Restarting at step k therefore reproduces the uninterrupted sequence, and the
processes of a multi-host job see disjoint slots whose union is the global batch.

Real frame-pair times (official `src/training/dataset.py`, generalised from 16 to T = num_frames):
  f_a = ⌊T·Beta(2,1)⌋, f_b = ⌊T·Beta(1,2)⌋, (f_lo, f_hi) = sorted, Δt = (f_hi − f_lo)/(T − 1).
For T = 16: P(Δt = 0) ≈ 4.2 %, E[Δt] ≈ 0.425, E[t_lo] ≈ 0.288, E[t_hi] ≈ 0.713.
"""

import dataclasses

import numpy as np

POLICIES = ("clips", "videos")
# Stream tags, so train plans, eval plans and any later use of the same seed never share draws.
_TRAIN_DOMAIN = 0x7A11
_EVAL_DOMAIN = 0xE7A1


class ClipIndex:
  """All clip windows of a set of videos.

  A clip is `num_frames` frames `frame_stride` apart, so it spans (num_frames − 1)·stride + 1 source
  frames; windows start every `clip_hop` frames (1 = every window, as the official UCF loader; span =
  non-overlapping windows, as the official frame-folder loader). Videos shorter than one span have
  no clip and are never sampled.
  """

  def __init__(self, lengths, num_frames, frame_stride=1, clip_hop=1):
    if num_frames < 1 or frame_stride < 1 or clip_hop < 1:
      raise ValueError(
        f"num_frames, frame_stride and clip_hop must be >= 1, got {num_frames}, {frame_stride}, {clip_hop}"
      )
    self.lengths = np.asarray(lengths, np.int64)
    self.num_frames = int(num_frames)
    self.frame_stride = int(frame_stride)
    self.clip_hop = int(clip_hop)
    self.span = (self.num_frames - 1) * self.frame_stride + 1
    self.counts = np.where(
      self.lengths >= self.span, (self.lengths - self.span) // self.clip_hop + 1, 0
    )
    self.ends = np.cumsum(self.counts)
    self.num_clips = int(self.ends[-1]) if len(self.ends) else 0
    self.valid_videos = np.nonzero(self.counts)[0]
    if self.num_clips == 0:
      longest = int(self.lengths.max()) if len(self.lengths) else 0
      raise ValueError(
        f"No video has the {self.span} frames that one clip of num_frames={num_frames} with "
        f"frame_stride={frame_stride} needs (longest video: {longest} frames). Use fewer frames "
        "or a smaller stride, or prepare longer videos."
      )

  def clip(self, clip_ids):
    """Global clip ids -> (video index, start frame)."""
    clip_ids = np.asarray(clip_ids, np.int64)
    video = np.searchsorted(self.ends, clip_ids, side="right")
    offset = clip_ids - (self.ends[video] - self.counts[video])
    return video, offset * self.clip_hop

  def sample(self, rng, n, policy):
    """Draws n clips: 'clips' = uniform over all windows (DIGAN: longer videos weigh more);
    'videos' = uniform over videos, then uniform over that video's windows (StyleGAN-V)."""
    if policy == "clips":
      return self.clip(rng.integers(0, self.num_clips, size=n))
    if policy == "videos":
      video = self.valid_videos[rng.integers(0, len(self.valid_videos), size=n)]
      start = np.floor(rng.random(n) * self.counts[video]).astype(np.int64) * self.clip_hop
      return video, start
    raise ValueError(f"Unknown clip sampling policy {policy!r}; use one of {POLICIES}.")

  def frame_indices(self, start, clip_frames):
    """Source frame indices of clip positions `clip_frames` (..., k) for clips starting at `start`."""
    return np.asarray(start)[..., None] + np.asarray(clip_frames) * self.frame_stride


def sample_pair_times(rng, n, num_frames):
  """Real frame-pair positions inside a clip: sorted (f_lo, f_hi) int64 [n, 2], Δt [n]."""
  f_a = np.floor(num_frames * rng.beta(2.0, 1.0, size=n)).astype(np.int64)
  f_b = np.floor(num_frames * rng.beta(1.0, 2.0, size=n)).astype(np.int64)
  # Beta draws can round to exactly 1.0 in floating point.
  pair = np.clip(np.sort(np.stack([f_a, f_b], axis=1), axis=1), 0, num_frames - 1)
  delta_t = (pair[:, 1] - pair[:, 0]) / max(num_frames - 1, 1)
  return pair, delta_t.astype(np.float32)


def _process_slice(global_batch_size, process_index, process_count):
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(
      f"Need 0 <= process_index < process_count, got {process_index}, {process_count}."
    )
  if global_batch_size % process_count:
    raise ValueError(
      f"Global batch {global_batch_size} is not divisible by {process_count} processes."
    )
  per_process = global_batch_size // process_count
  return slice(process_index * per_process, (process_index + 1) * per_process)


@dataclasses.dataclass
class TrainPlan:
  """What one process loads for one training step (B = per-process batch)."""

  video: np.ndarray  # int64 [B] video index
  frames: np.ndarray  # int64 [B, 2] source frame indices (t_lo, t_hi)
  times: np.ndarray  # float32 [B, 2] (f_lo, f_hi)/(T − 1) in [0, 1]
  delta_t: np.ndarray  # float32 [B]
  flip: np.ndarray  # bool [B]


def train_plan(
  index,
  *,
  seed,
  step,
  batch_size_per_process,
  process_index=0,
  process_count=1,
  policy="clips",
  random_flip=True,
):
  """The frame pairs of `step` for one process; a pure function of its arguments."""
  global_batch = batch_size_per_process * process_count
  local = _process_slice(global_batch, process_index, process_count)
  rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(step), _TRAIN_DOMAIN]))
  video, start = index.sample(rng, global_batch, policy)
  pair, delta_t = sample_pair_times(rng, global_batch, index.num_frames)
  flip = rng.random(global_batch) < 0.5 if random_flip else np.zeros(global_batch, bool)
  times = (pair / max(index.num_frames - 1, 1)).astype(np.float32)
  return TrainPlan(
    video=video[local],
    frames=index.frame_indices(start, pair)[local],
    times=times[local],
    delta_t=delta_t[local],
    flip=flip[local],
  )


def eval_clips(index, *, num_clips=None, seed=0, policy="clips"):
  """The global, ordered list of evaluation clips -> (video [N], start [N]).

  num_clips=None: every window of the index in order (use clip_hop=span for non-overlapping clips).
  Otherwise a seeded draw: 'clips' picks distinct windows uniformly (with repeats only when more are
  asked than exist, like a shuffled loader cycling); 'videos' cycles through a shuffled video list
  and picks a random window of each.
  """
  if num_clips is None:
    return index.clip(np.arange(index.num_clips))
  rng = np.random.default_rng(np.random.SeedSequence([int(seed), _EVAL_DOMAIN]))
  if policy == "clips":
    repeats = -(-num_clips // index.num_clips)
    ids = np.concatenate([rng.permutation(index.num_clips) for _ in range(repeats)])[:num_clips]
    return index.clip(ids)
  if policy == "videos":
    repeats = -(-num_clips // len(index.valid_videos))
    video = np.concatenate([rng.permutation(index.valid_videos) for _ in range(repeats)])[
      :num_clips
    ]
    start = np.floor(rng.random(num_clips) * index.counts[video]).astype(np.int64) * index.clip_hop
    return video, start
  raise ValueError(f"Unknown clip sampling policy {policy!r}; use one of {POLICIES}.")


@dataclasses.dataclass
class EvalBatchPlan:
  video: np.ndarray  # int64 [B]
  frames: np.ndarray  # int64 [B, T]
  valid: np.ndarray  # bool [B]; False on the padding of the last global batch


def eval_batches(
  index, videos, starts, *, batch_size_per_process, process_index=0, process_count=1
):
  """Splits an ordered clip list into global batches (the last one padded, `valid` False) and returns
  this process's share of each; every process gets the same number of batches."""
  global_batch = batch_size_per_process * process_count
  local = _process_slice(global_batch, process_index, process_count)
  n = len(videos)
  num_batches = -(-n // global_batch)
  clip_positions = np.arange(index.num_frames)
  plans = []
  for b in range(num_batches):
    ids = np.arange(b * global_batch, (b + 1) * global_batch)
    valid = ids < n
    ids = np.where(valid, ids, n - 1)[local]
    plans.append(
      EvalBatchPlan(
        video=videos[ids],
        frames=index.frame_indices(starts[ids], clip_positions),
        valid=valid[local],
      )
    )
  return plans
