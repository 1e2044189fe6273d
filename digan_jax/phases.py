"""DIGAN's training phases as pure functions of (state, batch, inputs): Gmain, Dmain and the lazy
R1 regulariser (official src/training/loss.py, OurStyleGAN2Loss), and the frozen step config.

Each phase is split in two public parts: `<phase>_inputs` draws every random value of the phase
from (state.rng, state.step); `<phase>_grads` computes the gradients, loss terms and per-video
outputs for given inputs, so any draw (e.g. one recorded from the official code) can be replayed.
The optimiser step and the order of the phases live in steps.py (its phase table).

Randomness: every phase draws its latents, fake times and augmentation from
fold_in(fold_in(state.rng, step), phase index), for the whole global batch, sharded like the batch
(threefry is partitionable, so the values do not depend on the device count).

Gradient accumulation (`config.train.num_micro_batches` = k): micro-batch m holds the global rows
i with i % k == m. With strided minibatch-std groups (sample i in group i % (N/G)) every group of a
micro-batch is then exactly a group of the full batch, so k micro-batches give the same losses and
the same update as one full batch (up to float reassociation) as long as N/k is a multiple of the
minibatch-std group size. Latents and augmentation are drawn for the full batch and sliced the same
way, so the randomness does not depend on k either.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from digan_jax import augment, config_checks, losses, sharding
from digan_jax.models.discriminator import pack_pair

PHASE_G, PHASE_D, PHASE_R1 = 0, 1, 2  # fold_in indices of the phases' random draws


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """The training settings the step reads, validated once (config_checks.validate)."""

  global_batch: int
  num_micro: int
  policy: str  # DiffAugment policy
  translation: float
  cutout: float
  r1_gamma: float
  r1_every: int
  ema_kimg: float
  ema_rampup: float | None
  seed: int

  @classmethod
  def from_config(cls, config, num_devices: int) -> "StepConfig":
    config_checks.validate(config, num_devices)
    tc = config.train
    return cls(
      global_batch=int(tc.global_batch_size),
      num_micro=int(tc.num_micro_batches),
      policy=str(tc.augment),
      translation=float(tc.augment_translation),
      cutout=float(tc.augment_cutout),
      r1_gamma=float(tc.r1_gamma),
      r1_every=int(tc.r1_every),
      ema_kimg=float(tc.ema_kimg),
      ema_rampup=tc.ema_rampup,
      seed=int(tc.seed),
    )


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


class PhaseFunctions:
  """The phases of one model and step config on one mesh; every method is pure and jittable.

  Needs `cfg` (StepConfig), `mesh`, `generator`, `discriminator` and `gcfg` (set by DiganSteps).
  """

  def _constrain(self, tree, leading: int = 0):
    """Pin the batch dimension (after `leading` unsharded dims) to the batch sharding."""

    def one(x):
      spec = [None] * leading + [sharding.BATCH_AXES] + [None] * (x.ndim - leading - 1)
      return jax.lax.with_sharding_constraint(
        x, jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(*spec))
      )

    return jax.tree.map(one, tree)

  def _phase_key(self, state, phase: int):
    return jax.random.fold_in(jax.random.fold_in(state.rng, state.step), phase)

  def _aug_params(self, key, n: int):
    cfg = self.cfg
    return augment.sample_params(
      key, n, self.gcfg.resolution, cfg.policy, cfg.translation, cfg.cutout
    )

  def _fake_draws(self, key, n: int) -> dict[str, Any]:
    """Latents, sorted Beta(2,1)/Beta(1,2) times (as the official frame-pair sampling) and
    augmentation for n fake videos."""
    k_z, k_m, k_a, k_b, k_aug = jax.random.split(key, 5)
    # Exact inverse-CDF draws: Beta(2,1) has CDF t^2, Beta(1,2) has CDF 1 - (1 - t)^2.
    t_a = jnp.sqrt(jax.random.uniform(k_a, (n,)))
    t_b = 1.0 - jnp.sqrt(jax.random.uniform(k_b, (n,)))
    times = jnp.stack([jnp.minimum(t_a, t_b), jnp.maximum(t_a, t_b)], axis=1)
    return dict(
      z_content=jax.random.normal(k_z, (n, self.gcfg.z_dim)),
      z_motion=jax.random.normal(k_m, (n, self.gcfg.motion_dim)),
      times=times,
      aug_fake=self._aug_params(k_aug, n),
    )

  def _labels(self, batch):
    """One-hot class labels [B, c_dim] for a conditional model (None otherwise)."""
    if not self.gcfg.c_dim:
      return None
    if "label" not in batch:
      raise ValueError(
        f"the model is class-conditional (c_dim={self.gcfg.c_dim}) but the batch has no "
        "'label'; use a labelled dataset or set config.model.generator.c_dim=0"
      )
    return jax.nn.one_hot(batch["label"], self.gcfg.c_dim, dtype=jnp.float32)

  def _real7(self, batch):
    frames = batch["frames"]
    if (
      frames.ndim != 5
      or frames.shape[1] != 2
      or frames.shape[2:] != (self.gcfg.resolution, self.gcfg.resolution, 3)
    ):
      raise ValueError(
        f"real batch 'frames' must be [B, 2, {self.gcfg.resolution}, {self.gcfg.resolution}, 3], "
        f"got {frames.shape}"
      )
    frames = frames.astype(jnp.float32)
    return pack_pair(frames[:, 0], frames[:, 1], batch["delta_t"].astype(jnp.float32))

  def render_pair7(self, g_params, g_stats, z_content, z_motion, times, labels=None):
    """Fake motion-D inputs [n, H, W, 7] at per-video times [n, 2], and the updated w_avg stats.

    As in training, the mapping's w_avg is updated by this call (official training mode).
    """
    frames, mutated = self.generator.apply(
      {"params": g_params, "stats": g_stats},
      z_content,
      z_motion,
      times,
      labels=labels,
      update_w_avg=True,
      mutable=["stats"],
    )
    return pack_pair(frames[:, 0], frames[:, 1], times[:, 1] - times[:, 0]), mutated["stats"]

  def d_input(self, x7, aug_params):
    """What the discriminators see: DiffAugment of x7 (both frames alike, Δt plane untouched)."""
    return augment.apply_pair7(x7, aug_params, self.cfg.policy, self.cfg.cutout)

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
    k = self.cfg.num_micro
    if k == 1:
      (_, (terms, per_video, g_stats)), grads = grad_fn(params, inputs)
      return grads, terms, per_video, g_stats
    n = self.cfg.global_batch
    # Strided split: micro-batch m = rows m, m + k, m + 2k, ... (see the module docstring).
    micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape((n // k, k) + x.shape[1:]), 0, 1), inputs)
    micro = self._constrain(micro, leading=1)

    def body(carry, mb):
      mb = self._constrain(mb)
      (_, (terms, per_video, g_stats)), grads = grad_fn(params, mb)
      carry = jax.tree.map(jnp.add, carry, (grads, terms, g_stats))
      return carry, per_video

    first = jax.tree.map(lambda x: x[0], micro)
    shapes = jax.eval_shape(
      lambda p, mb: (lambda r: (r[1], r[0][1][0], r[0][1][2]))(grad_fn(p, mb)), params, first
    )
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    total, per_video = jax.lax.scan(body, zeros, micro)
    grads, terms, g_stats = jax.tree.map(lambda x: x / k, total)
    # per_video[m, j] is global row j * k + m.
    per_video = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape((n,) + x.shape[2:]), per_video)
    return grads, terms, per_video, g_stats

  # ---- replayable phases ----
  #
  # Inputs (leading dimension: the global batch of videos):
  #   z_content [B, z_dim], z_motion [B, motion_dim], times [B, 2] (t_lo <= t_hi) of the fakes;
  #   aug_fake / aug_real: DiffAugment parameters per pass (augment.sample_params' layout);
  #   labels [B, c_dim] (fake labels, one-hot) and real_labels [B, c_dim] for a conditional model.

  def g_inputs(self, state, batch) -> dict[str, Any]:
    inputs = self._fake_draws(self._phase_key(state, PHASE_G), self.cfg.global_batch)
    labels = self._labels(batch)
    if labels is not None:
      # The official code draws fake labels from the training set's labels; the real batch's
      # labels are such a draw (and keep every micro-batch's fake/real label mix identical).
      inputs["labels"] = labels
    return inputs

  def d_inputs(self, state, batch) -> dict[str, Any]:
    k_fake, k_real = jax.random.split(self._phase_key(state, PHASE_D))
    inputs = self._fake_draws(k_fake, self.cfg.global_batch)
    inputs["aug_real"] = self._aug_params(k_real, self.cfg.global_batch)
    labels = self._labels(batch)
    if labels is not None:
      inputs["labels"] = inputs["real_labels"] = labels
    return inputs

  def r1_inputs(self, state, batch) -> dict[str, Any]:
    key = self._phase_key(state, PHASE_R1)
    inputs = {"aug_real": self._aug_params(key, self.cfg.global_batch)}
    labels = self._labels(batch)
    if labels is not None:
      inputs["real_labels"] = labels
    return inputs

  def _check_inputs(self, inputs, required):
    missing = [k for k in required if k not in inputs]
    if missing:
      raise ValueError(f"phase inputs lack {missing}; draw them with the phase's *_inputs method")
    return self._constrain(dict(inputs))

  def g_grads(self, state, batch, inputs, details: bool = False) -> PhaseResult:
    """Gmain gradients of G (D frozen) for given inputs. `batch` is unused (kept for symmetry)."""
    del batch
    need = ["z_content", "z_motion", "times", "aug_fake"] + (["labels"] if self.gcfg.c_dim else [])
    inputs = self._check_inputs(inputs, need)

    def loss_fn(g_params, mb):
      fake7, stats = self.render_pair7(
        g_params, state.g_stats, mb["z_content"], mb["z_motion"], mb["times"], mb.get("labels")
      )
      motion, image, aug7 = self._d_logits(state.d_params, fake7, mb["aug_fake"], mb.get("labels"))
      terms = losses.generator_loss_terms(motion, image)
      loss = sum(terms.values())
      per_video = {"fake/motion_logits": motion, "fake/image_logits": _per_video(image)}
      if details:
        per_video.update({"fake7": fake7, "fake/d_input": aug7})
      return loss, ({**terms, "total": loss}, per_video, stats)

    return PhaseResult("g", *self._accumulate(loss_fn, state.g_params, inputs))

  def d_grads(self, state, batch, inputs, details: bool = False) -> PhaseResult:
    """Dmain gradients of both discriminators; fakes from state's G (no gradient into G)."""
    need = ["z_content", "z_motion", "times", "aug_fake", "aug_real"]
    need += ["labels", "real_labels"] if self.gcfg.c_dim else []
    inputs = self._check_inputs(inputs, need)
    inputs["real7"] = self._constrain(self._real7(batch))

    def loss_fn(d_params, mb):
      fake7, stats = self.render_pair7(
        state.g_params,
        state.g_stats,
        mb["z_content"],
        mb["z_motion"],
        mb["times"],
        mb.get("labels"),
      )
      fake7 = jax.lax.stop_gradient(fake7)
      # Separate calls for fakes and reals: minibatch-std groups never mix them (official).
      fake_m, fake_i, fake_aug = self._d_logits(d_params, fake7, mb["aug_fake"], mb.get("labels"))
      real_m, real_i, real_aug = self._d_logits(
        d_params, mb["real7"], mb["aug_real"], mb.get("real_labels")
      )
      terms = losses.discriminator_loss_terms(real_m, real_i, fake_m, fake_i)
      terms["total_fake_part"] = terms["D_motion_fake"] + terms["D_image_fake"]
      terms["total_real_part"] = terms["D_motion_real"] + terms["D_image_real"]
      loss = terms["total_fake_part"] + terms["total_real_part"]
      per_video = {
        "fake/motion_logits": fake_m,
        "fake/image_logits": _per_video(fake_i),
        "real/motion_logits": real_m,
        "real/image_logits": _per_video(real_i),
      }
      if details:
        per_video.update({"fake7": fake7, "fake/d_input": fake_aug, "real/d_input": real_aug})
      return loss, ({**terms, "total": loss}, per_video, stats)

    return PhaseResult("d", *self._accumulate(loss_fn, state.d_params, inputs))

  def r1_grads(self, state, batch, inputs, details: bool = False) -> PhaseResult:
    """Dreg gradients: r1_every x (γ/2)(mean_B ‖∇D_M‖² + mean_2B ‖∇D_I‖²) on the real batch."""
    inputs = self._check_inputs(inputs, ["aug_real"] + (["real_labels"] if self.gcfg.c_dim else []))
    inputs["real7"] = self._constrain(self._real7(batch))

    def loss_fn(d_params, mb):
      lab = mb.get("real_labels")
      apply = lambda x, method: self.discriminator.apply(
        {"params": d_params}, x, lab, method=method
      )
      r1 = losses.r1_penalties(
        lambda x7: apply(x7, "motion"),
        lambda frames: apply(frames, "image"),
        mb["real7"],
        lambda x7: self.d_input(x7, mb["aug_real"]),
      )
      terms = {
        "r1_penalty_motion": jnp.mean(r1["penalty_motion"]),
        "r1_penalty_image": jnp.mean(r1["penalty_image"]),
      }
      terms["r1_loss_motion"] = 0.5 * self.cfg.r1_gamma * terms["r1_penalty_motion"]
      terms["r1_loss_image"] = 0.5 * self.cfg.r1_gamma * terms["r1_penalty_image"]
      loss = losses.r1_loss(
        terms["r1_penalty_motion"], terms["r1_penalty_image"], self.cfg.r1_gamma
      )
      # Lazy regularisation: the R1 step runs every r1_every iterations with the loss scaled up.
      total = loss * self.cfg.r1_every
      per_video = {
        "real/motion_logits": r1["motion_logits"],
        "real/image_logits": _per_video(r1["image_logits"]),
        "r1_penalty_motion": r1["penalty_motion"],
        "r1_penalty_image": _per_video(r1["penalty_image"]),
      }
      if details:
        per_video.update(
          {
            "real/d_input": r1["d_input"],
            "r1_grad_motion": r1["grad_motion"],
            "r1_grad_image": _per_video(r1["grad_image"]),
          }
        )
      return total, ({**terms, "total": total}, per_video, None)

    return PhaseResult("r1", *self._accumulate(loss_fn, state.d_params, inputs))


# What each phase reports (fetched every log step): its loss and gradient norm, and for Dmain the
# mean logits of both discriminators on reals and fakes.


def g_metrics(result: PhaseResult) -> dict[str, jax.Array]:
  return {"train/loss_g": result.terms["total"], "train/grad_norm_g": optax.tree.norm(result.grads)}


def d_metrics(result: PhaseResult) -> dict[str, jax.Array]:
  pv = result.per_video
  logits = {
    f"train/d{d}_{p}_logit": jnp.mean(pv[f"{p}/{name}_logits"])
    for d, name in (("m", "motion"), ("i", "image"))
    for p in ("real", "fake")
  }
  return {
    "train/loss_d": result.terms["total"],
    "train/grad_norm_d": optax.tree.norm(result.grads),
    **logits,
  }


def r1_metrics(result: PhaseResult) -> dict[str, jax.Array]:
  loss_r1 = result.terms["r1_loss_motion"] + result.terms["r1_loss_image"]
  return {"train/loss_r1": loss_r1, "train/grad_norm_r1": optax.tree.norm(result.grads)}
