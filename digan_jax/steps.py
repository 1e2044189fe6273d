"""The train state and the pure, jittable DIGAN training step (spec §4-7, DESIGN §5).

One iteration, in the official order: G step (L_G), D step (L_D with fakes from the updated G),
R1 step on iterations with step % r1_every == 0 (a separate Adam step on the same D optimiser
state, loss x r1_every), EMA update of G. Each phase is also available on its own (`g_phase`,
`d_phase`, `r1_phase`, `ema_phase`) so the benchmark can time them; `train_step` composes them, and
`jit_train_step` compiles exactly two variants (static `do_r1`) with the state donated.

Randomness: every phase draws its latents, fake times and augmentation from
fold_in(fold_in(state.rng, step), phase), for the whole global batch, sharded like the batch
(threefry is partitionable, so the values do not depend on the device count).

Gradient accumulation (`config.train.num_micro_batches` = k): micro-batch m holds the global rows
i with i % k == m. With strided minibatch-std groups (sample i in group i % (N/G)) every group of a
micro-batch is then exactly a group of the full batch, so k micro-batches give the same losses and
the same update as one full batch (up to float reassociation) as long as N/k is a multiple of the
minibatch-std group size. Latents and augmentation are drawn for the full batch and sliced the same
way, so the randomness does not depend on k either.
"""

from __future__ import annotations

import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from digan_jax import augment, losses, sharding
from digan_jax.models import factory
from digan_jax.models.discriminator import pack_pair

PHASE_G, PHASE_D, PHASE_R1 = 0, 1, 2


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: iterations done
  g_params: Any
  g_stats: Any  # mapping's w_avg (truncation only)
  g_ema: Any  # {'params', 'stats'} of the EMA generator
  d_params: Any
  g_opt_state: Any
  d_opt_state: Any
  rng: jax.Array  # raw uint32 key; per-step keys are fold_in(rng, step)


