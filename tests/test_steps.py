"""The sharded training step: device-count invariance, accumulation, phases, learning."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from digan_jax import errors, sharding, steps as steps_lib, train
import tiny_digan

NUM_STEPS = 2  # both with R1 (r1_every = 1): one compiled variant, every phase exercised twice


@functools.lru_cache(maxsize=None)
def _tiny_run(num_devices: int, num_micro_batches: int = 1):
  config = tiny_digan.tiny_config(num_micro_batches=num_micro_batches)
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:num_devices])
  history, state = tiny_digan.run(config, mesh, NUM_STEPS)
  return history, tiny_digan.host_params(state)


def _max_abs_diff(a, b):
  return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _assert_same_run(run_a, run_b, loss_rtol, param_atol):
  (hist_a, params_a), (hist_b, params_b) = run_a, run_b
  assert [sorted(m) for m in hist_a] == [sorted(m) for m in hist_b]
  for ma, mb in zip(hist_a, hist_b):
    for k in ma:
      np.testing.assert_allclose(ma[k], mb[k], rtol=loss_rtol, atol=1e-6, err_msg=k)
  diff = _max_abs_diff(params_a, params_b)
  assert diff < param_atol, diff
  return diff


def test_device_count_invariance():
  """1 device vs 8 devices, same global batch and seed: same losses and parameters.

  Tolerance: losses rtol 1e-5; parameters atol 5e-5 = 2.5 % of one Adam step (lr 2e-3), which
  float reassociation can reach where |g| is tiny (measured ~7e-6 in a D weight, losses ~1 ulp).
  """
  one, eight = _tiny_run(1), _tiny_run(8)
  assert one[0][0]["train/loss_r1"] > 0
  diff = _assert_same_run(one, eight, loss_rtol=1e-5, param_atol=5e-5)
  print(f"max |param(1 device) - param(8 devices)| = {diff:.3g}")
  # The parameters did move (the comparison is not trivially between two initial states).
  config = tiny_digan.tiny_config()
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  init = tiny_digan.host_params(
    steps_lib.DiganSteps(
      config, mesh, compiler_options=tiny_digan.COMPILER_OPTIONS
    ).create_train_state()
  )
  assert _max_abs_diff(init, one[1]) > 1e-3


def test_gradient_accumulation_matches_full_batch():
  """2 strided micro-batches of 8 give the same update as one batch of 16 (8 devices)."""
  diff = _assert_same_run(
    _tiny_run(8), _tiny_run(8, num_micro_batches=2), loss_rtol=1e-5, param_atol=5e-5
  )
  print(f"max |param(k=1) - param(k=2)| = {diff:.3g}")


def test_fsdp_sharded_parameters_train_like_data_parallel(monkeypatch):
  """data=4 x fsdp=2 with (tiny) parameters split over fsdp: same run as plain data parallel."""
  monkeypatch.setattr(sharding, "FSDP_MIN_SIZE", 64)
  config = tiny_digan.tiny_config()
  config.mesh.data, config.mesh.fsdp = 4, 2
  history, state = tiny_digan.run(config, sharding.make_mesh(config.mesh), NUM_STEPS)
  split = [
    x
    for x in jax.tree.leaves(state.d_params) + jax.tree.leaves(state.d_opt_state)
    if "fsdp" in str(x.sharding.spec)
  ]
  assert len(split) > 10
  diff = _assert_same_run(
    _tiny_run(8), (history, tiny_digan.host_params(state)), loss_rtol=1e-5, param_atol=5e-5
  )
  print(f"max |param(fsdp) - param(data parallel)| = {diff:.3g}")


def test_train_state_layout_and_ema_copy_at_step_zero():
  config = tiny_digan.tiny_config()
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  steps = steps_lib.DiganSteps(config, mesh, compiler_options=tiny_digan.COMPILER_OPTIONS)
  state = steps.create_train_state()
  assert int(state.step) == 0 and state.rng.dtype == jnp.uint32
  assert set(state.g_ema) == {"params", "stats"}
  state = state.replace(g_params=jax.tree.map(lambda x: x + 1.0, state.g_params))
  new = jax.jit(steps.ema_phase)(state)
  assert int(new.step) == 1
  # β = 0 at step 0: G_ema is a copy of G.
  for e, p in zip(jax.tree.leaves(new.g_ema["params"]), jax.tree.leaves(state.g_params)):
    np.testing.assert_array_equal(e, p)


def test_effective_adam_matches_reference_update():
  """Adam(β1=0, ε=1e-8) with the lazy-regularisation-corrected lr/β2, two steps vs NumPy."""
  config = tiny_digan.tiny_config()
  steps = steps_lib.DiganSteps(
    config,
    sharding.make_mesh(config.mesh, jax.devices()[:1]),
    compiler_options=tiny_digan.COMPILER_OPTIONS,
  )
  np.testing.assert_allclose(steps.adam_hparams["g"]["learning_rate"], 0.002, rtol=1e-12)
  np.testing.assert_allclose(steps.adam_hparams["d"]["learning_rate"], 0.0025 * 16 / 17, rtol=1e-12)
  np.testing.assert_allclose(steps.adam_hparams["g"]["b2"], 0.991992, atol=5e-7)
  np.testing.assert_allclose(steps.adam_hparams["d"]["b2"], 0.990585, atol=5e-7)
  for tx, hp in (
    (steps.optimizers["g"], steps.adam_hparams["g"]),
    (steps.optimizers["d"], steps.adam_hparams["d"]),
  ):
    assert hp["b1"] == 0.0 and hp["eps"] == 1e-8
    params = jnp.array([1.0, -2.0, 3.0])
    grads = [jnp.array([0.5, -1e-3, 2.0]), jnp.array([-0.25, 1e-3, 1.0])]
    opt_state = tx.init(params)
    v = np.zeros(3)
    p_ref = np.array(params, np.float64)
    for t, g in enumerate(grads, 1):
      updates, opt_state = tx.update(g, opt_state, params)
      params = params + updates
      g = np.asarray(g, np.float64)
      v = hp["b2"] * v + (1 - hp["b2"]) * g * g  # torch.optim.Adam with β1 = 0
      p_ref = p_ref - hp["learning_rate"] * g / (np.sqrt(v / (1 - hp["b2"] ** t)) + hp["eps"])
    np.testing.assert_allclose(params, p_ref, rtol=1e-6)


def test_fake_times_follow_sorted_beta():
  config = tiny_digan.tiny_config()
  steps = steps_lib.DiganSteps(
    config,
    sharding.make_mesh(config.mesh, jax.devices()[:1]),
    compiler_options=tiny_digan.COMPILER_OPTIONS,
  )
  times = np.asarray(jax.jit(lambda k: steps._fake_draws(k, 200_000)["times"])(jax.random.key(3)))
  assert np.all(times[:, 0] <= times[:, 1]) and times.min() >= 0 and times.max() <= 1
  # Official fake-time draws (docs/frame_pairs.md): E[t_lo] = 0.300, E[t_hi] = 0.700, E[Δt] = 0.400 (MC std ~6e-4).
  np.testing.assert_allclose(times.mean(0), [0.3, 0.7], atol=3e-3)
  np.testing.assert_allclose(np.mean(times[:, 1] - times[:, 0]), 0.4, atol=3e-3)
  dt = times[:, 1] - times[:, 0]
  np.testing.assert_allclose(
    [np.mean(dt < 1 / 3), np.mean((dt >= 1 / 3) & (dt < 2 / 3))], [0.440, 0.383], atol=5e-3
  )


def test_fsdp_shards_large_parameters_only():
  config = tiny_digan.tiny_config()
  config.mesh.data, config.mesh.fsdp = -1, 2
  mesh = sharding.make_mesh(config.mesh)
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2}
  abstract = {
    "big": jax.ShapeDtypeStruct((512, 1024), jnp.float32),
    "odd": jax.ShapeDtypeStruct((513, 1023), jnp.float32),
    "small": jax.ShapeDtypeStruct((16,), jnp.float32),
  }
  sh = sharding.state_shardings(abstract, mesh)
  assert sh["big"].spec == jax.sharding.PartitionSpec(None, "fsdp")
  assert sh["odd"].spec == jax.sharding.PartitionSpec()
  assert sh["small"].spec == jax.sharding.PartitionSpec()
  with pytest.raises(ValueError, match="-1"):
    config.mesh.data, config.mesh.fsdp = 3, 2
    sharding.make_mesh(config.mesh)


def test_class_conditional_phase_uses_labels():
  """With c_dim > 0 the D step needs labels, and different labels change the loss."""
  config = tiny_digan.tiny_config(c_dim=3)
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  steps = steps_lib.DiganSteps(config, mesh, compiler_options=tiny_digan.COMPILER_OPTIONS)
  state = steps.create_train_state()
  batch = tiny_digan.real_batch(0, 16, 8, c_dim=3)
  d_loss = jax.jit(lambda s, b: steps.run_phase("d", s, b)[1]["train/loss_d"])
  loss_a = float(d_loss(state, batch))
  loss_b = float(d_loss(state, {**batch, "label": (batch["label"] + 1) % 3}))
  assert np.isfinite(loss_a) and abs(loss_a - loss_b) > 1e-6
  # Fakes fixed (same draws, same fake labels), only the real labels changed: the real logits move
  # only if D reads its labels; the fake ones stay exactly as they were.
  inputs = steps.d_inputs(state, batch)
  other = {**inputs, "real_labels": jnp.roll(inputs["real_labels"], 1, axis=1)}
  d_out = jax.jit(lambda s, b, i: steps.d_grads(s, b, i).per_video)
  a, b = d_out(state, batch, inputs), d_out(state, batch, other)
  real_change = float(jnp.abs(a["real/motion_logits"] - b["real/motion_logits"]).max())
  image_change = float(jnp.abs(a["real/image_logits"] - b["real/image_logits"]).max())
  print(
    f"real logits change with the real labels only: motion {real_change:.3g}, image {image_change:.3g}"
  )
  assert real_change > 1e-6 and image_change > 1e-6
  np.testing.assert_array_equal(a["fake/motion_logits"], b["fake/motion_logits"])
  # The G phase reads labels too (mapping embedding and the projection head).
  g_in = steps.g_inputs(state, batch)
  g_loss = jax.jit(lambda s, b, i: steps.g_grads(s, b, i).terms["total"])
  g_a = float(g_loss(state, batch, g_in))
  g_b = float(g_loss(state, batch, {**g_in, "labels": jnp.roll(g_in["labels"], 1, axis=1)}))
  assert abs(g_a - g_b) > 1e-6
  with pytest.raises(ValueError, match="label"):
    d_loss(state, {k: v for k, v in batch.items() if k != "label"})


def test_nonfinite_guard():
  guard = train.NonFiniteGuard(patience=3)
  assert guard.check(0, {"train/loss_g": 1.0, "train/grad_norm_g": float("nan")})
  assert not guard.check(1, {"train/loss_g": float("nan")})
  assert not guard.check(2, {"train/loss_d": float("inf")})
  assert guard.check(3, {"train/loss_d": 0.5})  # a finite check resets the count
  guard.check(4, {"train/loss_g": float("nan")})
  guard.check(5, {"train/loss_g": float("nan")})
  with pytest.raises(errors.NonFiniteLossError, match="since step 4"):
    guard.check(6, {"train/loss_r1": np.float32("nan")})


def test_nonfinite_policy_skip_with_a_nan_injected_into_one_batch():
  """One batch with a NaN frame: "skip" keeps the whole state (networks, EMA, Adam moments, w_avg)
  and counts train/skipped; the next batch trains. (The default "stop" applies the official
  sanitised update: every other training test runs it.)"""
  config = tiny_digan.tiny_config()
  config.train.nonfinite_policy = "skip"
  mesh = sharding.make_mesh(config.mesh)
  steps = steps_lib.DiganSteps(config, mesh, compiler_options=tiny_digan.COMPILER_OPTIONS)
  step_fn = steps.jit_train_step()
  host = lambda s: jax.tree.map(np.asarray, jax.device_get(s))

  def feed(state, i, nan=False):
    batch = tiny_digan.real_batch(i, steps.global_batch, steps.resolution, steps.c_dim)
    if nan:
      batch["frames"] = batch["frames"].copy()
      batch["frames"][3, 0, 2, 2, 1] = np.nan
    return step_fn(state, sharding.global_batch_from_local(batch, mesh), steps.lazy_phases(i))

  state, _ = feed(steps.create_train_state(), 0)
  before = host(state)
  state, metrics = feed(state, 1, nan=True)
  after = host(state)
  assert not np.isfinite(float(metrics["train/loss_d"]))
  changed = [
    x.shape
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after))
    if not np.array_equal(x, y)
  ]
  assert float(metrics["train/skipped"]) == 1.0
  assert changed == [()] and int(after.step) == int(before.step) + 1  # only the counter
  state, metrics = feed(state, 2)
  assert float(metrics["train/skipped"]) == 0.0 and np.isfinite(float(metrics["train/loss_d"]))
  moved = host(state)
  assert any(
    not np.array_equal(x, y)
    for x, y in zip(jax.tree.leaves(after.d_params), jax.tree.leaves(moved.d_params))
  )


def test_nonfinite_guard_of_the_skip_policy():
  guard = train.NonFiniteGuard(patience=2)
  guard.check_skipped(10, 1, 10)  # some skipped: training goes on
  guard.check_skipped(20, 10, 10)
  guard.check_skipped(30, 3, 10)  # resets
  guard.check_skipped(40, 10, 10)
  with pytest.raises(errors.NonFiniteLossError, match="since step 40 was non-finite and skipped"):
    guard.check_skipped(50, 10, 10)


def test_learning_motion_that_follows_delta_t():
  """Toy videos whose brightness ramps with time, x(t) = colour_v + SLOPE·(t - 1/2), with Δt drawn
  like the fakes' (so D_M cannot win on the time gap alone; docs/frame_pairs.md). D first separates real from
  fake, then G closes the gap: its frames take the colour, and its frame difference follows Δt with
  the real slope. A G that ignores t or z_motion (frame difference 0) fails the slope check."""
  slope_real, res, batch_size = 1.0, 8, 8
  config = tiny_digan.tiny_config(resolution=res, global_batch=batch_size, r1_every=16)
  config.model.generator.channel_max = config.model.discriminator.channel_max = 16
  config.train.augment = ""  # keep the toy problem learnable in a few hundred steps
  config.train.base_lr = 0.01
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  steps = steps_lib.DiganSteps(config, mesh, compiler_options=tiny_digan.COMPILER_OPTIONS)
  state = steps.create_train_state()
  colour = np.array([0.3, -0.3, 0.0], np.float32)
  draws = steps._fake_draws(jax.random.key(7), 64)
  times = np.asarray(draws["times"])
  delta_t = times[:, 1] - times[:, 0]
  render = jax.jit(
    lambda s: steps.render_pair7(
      s.g_params, s.g_stats, draws["z_content"], draws["z_motion"], draws["times"]
    )[0]
  )

  def fit(s):
    x = np.asarray(render(s))
    first = x[..., :3].mean(axis=(1, 2))  # [64, 3]
    colour_error = float(np.mean(np.abs(first - colour - slope_real * (times[:, :1] - 0.5))))
    change = (x[..., 3:6] - x[..., :3]).mean(axis=(1, 2, 3))  # mean frame difference per video
    slope = float(np.sum(change * delta_t) / np.sum(delta_t * delta_t))
    return colour_error, slope, float(np.corrcoef(change, delta_t)[0, 1])

  def toy_batch(i):
    rng = np.random.default_rng(i)
    t = np.sort(
      np.stack(
        [np.sqrt(rng.uniform(size=batch_size)), 1 - np.sqrt(rng.uniform(size=batch_size))], 1
      ),
      1,
    )
    video_colour = colour + 0.1 * rng.standard_normal((batch_size, 1, 1, 1, 3))
    frames = video_colour + slope_real * (t[:, :, None, None, None] - 0.5)
    frames = np.broadcast_to(frames, (batch_size, 2, res, res, 3)).astype(np.float32)
    return sharding.global_batch_from_local(
      {"frames": frames, "delta_t": (t[:, 1] - t[:, 0]).astype(np.float32)}, mesh
    )

  step_fn = steps.jit_train_step()
  error_init, slope_init, _ = fit(state)
  gaps = []
  for i in range(600):
    state, m = step_fn(state, toy_batch(i), steps.lazy_phases(i))
    gaps.append(
      float(
        m["train/dm_real_logit"]
        - m["train/dm_fake_logit"]
        + m["train/di_real_logit"]
        - m["train/di_fake_logit"]
      )
    )
  error_final, slope, corr = fit(state)
  windows = np.array(gaps).reshape(-1, 50).mean(axis=1)
  print(
    f"colour error {error_init:.3f} -> {error_final:.3f}; frame-difference slope vs Δt "
    f"{slope_init:.3f} -> {slope:.3f} (real {slope_real}), correlation {corr:.3f}; "
    f"logit gap per 50 steps {np.round(windows, 2).tolist()}"
  )
  # One trace and one compilation per variant (with and without R1), nothing else.
  assert steps.step_variants() == ((), ("r1",))
  assert dict(steps.trace_counts) == {("train_step", ()): 1, ("train_step", ("r1",)): 1}
  assert step_fn._cache_size() == 2
  assert windows[:4].max() > 1.5  # D tells real from fake
  assert windows[-1] < 0.25 * windows[:4].max()  # and G closes the gap again
  assert error_final < 0.2 * error_init  # by moving its frames to the real colour at time t
  assert 0.6 * slope_real < slope < 1.4 * slope_real  # with the real motion per unit Δt
  assert corr > 0.8  # video by video, not just on average


def test_training_replays_the_public_phase_draws():
  """train_step draws exactly what g_inputs / d_inputs / r1_inputs return: passing those draws
  explicitly gives the same iteration, and draws of another step give a different one."""
  steps, state = _tiny_steps()
  batch = tiny_digan.real_batch(0, steps.global_batch, steps.resolution)
  draw = lambda s: {
    "g": steps.g_inputs(s, batch),
    "d": steps.d_inputs(s, batch),
    "r1": steps.r1_inputs(s, batch),
  }
  step_fn = jax.jit(steps.train_step, static_argnums=2)
  drawn, _ = step_fn(state, batch, ("r1",))
  replayed, _ = step_fn(state, batch, ("r1",), draw(state))
  other, _ = step_fn(state, batch, ("r1",), draw(state.replace(step=jnp.asarray(5, jnp.int32))))
  same = _max_abs_diff(tiny_digan.host_params(drawn), tiny_digan.host_params(replayed))
  differ = _max_abs_diff(tiny_digan.host_params(drawn), tiny_digan.host_params(other))
  print(f"drawn vs replayed draws: {same:.3g}; vs draws of another step: {differ:.3g}")
  # The two programs fuse differently (draws made in the graph vs passed in), so they agree to
  # float32 reassociation, not bitwise: measured 2.74e-6 (jax 0.10.2, numpy 2.4.6, optax 0.2.8,
  # 2026-12-04; below 1e-6 with the stop-24 environment) vs 8.5e-3 for another step's draws.
  assert same < 2e-5
  assert differ > 1e-3


def test_phase_outputs_in_global_order_with_micro_batches():
  """Per-video outputs and loss terms of 2 strided micro-batches equal those of the full batch."""
  outs = []
  for k in (1, 2):
    steps, state = _tiny_steps(num_micro_batches=k)
    batch = tiny_digan.real_batch(0, steps.global_batch, steps.resolution)
    fn = jax.jit(lambda s, b: steps.d_grads(s, b, steps.d_inputs(s, b)))
    outs.append(jax.device_get(fn(state, batch)))
  (full, micro) = outs
  for key in full.per_video:
    np.testing.assert_allclose(
      micro.per_video[key], full.per_video[key], rtol=1e-5, atol=1e-6, err_msg=key
    )
  for key in full.terms:
    np.testing.assert_allclose(micro.terms[key], full.terms[key], rtol=1e-5, err_msg=key)
  # Not trivially equal: the videos have different logits.
  assert np.ptp(full.per_video["real/image_logits"]) > 1e-4


def _tiny_steps(**kwargs):
  config = tiny_digan.tiny_config(**kwargs)
  steps = steps_lib.DiganSteps(
    config,
    sharding.make_mesh(config.mesh, jax.devices()[:1]),
    compiler_options=tiny_digan.COMPILER_OPTIONS,
  )
  return steps, steps.create_train_state()


def test_ema_blends_with_the_official_beta():
  """Past step 0, G_ema = β·G_ema + (1 − β)·G with β = 0.5^(batch / ema_nimg), checked in NumPy."""
  steps, state = _tiny_steps()
  step = 300
  g_ema = jax.tree.map(lambda x: x - 0.5, state.g_params)
  g = jax.tree.map(lambda x: x + 1.0, state.g_params)
  state = state.replace(
    step=jnp.asarray(step, jnp.int32), g_params=g, g_ema={"params": g_ema, "stats": state.g_stats}
  )
  new = jax.jit(steps.ema_phase)(state)
  ema_nimg = min(steps.cfg.ema_kimg * 1000, step * steps.global_batch * steps.cfg.ema_rampup)
  beta = 0.5 ** (steps.global_batch / ema_nimg)
  assert 0.1 < beta < 0.99
  # Relative to the values: the mapping weights are stored x100 (lr multiplier 0.01).
  err = max(
    float(
      np.max(
        np.abs(np.asarray(n) - (beta * np.asarray(e) + (1 - beta) * np.asarray(p)))
        / (np.abs(np.asarray(p)) + 1.0)
      )
    )
    for n, e, p in zip(
      jax.tree.leaves(new.g_ema["params"]), jax.tree.leaves(g_ema), jax.tree.leaves(g)
    )
  )
  print(f"EMA at step {step}: β = {beta:.5f}, max |error| / (|p| + 1) {err:.3g}")
  assert err < 1e-6
  assert int(new.step) == step + 1


def test_r1_loss_carries_the_lazy_regularisation_gain():
  """The R1 step back-propagates r1_every × (γ/2)(mean ‖∇D_M‖² + mean ‖∇D_I‖²): its gradients
  with r1_every = 4 are exactly 4× those with r1_every = 1, and the reported R1 loss is not."""
  results = {}
  for every in (1, 4):
    steps, state = _tiny_steps(r1_every=every)
    batch = tiny_digan.real_batch(0, steps.global_batch, steps.resolution)
    fn = jax.jit(lambda s, b: steps.r1_grads(s, b, steps.r1_inputs(s, b)))
    results[every] = jax.device_get(fn(state, batch))
  one, four = results[1], results[4]
  t = four.terms
  np.testing.assert_allclose(t["total"], 4 * (t["r1_loss_motion"] + t["r1_loss_image"]), rtol=1e-6)
  np.testing.assert_allclose(
    t["r1_loss_motion"] + t["r1_loss_image"],
    0.5 * steps.cfg.r1_gamma * (t["r1_penalty_motion"] + t["r1_penalty_image"]),
    rtol=1e-6,
  )
  ratios = [
    float(np.max(np.abs(b))) / float(np.max(np.abs(a)))
    for a, b in zip(jax.tree.leaves(one.grads), jax.tree.leaves(four.grads))
    if np.max(np.abs(a)) > 0
  ]
  print(f"R1 gradient ratio r1_every 4 / 1: min {min(ratios):.6f}, max {max(ratios):.6f}")
  np.testing.assert_allclose(ratios, 4.0, rtol=1e-5)
  np.testing.assert_allclose(four.terms["r1_loss_motion"], one.terms["r1_loss_motion"], rtol=1e-6)


def test_w_avg_tracks_the_batch_mean_of_w_in_every_generator_call():
  """Gmain and Dmain each update w_avg ← mean_B(w) + 0.995·(w_avg − mean_B(w)) (official training
  mode); checked against w from the mapping network applied on its own."""
  steps, state = _tiny_steps()
  batch = tiny_digan.real_batch(0, steps.global_batch, steps.resolution)
  g_in, d_in = steps.g_inputs(state, batch), steps.d_inputs(state, batch)
  state = state.replace(g_stats=jax.tree.map(lambda x: x + 0.3, state.g_stats))
  after_g, _ = jax.jit(lambda s, b, i: steps.run_phase("g", s, b, i))(state, batch, g_in)
  after_d, _ = jax.jit(lambda s, b, i: steps.run_phase("d", s, b, i))(after_g, batch, d_in)
  beta = steps.gcfg.w_avg_beta

  def expected(params, stats, z):
    w = steps.generator.apply({"params": params, "stats": stats}, z, method="map")
    mean = np.asarray(w).mean(axis=0)
    return mean + beta * (np.asarray(stats["mapping"]["w_avg"]) - mean)

  # Gmain maps with the G before its update, Dmain with the updated G.
  exp_g = expected(state.g_params, state.g_stats, g_in["z_content"])
  exp_d = expected(after_g.g_params, after_g.g_stats, d_in["z_content"])
  got_g, got_d = (np.asarray(s.g_stats["mapping"]["w_avg"]) for s in (after_g, after_d))
  print(
    f"w_avg after G / D phase: max |error| {np.abs(got_g - exp_g).max():.3g} / "
    f"{np.abs(got_d - exp_d).max():.3g}; moved {np.abs(got_d - np.asarray(state.g_stats['mapping']['w_avg'])).max():.3g}"
  )
  np.testing.assert_allclose(got_g, exp_g, atol=1e-6)
  np.testing.assert_allclose(got_d, exp_d, atol=1e-6)
  assert np.abs(got_d - got_g).max() > 1e-4  # the D phase's call moved it again


def test_init_from_given_networks_and_mismatch_message():
  steps, state = _tiny_steps()
  g_vars, d_vars = {"params": state.g_params, "stats": state.g_stats}, {"params": state.d_params}
  again = steps.init_from(g_vars, d_vars)
  assert _max_abs_diff(tiny_digan.host_params(again), tiny_digan.host_params(state)) == 0
  bad = jax.tree.map(lambda x: x[..., :1], state.d_params)
  with pytest.raises(ValueError, match=r"d_params.*the config needs .*configs_from_meta"):
    steps.init_from(g_vars, {"params": bad})
