"""FVD/KVD protocols: the frozen description of one way of computing the numbers, and a registry.

Every field of a `Protocol` changes the result, so all of them go into the result's card. The
registry holds the literature's protocols: `digan` (DIGAN's compute_fvd_kvd.py), the StyleGAN-V
family, the in-training `proxy`, and `tf_reference` (the google-research FVD preprocessing).
`register_protocol` adds one, the way StyleGAN3's metric_main.register_metric does;
`get_protocol(name, **overrides)` returns one with the overrides recorded in its card.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from digan_jax.evaluation import i3d, i3d_weights

# A training clip has 16 frames at t = i / 15 (DIGAN's generator samples t in [0, 1] over 16
# frames); fakes are rendered on that frame grid, so 128-frame protocols extrapolate to t = 127 / 15
# like longer real clips. A model trained on longer clips (configs/taichi128_long.py: 128 frames)
# sets `train_clip_frames` (evaluation/schedule.py does it from config.data.num_frames).
TRAIN_CLIP_FRAMES = 16

_UINT8_MODES = ("floor", "round_half_up")
_RESIZES = ("center_crop", "direct")
_COVARIANCES = ("unbiased", "biased")
_SQRT_METHODS = ("eigh", "svd", "sqrtm")
_REAL_SAMPLINGS = ("windows", "per_video")


@dataclasses.dataclass(frozen=True)
class Protocol:
  """One FVD/KVD protocol. Every field changes the number; all of them go into the card.

  num_fake / num_real: clips per trial. num_trials: independent repeats (fresh fakes each; fresh
  reals too when `resample_real`), reported as mean +- population std. num_frames / frame_stride:
  clip length and the gap between its frames (reals and fakes alike). fake_uint8: how generated
  [-1, 1] frames are quantised ('floor' DIGAN, 'round_half_up' StyleGAN-V; see quantize.py). resize: 'center_crop' (shorter
  side to 224, half-pixel bilinear, centre crop) or 'direct' (TF1-legacy bilinear to 224x224).
  covariance: 'unbiased' (N - 1) or 'biased' (N). sqrt_method: the matrix square-root route of the
  reference (all agree to ~1e-10 in float64). real_sampling: 'windows' (uniform over all
  clip windows of all videos) or 'per_video' (one random window per video). seed: base seed of fake
  latents and real-clip draws. train_clip_frames: frames of the model's training clip (t in [0, 1]
  spans it). data_stride: source frames between the frames of a training clip (the dataset's
  frame_stride); real clips take every frame_stride * data_stride-th source frame. overrides:
  (field, value) pairs changed from the registered protocol.
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
  train_clip_frames: int = TRAIN_CLIP_FRAMES
  data_stride: int = 1
  overrides: tuple = ()

  def __post_init__(self):
    for field, allowed in (
      ("fake_uint8", _UINT8_MODES),
      ("resize", _RESIZES),
      ("covariance", _COVARIANCES),
      ("sqrt_method", _SQRT_METHODS),
      ("real_sampling", _REAL_SAMPLINGS),
    ):
      if getattr(self, field) not in allowed:
        raise ValueError(
          f"protocol {self.name!r}: {field}={getattr(self, field)!r}; expected one of {allowed}"
        )
    if self.num_fake < 2 or self.num_real < 2:
      raise ValueError(
        f"protocol {self.name!r}: FVD needs at least 2 fake and 2 real clips, got "
        f"num_fake={self.num_fake}, num_real={self.num_real}"
      )
    if self.train_clip_frames < 2 or self.data_stride < 1:
      raise ValueError(
        f"protocol {self.name!r}: train_clip_frames must be >= 2 and data_stride >= 1"
      )
    if self.num_trials < 1 or self.frame_stride < 1:
      raise ValueError(f"protocol {self.name!r}: num_trials and frame_stride must be >= 1")
    if self.num_frames < i3d.MIN_FRAMES:
      raise ValueError(
        f"protocol {self.name!r}: num_frames={self.num_frames}, but I3D needs at "
        f"least {i3d.MIN_FRAMES} frames"
      )

  @property
  def real_stride(self) -> int:
    """Source frames between a real clip's frames: frame_stride training-clip frames, each
    data_stride source frames apart (TaiChi trains on every 4th frame, and DIGAN evaluates it so)."""
    return self.frame_stride * self.data_stride

  @property
  def frame_span(self) -> int:
    """Source frames one clip covers."""
    return (self.num_frames - 1) * self.real_stride + 1

  @property
  def num_real_sets(self) -> int:
    return self.num_trials if self.resample_real else 1

  def fake_times(self) -> np.ndarray:
    """Generator times of the clip's frames: frame index k * stride <-> t = k * stride / (T - 1)
    for a model trained on T-frame clips (t in [0, 1] spans one training clip)."""
    frame_index = np.arange(self.num_frames) * self.frame_stride
    return (frame_index / (self.train_clip_frames - 1)).astype(np.float32)

  def fake_seeds(self, trial: int) -> tuple[int, int]:
    """(content seed, motion seed) of a trial, as `python -m digan_jax.sampling --seed` uses them
    (motion = content + 1), so any evaluated video can be rendered again."""
    content = self.seed + 2 * trial
    return content, content + 1

  def real_seed(self, trial: int) -> int:
    return self.seed + (trial if self.resample_real else 0)

  def real_fields(self) -> dict[str, Any]:
    """The fields that decide the real features (the cache key)."""
    return dict(
      num_real=self.num_real,
      num_real_sets=self.num_real_sets,
      num_frames=self.num_frames,
      frame_stride=self.frame_stride,
      **({"data_stride": self.data_stride} if self.data_stride != 1 else {}),
      resize=self.resize,
      real_sampling=self.real_sampling,
      seed=self.seed,
    )

  def card(self) -> dict[str, Any]:
    fields = dataclasses.asdict(self)
    fields["overrides"] = {k: v for k, v in self.overrides}
    # Cards of 16-frame, stride-1 models stay those written before these fields existed.
    if self.train_clip_frames == TRAIN_CLIP_FRAMES:
      del fields["train_clip_frames"]
    if self.data_stride == 1:
      del fields["data_stride"]
    fields.update(
      frame_span=self.frame_span,
      fake_times=f"t = frame_index / {self.train_clip_frames - 1} (frame_index = k * frame_stride)",
      fake_seeds=[list(self.fake_seeds(t)) for t in range(self.num_trials)],
      real_seeds=[self.real_seed(t) for t in range(self.num_real_sets)],
      fake_labels="one-hot of video index mod c_dim (class-conditional generators only)",
      real_uint8="uint8 as delivered; float clips in [-1, 1] are rounded to the nearest level",
      statistics_dtype="float64",
      std="population (ddof=0) over trials",
      kvd="unbiased MMD^2, kernel (x.y/400 + 1)^3, one block over all clips (DIGAN), float64",
      features="I3D Kinetics-400 time-averaged logits [400] (TF-Hub RGB/inception_i3d/Mean:0), "
      "float32, highest precision",
      i3d_weights_sha256=i3d_weights.WEIGHTS_SHA256,
    )
    return fields


