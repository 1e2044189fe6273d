"""The sharded training step: device-count invariance, accumulation, phases, learning."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from digan_jax import sharding, steps as steps_lib
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
  init = tiny_digan.host_params(steps_lib.DiganSteps(config, mesh, compiler_options=tiny_digan.COMPILER_OPTIONS).create_train_state())
  assert _max_abs_diff(init, one[1]) > 1e-3


def test_gradient_accumulation_matches_full_batch():
  """2 strided micro-batches of 8 give the same update as one batch of 16 (8 devices)."""
  diff = _assert_same_run(_tiny_run(8), _tiny_run(8, num_micro_batches=2), loss_rtol=1e-5,
                          param_atol=5e-5)
  print(f"max |param(k=1) - param(k=2)| = {diff:.3g}")


def test_fsdp_sharded_parameters_train_like_data_parallel(monkeypatch):
  """data=4 x fsdp=2 with (tiny) parameters split over fsdp: same run as plain data parallel."""
  monkeypatch.setattr(sharding, "FSDP_MIN_SIZE", 64)
  config = tiny_digan.tiny_config()
  config.mesh.data, config.mesh.fsdp = 4, 2
  history, state = tiny_digan.run(config, sharding.make_mesh(config.mesh), NUM_STEPS)
  split = [x for x in jax.tree.leaves(state.d_params) + jax.tree.leaves(state.d_opt_state)
           if "fsdp" in str(x.sharding.spec)]
  assert len(split) > 10
  diff = _assert_same_run(_tiny_run(8), (history, tiny_digan.host_params(state)), loss_rtol=1e-5,
                          param_atol=5e-5)
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
  steps = steps_lib.DiganSteps(config, sharding.make_mesh(config.mesh, jax.devices()[:1]),
                               compiler_options=tiny_digan.COMPILER_OPTIONS)
  np.testing.assert_allclose(steps.adam_hparams["g"]["learning_rate"], 0.002, rtol=1e-12)
  np.testing.assert_allclose(steps.adam_hparams["d"]["learning_rate"], 0.0025 * 16 / 17, rtol=1e-12)
  np.testing.assert_allclose(steps.adam_hparams["g"]["b2"], 0.991992, atol=5e-7)
  np.testing.assert_allclose(steps.adam_hparams["d"]["b2"], 0.990585, atol=5e-7)
  for tx, hp in ((steps.g_tx, steps.adam_hparams["g"]), (steps.d_tx, steps.adam_hparams["d"])):
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
  steps = steps_lib.DiganSteps(config, sharding.make_mesh(config.mesh, jax.devices()[:1]),
                               compiler_options=tiny_digan.COMPILER_OPTIONS)
  times = np.asarray(jax.jit(lambda k: steps._fake_inputs(k, 200_000)["times"])(jax.random.key(3)))
  assert np.all(times[:, 0] <= times[:, 1]) and times.min() >= 0 and times.max() <= 1
  # Spec §4: E[t_lo] = 0.300, E[t_hi] = 0.700, E[Δt] = 0.400 (MC std ~6e-4).
  np.testing.assert_allclose(times.mean(0), [0.3, 0.7], atol=3e-3)
  np.testing.assert_allclose(np.mean(times[:, 1] - times[:, 0]), 0.4, atol=3e-3)
  dt = times[:, 1] - times[:, 0]
  np.testing.assert_allclose([np.mean(dt < 1 / 3), np.mean((dt >= 1 / 3) & (dt < 2 / 3))],
                             [0.440, 0.383], atol=5e-3)


def test_fsdp_shards_large_parameters_only():
  config = tiny_digan.tiny_config()
  config.mesh.data, config.mesh.fsdp = -1, 2
  mesh = sharding.make_mesh(config.mesh)
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2}
  abstract = {"big": jax.ShapeDtypeStruct((512, 1024), jnp.float32),
              "odd": jax.ShapeDtypeStruct((513, 1023), jnp.float32),
              "small": jax.ShapeDtypeStruct((16,), jnp.float32)}
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
  d_loss = jax.jit(lambda s, b: steps.d_phase(s, b)[1]["train/loss_d"])
  loss_a = float(d_loss(state, batch))
  loss_b = float(d_loss(state, {**batch, "label": (batch["label"] + 1) % 3}))
  assert np.isfinite(loss_a) and abs(loss_a - loss_b) > 1e-6
  with pytest.raises(ValueError, match="label"):
    d_loss(state, {k: v for k, v in batch.items() if k != "label"})


def test_nonfinite_guard():
  guard = steps_lib.NonFiniteGuard(patience=3)
  assert guard.check(0, {"train/loss_g": 1.0, "train/grad_norm_g": float("nan")})
  assert not guard.check(1, {"train/loss_g": float("nan")})
  assert not guard.check(2, {"train/loss_d": float("inf")})
  assert guard.check(3, {"train/loss_d": 0.5})  # a finite check resets the count
  guard.check(4, {"train/loss_g": float("nan")})
  guard.check(5, {"train/loss_g": float("nan")})
  with pytest.raises(steps_lib.NonFiniteLossError, match="since step 4"):
    guard.check(6, {"train/loss_r1": np.float32("nan")})


def test_learning_on_a_toy_distribution():
  """16² videos of one colour (+ a little per-video jitter): D first separates real from fake,
  then G closes the gap (measured with 50-step means of the summed D_M + D_I logit gap)."""
  config = tiny_digan.tiny_config(resolution=16, global_batch=8, r1_every=16)
  config.model.generator.channel_max = config.model.discriminator.channel_max = 16
  config.train.augment = ""  # keep the toy problem trivially learnable
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  steps, state = steps_lib.create_train_state(config, mesh,
                                              compiler_options=tiny_digan.COMPILER_OPTIONS)
  colour = np.array([0.6, -0.4, 0.2], np.float32)
  render = jax.jit(lambda s: steps._render_pair7(
      s.g_params, s.g_stats, steps._fake_inputs(jax.random.key(7), 64))[0][..., :6])

  def colour_error(s):
    return float(jnp.mean(jnp.abs(render(s).reshape(-1, 2, 3) - colour)))

  def toy_batch(i):
    rng = np.random.default_rng(i)
    # Δt from the fakes' distribution, so D_M cannot win on the time gap alone (spec D1).
    t = np.sort(np.stack([np.sqrt(rng.uniform(size=8)), 1 - np.sqrt(rng.uniform(size=8))], 1), 1)
    video_colour = colour + 0.1 * rng.standard_normal((8, 1, 1, 1, 3))
    frames = np.broadcast_to(video_colour, (8, 2, 16, 16, 3)).astype(np.float32)
    return sharding.global_batch_from_local(
        {"frames": frames, "delta_t": (t[:, 1] - t[:, 0]).astype(np.float32)}, mesh)

  step_fn = steps.jit_train_step()
  error_init = colour_error(state)
  gaps = []
  for i in range(400):
    state, m = step_fn(state, toy_batch(i), steps.should_r1(i))
    gaps.append(float(m["train/dm_real_logit"] - m["train/dm_fake_logit"]
                      + m["train/di_real_logit"] - m["train/di_fake_logit"]))
  error_final = colour_error(state)
  windows = np.array(gaps).reshape(-1, 50).mean(axis=1)
  print(f"colour error {error_init:.3f} -> {error_final:.3f}; logit gap per 50 steps "
        f"{np.round(windows, 2).tolist()}")
  assert step_fn._cache_size() == 2  # with and without R1, nothing else
  assert windows[:4].max() > 2.0  # D tells real from fake
  assert windows[-1] < 0.4 * windows[:4].max()  # and G closes the gap again
  assert error_final < 0.2 * error_init  # by moving its frames to the real colour
