"""The train state and the pure, jittable DIGAN training step (official src/training/loss.py and
training_loop.py: OurStyleGAN2Loss phases, Adam, EMA).

One iteration, in the official order: G step (L_G), D step (L_D with fakes from the updated G),
R1 step on iterations with step % r1_every == 0 (a separate Adam step on the same D optimiser
state, loss x r1_every), EMA update of G. Each phase is also available on its own (`g_phase`,
`d_phase`, `r1_phase`, `ema_phase`) so the benchmark can time them; `train_step` composes them, and
`jit_train_step` compiles exactly two variants (static `do_r1`) with the state donated.

Replay: each phase is `<phase>_inputs` (draw every random value), `<phase>_grads` (gradients,
loss terms and per-video outputs for given inputs) and `apply_grads` (nan_to_num, Adam); the
trainer runs exactly these with its own draws, and tests/test_train_parity.py runs them with the
draws recorded from the official code.

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

from typing import Any

import flax
import jax
import jax.numpy as jnp
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


@flax.struct.dataclass
class PhaseResult:
  """What a phase computed, before its optimiser step.

  grads: gradients of the phase's network (G for 'g', the D pair for 'd' and 'r1'), before the
  official nan_to_num. terms: the loss terms as scalars (names as in the official loss; 'total' is
  the back-propagated scalar, lazy-regularisation gain included). per_video: per-video outputs in
  global batch order, image-D quantities as [B, 2, ...] (frames t_lo, t_hi). g_stats: the
  generator's w_avg after the phase's generator call (None for R1).
  """
  phase: str = flax.struct.field(pytree_node=False)
  grads: Any = None
  terms: dict[str, jax.Array] = None
  per_video: dict[str, jax.Array] = None
  g_stats: Any = None


def _per_video(x):
  """[2B, ...] image-D rows in (b t) order -> [B, 2, ...]."""
  return x.reshape((-1, 2) + x.shape[1:])


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
    shapes = jax.eval_shape(self.init, jax.random.PRNGKey(0))
    self.state_shardings = sharding.state_shardings(shapes, mesh)
    # Shapes, dtypes and shardings of the train state: a restore target, an AOT-compile input.
    self.abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes,
        self.state_shardings)

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

  def init_from(self, g_variables, d_variables, seed: int | None = None) -> TrainState:
    """A train state starting from given networks (e.g. imported official weights), fresh Adam.

    g_variables: {'params', 'stats'} of the generator; d_variables: {'params'} of the
    discriminator pair (what `official.convert_*` return). G_ema starts as a copy of G.
    """
    seed = self.seed if seed is None else seed
    g_params = jax.tree.map(jnp.asarray, g_variables["params"])
    g_stats = jax.tree.map(jnp.asarray, g_variables["stats"])
    d_params = jax.tree.map(jnp.asarray, d_variables["params"])
    state = TrainState(
        step=jnp.zeros((), jnp.int32), g_params=g_params, g_stats=g_stats,
        g_ema={"params": g_params, "stats": g_stats}, d_params=d_params,
        g_opt_state=self.g_tx.init(g_params), d_opt_state=self.d_tx.init(d_params),
        rng=jax.random.split(jax.random.PRNGKey(seed), 3)[2])
    shape_dtype = lambda x: (x.shape, x.dtype)
    expected = jax.tree.map(shape_dtype, self.abstract_state)
    got = jax.tree.map(shape_dtype, state)
    if expected != got:
      flat = lambda t: dict(jax.tree_util.tree_flatten_with_path(
          t, is_leaf=lambda x: isinstance(x, tuple))[0])
      want, have = flat(expected), flat(got)
      diff = next((k for k in want if want[k] != have.get(k)), None) or next(iter(have.keys() - want.keys()))
      raise ValueError(
          f"the given networks do not match this config: {jax.tree_util.keystr(diff)} is "
          f"{have.get(diff, 'missing')}, the config needs {want.get(diff, 'nothing there')} (shape, dtype); "
          "build the config from the weights (official.configs_from_meta / infer_configs)")
    return jax.device_put(state, self.state_shardings)

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

  def _fake_draws(self, key, n: int) -> dict[str, Any]:
    """Latents, sorted Beta(2,1)/Beta(1,2) times (as the official frame-pair sampling) and
    augmentation for n fake videos."""
    k_z, k_m, k_a, k_b, k_aug = jax.random.split(key, 5)
    # Exact inverse-CDF draws: Beta(2,1) has CDF t^2, Beta(1,2) has CDF 1 - (1 - t)^2.
    t_a = jnp.sqrt(jax.random.uniform(k_a, (n,)))
    t_b = 1.0 - jnp.sqrt(jax.random.uniform(k_b, (n,)))
    times = jnp.stack([jnp.minimum(t_a, t_b), jnp.maximum(t_a, t_b)], axis=1)
    return dict(z_content=jax.random.normal(k_z, (n, self.gcfg.z_dim)),
                z_motion=jax.random.normal(k_m, (n, self.gcfg.motion_dim)),
                times=times, aug_fake=self._aug_params(k_aug, n))

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

  def render_pair7(self, g_params, g_stats, z_content, z_motion, times, labels=None):
    """Fake motion-D inputs [n, H, W, 7] at per-video times [n, 2], and the updated w_avg stats.

    As in training, the mapping's w_avg is updated by this call (official training mode).
    """
    frames, mutated = self.generator.apply(
        {"params": g_params, "stats": g_stats}, z_content, z_motion, times,
        labels=labels, update_w_avg=True, mutable=["stats"])
    return pack_pair(frames[:, 0], frames[:, 1], times[:, 1] - times[:, 0]), mutated["stats"]

  def d_input(self, x7, aug_params):
    """What the discriminators see: DiffAugment of x7 (both frames alike, Δt plane untouched)."""
    return augment.apply_pair7(x7, aug_params, self.policy, self.cutout)

  def _d_logits(self, d_params, x7, aug_params, labels):
    aug7 = self.d_input(x7, aug_params)
    motion, image = self.discriminator.apply({"params": d_params}, aug7, labels)
    return motion, image, aug7

  def _accumulate(self, fn, params, inputs):
    """value_and_grad of fn over the micro-batches; returns (grads, terms, per_video, g_stats).

    fn(params, mb) -> (loss, (terms, per_video, g_stats)): terms (scalar means) and g_stats must be
    linear in the batch and are averaged over micro-batches; per_video arrays have the videos of
    the micro-batch as leading dimension and are put back into global batch order.
    """
    grad_fn = jax.value_and_grad(fn, has_aux=True)
    k = self.num_micro
    if k == 1:
      (_, (terms, per_video, g_stats)), grads = grad_fn(params, inputs)
      return grads, terms, per_video, g_stats
    n = self.global_batch
    # Strided split: micro-batch m = rows m, m + k, m + 2k, ... (see the module docstring).
    micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape((n // k, k) + x.shape[1:]), 0, 1), inputs)
    micro = self._constrain(micro, leading=1)

    def body(carry, mb):
      mb = self._constrain(mb)
      (_, (terms, per_video, g_stats)), grads = grad_fn(params, mb)
      carry = jax.tree.map(jnp.add, carry, (grads, terms, g_stats))
      return carry, per_video

    first = jax.tree.map(lambda x: x[0], micro)
    shapes = jax.eval_shape(lambda p, mb: (lambda r: (r[1], r[0][1][0], r[0][1][2]))(grad_fn(p, mb)),
                            params, first)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    total, per_video = jax.lax.scan(body, zeros, micro)
    grads, terms, g_stats = jax.tree.map(lambda x: x / k, total)
    # per_video[m, j] is global row j * k + m.
    per_video = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape((n,) + x.shape[2:]), per_video)
    return grads, terms, per_video, g_stats

  # ---- replayable phases ----
  #
  # Each phase is split in three public parts: `<phase>_inputs` draws every random value of the
  # phase from (state.rng, state.step); `<phase>_grads` computes the gradients and loss terms for
  # given inputs (so any draw, e.g. one recorded from the official code, can be replayed);
  # `<phase>_phase` applies the optimiser step. Training calls `<phase>_phase` with inputs=None,
  # i.e. exactly these functions with its own draws.
  #
  # Inputs (leading dimension: the global batch of videos):
  #   z_content [B, z_dim], z_motion [B, motion_dim], times [B, 2] (t_lo <= t_hi) of the fakes;
  #   aug_fake / aug_real: DiffAugment parameters per pass (augment.sample_params' layout);
  #   labels [B, c_dim] (fake labels, one-hot) and real_labels [B, c_dim] for a conditional model.

  def g_inputs(self, state: TrainState, batch) -> dict[str, Any]:
    inputs = self._fake_draws(self._phase_key(state, PHASE_G), self.global_batch)
    labels = self._labels(batch)
    if labels is not None:
      # The official code draws fake labels from the training set's labels; the real batch's
      # labels are such a draw (and keep every micro-batch's fake/real label mix identical).
      inputs["labels"] = labels
    return inputs

  def d_inputs(self, state: TrainState, batch) -> dict[str, Any]:
    k_fake, k_real = jax.random.split(self._phase_key(state, PHASE_D))
    inputs = self._fake_draws(k_fake, self.global_batch)
    inputs["aug_real"] = self._aug_params(k_real, self.global_batch)
    labels = self._labels(batch)
    if labels is not None:
      inputs["labels"] = inputs["real_labels"] = labels
    return inputs

  def r1_inputs(self, state: TrainState, batch) -> dict[str, Any]:
    inputs = {"aug_real": self._aug_params(self._phase_key(state, PHASE_R1), self.global_batch)}
    labels = self._labels(batch)
    if labels is not None:
      inputs["real_labels"] = labels
    return inputs

  def _check_inputs(self, inputs, required):
    missing = [k for k in required if k not in inputs]
    if missing:
      raise ValueError(f"phase inputs lack {missing}; draw them with the phase's *_inputs method")
    return self._constrain(dict(inputs))

  def g_grads(self, state: TrainState, batch, inputs, details: bool = False) -> PhaseResult:
    """Gmain gradients of G (D frozen) for given inputs. `batch` is unused (kept for symmetry)."""
    del batch
    need = ["z_content", "z_motion", "times", "aug_fake"] + (["labels"] if self.c_dim else [])
    inputs = self._check_inputs(inputs, need)

    def loss_fn(g_params, mb):
      fake7, stats = self.render_pair7(g_params, state.g_stats, mb["z_content"], mb["z_motion"],
                                       mb["times"], mb.get("labels"))
      motion, image, aug7 = self._d_logits(state.d_params, fake7, mb["aug_fake"], mb.get("labels"))
      terms = losses.generator_loss_terms(motion, image)
      loss = sum(terms.values())
      per_video = {"fake/motion_logits": motion, "fake/image_logits": _per_video(image)}
      if details:
        per_video.update({"fake7": fake7, "fake/d_input": aug7})
      return loss, ({**terms, "total": loss}, per_video, stats)

    return PhaseResult("g", *self._accumulate(loss_fn, state.g_params, inputs))

  def d_grads(self, state: TrainState, batch, inputs, details: bool = False) -> PhaseResult:
    """Dmain gradients of both discriminators; fakes from state's G (no gradient into G)."""
    need = ["z_content", "z_motion", "times", "aug_fake", "aug_real"]
    need += ["labels", "real_labels"] if self.c_dim else []
    inputs = self._check_inputs(inputs, need)
    inputs["real7"] = self._constrain(self._real7(batch))

    def loss_fn(d_params, mb):
      fake7, stats = self.render_pair7(state.g_params, state.g_stats, mb["z_content"],
                                       mb["z_motion"], mb["times"], mb.get("labels"))
      fake7 = jax.lax.stop_gradient(fake7)
      # Separate calls for fakes and reals: minibatch-std groups never mix them (official).
      fake_m, fake_i, fake_aug = self._d_logits(d_params, fake7, mb["aug_fake"], mb.get("labels"))
      real_m, real_i, real_aug = self._d_logits(d_params, mb["real7"], mb["aug_real"],
                                                mb.get("real_labels"))
      terms = losses.discriminator_loss_terms(real_m, real_i, fake_m, fake_i)
      terms["total_fake_part"] = terms["D_motion_fake"] + terms["D_image_fake"]
      terms["total_real_part"] = terms["D_motion_real"] + terms["D_image_real"]
      loss = terms["total_fake_part"] + terms["total_real_part"]
      per_video = {"fake/motion_logits": fake_m, "fake/image_logits": _per_video(fake_i),
                   "real/motion_logits": real_m, "real/image_logits": _per_video(real_i)}
      if details:
        per_video.update({"fake7": fake7, "fake/d_input": fake_aug, "real/d_input": real_aug})
      return loss, ({**terms, "total": loss}, per_video, stats)

    return PhaseResult("d", *self._accumulate(loss_fn, state.d_params, inputs))

  def r1_grads(self, state: TrainState, batch, inputs, details: bool = False) -> PhaseResult:
    """Dreg gradients: r1_every x (γ/2)(mean_B ‖∇D_M‖² + mean_2B ‖∇D_I‖²) on the real batch."""
    inputs = self._check_inputs(inputs, ["aug_real"] + (["real_labels"] if self.c_dim else []))
    inputs["real7"] = self._constrain(self._real7(batch))

    def loss_fn(d_params, mb):
      lab = mb.get("real_labels")
      apply = lambda x, method: self.discriminator.apply({"params": d_params}, x, lab, method=method)
      r1 = losses.r1_penalties(
          lambda x7: apply(x7, "motion"), lambda frames: apply(frames, "image"), mb["real7"],
          lambda x7: self.d_input(x7, mb["aug_real"]))
      terms = {"r1_penalty_motion": jnp.mean(r1["penalty_motion"]),
               "r1_penalty_image": jnp.mean(r1["penalty_image"])}
      terms["r1_loss_motion"] = 0.5 * self.r1_gamma * terms["r1_penalty_motion"]
      terms["r1_loss_image"] = 0.5 * self.r1_gamma * terms["r1_penalty_image"]
      loss = losses.r1_loss(terms["r1_penalty_motion"], terms["r1_penalty_image"], self.r1_gamma)
      # Lazy regularisation: the R1 step runs every r1_every iterations with the loss scaled up.
      total = loss * self.r1_every
      per_video = {"real/motion_logits": r1["motion_logits"],
                   "real/image_logits": _per_video(r1["image_logits"]),
                   "r1_penalty_motion": r1["penalty_motion"],
                   "r1_penalty_image": _per_video(r1["penalty_image"])}
      if details:
        per_video.update({"real/d_input": r1["d_input"], "r1_grad_motion": r1["grad_motion"],
                          "r1_grad_image": _per_video(r1["grad_image"])})
      return total, ({**terms, "total": total}, per_video, None)

    return PhaseResult("r1", *self._accumulate(loss_fn, state.d_params, inputs))

  def apply_grads(self, state: TrainState, result: PhaseResult) -> TrainState:
    """The optimiser step of a phase: official nan_to_num of the gradients, then Adam."""
    grads = losses.sanitize_grads(result.grads)
    if result.phase == "g":
      updates, opt_state = self.g_tx.update(grads, state.g_opt_state, state.g_params)
      return state.replace(g_params=optax.apply_updates(state.g_params, updates),
                           g_opt_state=opt_state, g_stats=result.g_stats)
    updates, opt_state = self.d_tx.update(grads, state.d_opt_state, state.d_params)
    state = state.replace(d_params=optax.apply_updates(state.d_params, updates), d_opt_state=opt_state)
    if result.g_stats is not None:  # Dmain's generator call updated w_avg
      state = state.replace(g_stats=result.g_stats)
    return state

  def g_phase(self, state: TrainState, batch, inputs=None) -> tuple[TrainState, dict[str, jax.Array]]:
    """Gmain: one Adam step of G on L_G (D frozen)."""
    inputs = self.g_inputs(state, batch) if inputs is None else inputs
    result = self.g_grads(state, batch, inputs)
    return self.apply_grads(state, result), {
        "train/loss_g": result.terms["total"], "train/grad_norm_g": optax.tree.norm(result.grads)}

  def d_phase(self, state: TrainState, batch, inputs=None) -> tuple[TrainState, dict[str, jax.Array]]:
    """Dmain: one Adam step of both discriminators on L_D, fakes from the current (updated) G."""
    inputs = self.d_inputs(state, batch) if inputs is None else inputs
    result = self.d_grads(state, batch, inputs)
    pv = result.per_video
    logits = {f"train/d{d}_{p}_logit": jnp.mean(pv[f"{p}/{name}_logits"])
              for d, name in (("m", "motion"), ("i", "image")) for p in ("real", "fake")}
    return self.apply_grads(state, result), {
        "train/loss_d": result.terms["total"], "train/grad_norm_d": optax.tree.norm(result.grads),
        **logits}

  def r1_phase(self, state: TrainState, batch, inputs=None) -> tuple[TrainState, dict[str, jax.Array]]:
    """Dreg: one Adam step of D on r1_every x R1 (real batch, fresh augmentation)."""
    inputs = self.r1_inputs(state, batch) if inputs is None else inputs
    result = self.r1_grads(state, batch, inputs)
    loss_r1 = result.terms["r1_loss_motion"] + result.terms["r1_loss_image"]
    return self.apply_grads(state, result), {
        "train/loss_r1": loss_r1, "train/grad_norm_r1": optax.tree.norm(result.grads)}

  def ema_phase(self, state: TrainState) -> TrainState:
    """G_ema <- lerp(G, G_ema, β); w_avg copied; then the iteration counter advances."""
    beta = losses.ema_beta(state.step, self.global_batch, self.ema_kimg, self.ema_rampup)
    params = jax.tree.map(lambda e, p: p + (e - p) * beta.astype(p.dtype), state.g_ema["params"],
                          state.g_params)
    return state.replace(g_ema={"params": params, "stats": state.g_stats}, step=state.step + 1)

  def train_step(self, state: TrainState, batch, do_r1: bool, inputs=None):
    """One full iteration; `do_r1` must be `should_r1(step)` (static: two compiled variants).

    inputs: optional {'g': ..., 'd': ..., 'r1': ...} phase inputs to replay instead of drawing.
    """
    inputs = inputs or {}
    state, metrics = self.g_phase(state, batch, inputs.get("g"))
    state, d_metrics = self.d_phase(state, batch, inputs.get("d"))
    metrics.update(d_metrics)
    if do_r1:
      state, r1_metrics = self.r1_phase(state, batch, inputs.get("r1"))
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


@jax.jit
def state_is_finite(state) -> jax.Array:
  """One replicated bool: every float of the state (networks, EMA, Adam moments) is finite.

  The losses of step s are computed before its update, so a finite loss does not prove that the
  state after the update is finite (an overflowing Adam step); checkpoints check the state itself.
  """
  leaves = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