class DiganSteps:
  """Step functions for one model/config on one mesh. All methods are pure and jittable."""

  def __init__(self, config, mesh, generator=None, discriminator=None,
               compiler_options: dict[str, Any] | None = None):
    tc = config.train
    # Extra XLA options for every compiled function (tests use a low backend optimisation level
    # because their tiny networks are compile-bound).
    self.compiler_options = compiler_options
    self.config = config
    self.mesh = mesh
    if generator is None or discriminator is None:
      generator, discriminator = factory.build(config.model)
    self.generator, self.discriminator = generator, discriminator
    self.gcfg = generator.config
    self.resolution = self.gcfg.resolution
    self.c_dim = self.gcfg.c_dim
    self.global_batch = int(tc.global_batch_size)
    self.num_micro = int(tc.num_micro_batches)
    self.policy = tc.augment
    augment.parse_policy(self.policy)  # fail early on a typo
    self.translation = float(tc.augment_translation)
    self.cutout = float(tc.augment_cutout)
    self.r1_gamma = float(tc.r1_gamma)
    self.r1_every = int(tc.r1_every)
    self.ema_kimg = float(tc.ema_kimg)
    self.ema_rampup = tc.ema_rampup
    if self.num_micro < 1 or self.global_batch % self.num_micro:
      raise ValueError(f"config.train.num_micro_batches={self.num_micro} must divide "
                       f"global_batch_size={self.global_batch}")
    micro = self.global_batch // self.num_micro
    if micro % mesh.size:
      raise ValueError(f"micro-batch {micro} (= global_batch_size {self.global_batch} / "
                       f"num_micro_batches {self.num_micro}) is not divisible by the {mesh.size} "
                       "devices; change global_batch_size or num_micro_batches")
    if self.r1_every < 1:
      raise ValueError(f"config.train.r1_every must be >= 1, got {self.r1_every}")
    hp = losses.adam_hparams(tc)
    self.adam_hparams = hp
    self.g_tx = optax.adam(**hp["g"])
    self.d_tx = optax.adam(**hp["d"])
    self.seed = int(tc.seed)
    abstract = jax.eval_shape(self.init, jax.random.PRNGKey(0))
    self.state_shardings = sharding.state_shardings(abstract, mesh)

  # ---- state ----

  def init(self, rng) -> TrainState:
    g_key, d_key, train_key = jax.random.split(rng, 3)
    cfg = self.gcfg
    labels = jnp.zeros((1, self.c_dim)) if self.c_dim else None
    g_vars = self.generator.init(g_key, jnp.zeros((1, cfg.z_dim)), jnp.zeros((1, cfg.motion_dim)),
                                 jnp.zeros((1, 2)), labels)
    x7 = jnp.zeros((1, self.resolution, self.resolution, 7))
    d_params = self.discriminator.init(d_key, x7, labels)["params"]
    g_params, g_stats = g_vars["params"], g_vars["stats"]
    return TrainState(
        step=jnp.zeros((), jnp.int32), g_params=g_params, g_stats=g_stats,
        g_ema={"params": g_params, "stats": g_stats}, d_params=d_params,
        g_opt_state=self.g_tx.init(g_params), d_opt_state=self.d_tx.init(d_params), rng=train_key)

  def create_train_state(self, seed: int | None = None) -> TrainState:
    """The initial state, created directly with its final sharding (no host copy)."""
    seed = self.seed if seed is None else seed
    init = jax.jit(self.init, out_shardings=self.state_shardings,
                   compiler_options=self.compiler_options)
    return init(jax.random.PRNGKey(seed))

  # ---- helpers ----

  def _constrain(self, tree, leading: int = 0):
    """Pin the batch dimension (after `leading` unsharded dims) to the batch sharding."""
    def one(x):
      spec = [None] * leading + [sharding.BATCH_AXES] + [None] * (x.ndim - leading - 1)
      return jax.lax.with_sharding_constraint(
          x, jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(*spec)))
    return jax.tree.map(one, tree)

  def _phase_key(self, state: TrainState, phase: int):
    return jax.random.fold_in(jax.random.fold_in(state.rng, state.step), phase)

  def _aug_params(self, key, n: int):
    return augment.sample_params(key, n, self.resolution, self.policy, self.translation, self.cutout)

  def _fake_inputs(self, key, n: int) -> dict[str, Any]:
    """Latents, sorted Beta(2,1)/Beta(1,2) times and augmentation for n fake videos (spec §4)."""
    k_z, k_m, k_a, k_b, k_aug = jax.random.split(key, 5)
    # Exact inverse-CDF draws: Beta(2,1) has CDF t^2, Beta(1,2) has CDF 1 - (1 - t)^2.
    t_a = jnp.sqrt(jax.random.uniform(k_a, (n,)))
    t_b = 1.0 - jnp.sqrt(jax.random.uniform(k_b, (n,)))
    times = jnp.stack([jnp.minimum(t_a, t_b), jnp.maximum(t_a, t_b)], axis=1)
    return self._constrain(dict(
        z_content=jax.random.normal(k_z, (n, self.gcfg.z_dim)),
        z_motion=jax.random.normal(k_m, (n, self.gcfg.motion_dim)),
        times=times, aug_fake=self._aug_params(k_aug, n)))

  def _labels(self, batch):
    """One-hot class labels [B, c_dim] for a conditional model (None otherwise)."""
    if not self.c_dim:
      return None
    if "label" not in batch:
      raise ValueError(f"the model is class-conditional (c_dim={self.c_dim}) but the batch has no "
                       "'label'; use a labelled dataset or set config.model.generator.c_dim=0")
    return jax.nn.one_hot(batch["label"], self.c_dim, dtype=jnp.float32)

  def _real7(self, batch):
    frames = batch["frames"]
    if frames.ndim != 5 or frames.shape[1] != 2 or frames.shape[2:] != (self.resolution,
                                                                         self.resolution, 3):
      raise ValueError(f"real batch 'frames' must be [B, 2, {self.resolution}, {self.resolution}, 3], "
                       f"got {frames.shape}")
    frames = frames.astype(jnp.float32)
    return pack_pair(frames[:, 0], frames[:, 1], batch["delta_t"].astype(jnp.float32))

  def _render_pair7(self, g_params, g_stats, mb):
    """Fake motion-D inputs [n, H, W, 7] from the generator (w_avg updated, as in training)."""
    frames, mutated = self.generator.apply(
        {"params": g_params, "stats": g_stats}, mb["z_content"], mb["z_motion"], mb["times"],
        labels=mb.get("labels"), update_w_avg=True, mutable=["stats"])
    times = mb["times"]
    return pack_pair(frames[:, 0], frames[:, 1], times[:, 1] - times[:, 0]), mutated["stats"]

  def _d_logits(self, d_params, x7, aug_params, labels):
    aug7 = augment.apply_pair7(x7, aug_params, self.policy, self.cutout)
    return self.discriminator.apply({"params": d_params}, aug7, labels)

  def _accumulate(self, fn, params, inputs):
    """Mean over micro-batches of value_and_grad(fn, has_aux=True); aux must be linear in the batch.

    Returns (loss, aux, grads). With one micro-batch this is plain value_and_grad.
    """
    grad_fn = jax.value_and_grad(fn, has_aux=True)
    k = self.num_micro
    if k == 1:
      (loss, aux), grads = grad_fn(params, inputs)
      return loss, aux, grads
    n = self.global_batch
    # Strided split: micro-batch m = rows m, m + k, m + 2k, ... (see the module docstring).
    micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape((n // k, k) + x.shape[1:]), 0, 1), inputs)
    micro = self._constrain(micro, leading=1)

    def body(carry, mb):
      mb = self._constrain(mb)
      (loss, aux), grads = grad_fn(params, mb)
      return jax.tree.map(jnp.add, carry, (loss, aux, grads)), None

    first = jax.tree.map(lambda x: x[0], micro)
    shapes = jax.eval_shape(lambda p, mb: (lambda r: (r[0][0], r[0][1], r[1]))(grad_fn(p, mb)),
                            params, first)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    total, _ = jax.lax.scan(body, zeros, micro)
    return jax.tree.map(lambda x: x / k, total)

  # ---- phases ----

  def g_phase(self, state: TrainState, batch) -> tuple[TrainState, dict[str, jax.Array]]:
    """Gmain: one Adam step of G on L_G (D frozen)."""
    inputs = self._fake_inputs(self._phase_key(state, PHASE_G), self.global_batch)
    labels = self._labels(batch)
    if labels is not None:
      # The official code draws fake labels from the training set's labels; the real batch's
      # labels are such a draw (and keep every micro-batch's fake/real label mix identical).
      inputs["labels"] = labels

    def loss_fn(g_params, mb):
      fake7, stats = self._render_pair7(g_params, state.g_stats, mb)
      motion_logits, image_logits = self._d_logits(state.d_params, fake7, mb["aug_fake"],
                                                   mb.get("labels"))
      return losses.generator_loss(motion_logits, image_logits), stats

    loss, g_stats, grads = self._accumulate(loss_fn, state.g_params, inputs)
    updates, g_opt_state = self.g_tx.update(losses.sanitize_grads(grads), state.g_opt_state,
                                            state.g_params)
    state = state.replace(g_params=optax.apply_updates(state.g_params, updates), g_stats=g_stats,
                          g_opt_state=g_opt_state)
    return state, {"train/loss_g": loss, "train/grad_norm_g": optax.tree.norm(grads)}

  def d_phase(self, state: TrainState, batch) -> tuple[TrainState, dict[str, jax.Array]]:
    """Dmain: one Adam step of both discriminators on L_D, fakes from the current (updated) G."""
    key = self._phase_key(state, PHASE_D)
    k_fake, k_real = jax.random.split(key)
    inputs = self._fake_inputs(k_fake, self.global_batch)
    inputs["real7"] = self._real7(batch)
    inputs["aug_real"] = self._constrain(self._aug_params(k_real, self.global_batch))
    labels = self._labels(batch)
    if labels is not None:
      inputs["labels"] = labels

    def loss_fn(d_params, mb):
      fake7, stats = self._render_pair7(state.g_params, state.g_stats, mb)
      fake7 = jax.lax.stop_gradient(fake7)
      fake_m, fake_i = self._d_logits(d_params, fake7, mb["aug_fake"], mb.get("labels"))
      real_m, real_i = self._d_logits(d_params, mb["real7"], mb["aug_real"], mb.get("labels"))
      loss = losses.discriminator_loss(real_m, real_i, fake_m, fake_i)
      logits = {"train/dm_real_logit": jnp.mean(real_m), "train/dm_fake_logit": jnp.mean(fake_m),
                "train/di_real_logit": jnp.mean(real_i), "train/di_fake_logit": jnp.mean(fake_i)}
      return loss, (stats, logits)

    loss, (g_stats, logits), grads = self._accumulate(loss_fn, state.d_params, inputs)
    updates, d_opt_state = self.d_tx.update(losses.sanitize_grads(grads), state.d_opt_state,
                                            state.d_params)
    state = state.replace(d_params=optax.apply_updates(state.d_params, updates), g_stats=g_stats,
                          d_opt_state=d_opt_state)
    return state, {"train/loss_d": loss, "train/grad_norm_d": optax.tree.norm(grads), **logits}

  def r1_phase(self, state: TrainState, batch) -> tuple[TrainState, dict[str, jax.Array]]:
    """Dreg: one Adam step of D on r1_every x R1 (real batch, fresh augmentation)."""
    inputs = {"real7": self._real7(batch),
              "aug_real": self._constrain(
                  self._aug_params(self._phase_key(state, PHASE_R1), self.global_batch))}
    labels = self._labels(batch)
    if labels is not None:
      inputs["labels"] = labels

    def loss_fn(d_params, mb):
      lab = mb.get("labels")
      apply = lambda x, method: self.discriminator.apply({"params": d_params}, x, lab, method=method)
      penalty_m, penalty_i, _, _ = losses.r1_penalties(
          lambda x7: apply(x7, "motion"), lambda frames: apply(frames, "image"), mb["real7"],
          lambda x7: augment.apply_pair7(x7, mb["aug_real"], self.policy, self.cutout))
      loss_r1 = losses.r1_loss(penalty_m, penalty_i, self.r1_gamma)
      return loss_r1 * self.r1_every, loss_r1

    _, loss_r1, grads = self._accumulate(loss_fn, state.d_params, inputs)
    updates, d_opt_state = self.d_tx.update(losses.sanitize_grads(grads), state.d_opt_state,
                                            state.d_params)
    state = state.replace(d_params=optax.apply_updates(state.d_params, updates),
                          d_opt_state=d_opt_state)
    return state, {"train/loss_r1": loss_r1, "train/grad_norm_r1": optax.tree.norm(grads)}

  def ema_phase(self, state: TrainState) -> TrainState:
    """G_ema <- lerp(G, G_ema, β); w_avg copied; then the iteration counter advances."""
    beta = losses.ema_beta(state.step, self.global_batch, self.ema_kimg, self.ema_rampup)
    params = jax.tree.map(lambda e, p: p + (e - p) * beta.astype(p.dtype), state.g_ema["params"],
                          state.g_params)
    return state.replace(g_ema={"params": params, "stats": state.g_stats}, step=state.step + 1)

  def train_step(self, state: TrainState, batch, do_r1: bool):
    """One full iteration; `do_r1` must be `should_r1(step)` (static: two compiled variants)."""
    state, metrics = self.g_phase(state, batch)
    state, d_metrics = self.d_phase(state, batch)
    metrics.update(d_metrics)
    if do_r1:
      state, r1_metrics = self.r1_phase(state, batch)
      metrics.update(r1_metrics)
    return self.ema_phase(state), metrics

  def should_r1(self, step: int) -> bool:
    return step % self.r1_every == 0

  # ---- compiled entry points ----

  def _jit(self, fn, **kwargs):
    batch_sh = sharding.batch_sharding(self.mesh)
    return jax.jit(fn, in_shardings=(self.state_shardings, batch_sh),
                   out_shardings=(self.state_shardings, sharding.replicated(self.mesh)),
                   donate_argnums=(0,), compiler_options=self.compiler_options, **kwargs)

  def jit_train_step(self):
    """jit(train_step) with the state donated; call as f(state, batch, do_r1) (positional)."""
    return self._jit(self.train_step, static_argnums=(2,))

  def jit_phase(self, name: str):
    """A compiled single phase ('g', 'd', 'r1') with the same signature: (state, batch) -> ..."""
    fn = {"g": self.g_phase, "d": self.d_phase, "r1": self.r1_phase}[name]
    return self._jit(fn)

  def jit_ema(self):
    return jax.jit(self.ema_phase, in_shardings=(self.state_shardings,),
                   out_shardings=self.state_shardings, donate_argnums=(0,),
                   compiler_options=self.compiler_options)


def create_train_state(config, mesh, generator=None, discriminator=None, **kwargs):
  """(DiganSteps, sharded initial TrainState) for `config` on `mesh`."""
  steps = DiganSteps(config, mesh, generator, discriminator, **kwargs)
  return steps, steps.create_train_state()


class NonFiniteLossError(RuntimeError):
  pass


class NonFiniteGuard:
  """Stops a run whose losses stay non-finite (after the official per-step gradient sanitising).

  Call `check(step, metrics)` with every fetched metrics dict; after `patience` consecutive checks
  with a non-finite `train/loss_*` it raises NonFiniteLossError. The trainer should not write a
  checkpoint from a non-finite state, so the last good checkpoint stays the newest.
  """

  def __init__(self, patience: int):
    if patience < 1:
      raise ValueError(f"config.train.nonfinite_patience must be >= 1, got {patience}")
    self.patience = int(patience)
    self.count = 0
    self.first_bad_step = None

  def check(self, step: int, metrics) -> bool:
    """True when all losses are finite; raises after `patience` non-finite checks in a row."""
    bad = {k: float(v) for k, v in metrics.items()
           if k.startswith("train/loss") and not math.isfinite(float(np.asarray(v)))}
    if not bad:
      self.count, self.first_bad_step = 0, None
      return True
    self.count += 1
    if self.first_bad_step is None:
      self.first_bad_step = step
    if self.count >= self.patience:
      raise NonFiniteLossError(
          f"training stopped at step {step}: losses have been non-finite for {self.count} "
          f"consecutive checks since step {self.first_bad_step} ({bad}). The last checkpoint "
          "written before that is intact; resume from it with a lower config.train.base_lr, "
          "config.model.compute_dtype='float32', or a larger config.train.r1_gamma.")
    return False