_REGISTRY: dict[str, Protocol] = {}
_ALIASES: dict[str, str] = {}


def register_protocol(protocol: Protocol, *aliases: str) -> Protocol:
  """Adds a protocol (and alternative names for it) to the registry; a name is taken once."""
  for key in (protocol.name, *aliases):
    if key in _REGISTRY or key in _ALIASES:
      raise ValueError(f"FVD protocol name {key!r} is already registered")
  _REGISTRY[protocol.name] = protocol
  _ALIASES.update({alias: protocol.name for alias in aliases})
  return protocol


for _protocol in (
  Protocol(
    name="digan",
    num_fake=2048,
    num_real=2048,
    num_trials=10,
    num_frames=16,
    fake_uint8="floor",
    resize="center_crop",
    covariance="unbiased",
    sqrt_method="svd",
    real_sampling="windows",
    resample_real=True,
    seed=42,
    reference="DIGAN src/scripts/compute_fvd_kvd.py; FD/KVD in float64",
  ),
  Protocol(
    name="stylegan_v_fvd2048_16f",
    num_fake=2048,
    num_real=2048,
    num_trials=1,
    num_frames=16,
    fake_uint8="round_half_up",
    resize="center_crop",
    covariance="biased",
    sqrt_method="sqrtm",
    real_sampling="per_video",
    resample_real=False,
    seed=0,
    reference="StyleGAN-V fvd2048_16f (src/metrics/frechet_video_distance.py); reals: one random window for each of 2048 "
    "shuffled videos (SV takes the first 2048 in directory order); resize kernel of "
    "SV's TorchScript I3D unverified, half-pixel bilinear used",
  ),
  Protocol(
    name="stylegan_v_fvd2048_128f",
    num_fake=2048,
    num_real=2048,
    num_trials=1,
    num_frames=128,
    fake_uint8="round_half_up",
    resize="center_crop",
    covariance="biased",
    sqrt_method="sqrtm",
    real_sampling="per_video",
    resample_real=False,
    seed=0,
    reference="StyleGAN-V fvd2048_128f; videos shorter than 128 frames are skipped",
  ),
  Protocol(
    name="stylegan_v_fvd2048_128f_subsample8f",
    num_fake=2048,
    num_real=2048,
    num_trials=1,
    num_frames=16,
    frame_stride=8,
    fake_uint8="round_half_up",
    resize="center_crop",
    covariance="biased",
    sqrt_method="sqrtm",
    real_sampling="per_video",
    resample_real=False,
    seed=0,
    reference="StyleGAN-V fvd2048_128f_subsample8f: 16 frames every 8th",
  ),
  Protocol(
    name="proxy",
    num_fake=512,
    num_real=512,
    num_trials=5,
    num_frames=16,
    fake_uint8="floor",
    resize="center_crop",
    covariance="unbiased",
    sqrt_method="svd",
    real_sampling="windows",
    resample_real=False,
    seed=42,
    reference="DIGAN in-training FVD (src/train.py, fvd_proxy): 512 vs 512, the same reals for all 5 "
    "repeats; not comparable with 2048-clip numbers",
  ),
  Protocol(
    name="tf_reference",
    num_fake=2048,
    num_real=2048,
    num_trials=10,
    num_frames=16,
    fake_uint8="floor",
    resize="direct",
    covariance="unbiased",
    sqrt_method="svd",
    real_sampling="windows",
    resample_real=True,
    seed=42,
    reference="google-research frechet_video_distance.py preprocessing: TF1-legacy bilinear "
    "straight to 224x224; counts and trials as DIGAN",
  ),
):
  register_protocol(
    _protocol, *(("stylegan_v",) if _protocol.name == "stylegan_v_fvd2048_16f" else ())
  )


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
