"""The train state and the jittable DIGAN iteration (official training_loop.py), driven by a phase
table.

`DiganSteps.phases` is the iteration in the official order: Gmain (G step on L_G), Dmain (D step on
L_D with fakes from the updated G), then lazy regularisers that run every `every` iterations (R1 on
steps with step % r1_every == 0, a separate Adam step on the same D optimiser state, loss x
r1_every), and finally the EMA update of G. `train_step`, the per-phase jits and the benchmark all
read the table, so a new regulariser is one entry (its inputs/grads/metrics functions in
phases.py). `jit_train_step` compiles one variant per set of lazy phases due at a step (two for
DIGAN: with and without R1); `trace_counts` counts the traces, so tests can prove it.

Replay: a phase is `<phase>_inputs` (draw every random value), `<phase>_grads` (gradients, loss
terms and per-video outputs for given inputs) and `apply_grads` (nan_to_num, Adam); the trainer
runs exactly these with its own draws, and tests/test_train_parity.py with the official draws.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp

from digan_jax import losses, optim, phases, sharding
from digan_jax.errors import ConfigError
from digan_jax.models import factory
from digan_jax.phases import PhaseResult, StepConfig

__all__ = ["DiganSteps", "Phase", "PhaseResult", "StepConfig", "TrainState", "state_is_finite"]


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


@dataclasses.dataclass(frozen=True, eq=False)
class Phase:
  """One row of the phase table: `network` ('g' or 'd') takes an optimiser step on the gradients
  of `grads(state, batch, inputs)` every `every` iterations (every > 1: a lazy regulariser)."""

  name: str
  network: str
  every: int
  inputs: Callable[..., dict[str, Any]]
  grads: Callable[..., PhaseResult]
  metrics: Callable[[PhaseResult], dict[str, jax.Array]]


def _frozen_names(pattern: str, shapes) -> list[str]:
  """The parameters `train.freeze` keeps; a pattern that matches none is a config error."""
  if not pattern:
    return []
  names = optim.param_names("g", shapes.g_params) + optim.param_names("d", shapes.d_params)
  frozen = [n for n in names if re.search(pattern, n)]
  if not frozen:
    raise ConfigError(
      f"train.freeze={pattern!r} matches no parameter; names look like {names[0]!r} "
      f"or {names[-1]!r} (optim.param_names lists them)"
    )
  return frozen


class DiganSteps(phases.PhaseFunctions):
  """State creation, the phase table and the compiled entry points for one config on one mesh."""

  def __init__(
    self,
    config,
    mesh,
    generator=None,
    discriminator=None,
    compiler_options: dict[str, Any] | None = None,
  ):
    self.cfg = StepConfig.from_config(config, mesh.size)
    # Extra XLA options for every compiled function (tests use a low backend optimisation level
    # because their tiny networks are compile-bound).
    self.compiler_options = compiler_options
    self.config, self.mesh = config, mesh
    if generator is None or discriminator is None:
      generator, discriminator = factory.build(config.model)
    self.generator, self.discriminator = generator, discriminator
    self.gcfg = generator.config
    self.adam_hparams = optim.adam_hparams(config.train)
    self.optimizers = optim.make_optimizers(config.train)
    self.phases = (
      Phase("g", "g", 1, self.g_inputs, self.g_grads, phases.g_metrics),
      Phase("d", "d", 1, self.d_inputs, self.d_grads, phases.d_metrics),
      Phase("r1", "d", self.cfg.r1_every, self.r1_inputs, self.r1_grads, phases.r1_metrics),
    )
    self.trace_counts = collections.Counter()  # (function, variant) -> times traced
    # "skip": an iteration whose losses or new state are non-finite is not applied (train/skipped).
    self.skip_nonfinite = config.train.get("nonfinite_policy", "stop") == "skip"
    shapes = jax.eval_shape(self.init, jax.random.PRNGKey(0))
    self.frozen = _frozen_names(config.train.get("freeze", ""), shapes)
    self.state_shardings = sharding.state_shardings(shapes, mesh)
    # Shapes, dtypes and shardings of the train state: a restore target, an AOT-compile input.
    self.abstract_state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, self.state_shardings
    )

  @property
  def fsdp_split(self) -> bool:
    """Whether parameters may be split over an fsdp axis (and are gathered for use)."""
    return self.mesh.shape.get("fsdp", 1) > 1

  @property
  def global_batch(self) -> int:
    return self.cfg.global_batch

  @property
  def resolution(self) -> int:
    return self.gcfg.resolution

  @property
  def c_dim(self) -> int:
    return self.gcfg.c_dim

  # ---- state ----

  def _state(self, g_params, g_stats, d_params, train_key) -> TrainState:
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      g_params=g_params,
      g_stats=g_stats,
      g_ema={"params": g_params, "stats": g_stats},
      d_params=d_params,
      g_opt_state=self.optimizers["g"].init(g_params),
      d_opt_state=self.optimizers["d"].init(d_params),
      rng=train_key,
    )

  def init(self, rng) -> TrainState:
    g_key, d_key, train_key = jax.random.split(rng, 3)
    cfg = self.gcfg
    labels = jnp.zeros((1, cfg.c_dim)) if cfg.c_dim else None
    g_vars = self.generator.init(
      g_key, jnp.zeros((1, cfg.z_dim)), jnp.zeros((1, cfg.motion_dim)), jnp.zeros((1, 2)), labels
    )
    x7 = jnp.zeros((1, cfg.resolution, cfg.resolution, 7))
    d_params = self.discriminator.init(d_key, x7, labels)["params"]
    return self._state(g_vars["params"], g_vars["stats"], d_params, train_key)

  def create_train_state(self, seed: int | None = None) -> TrainState:
    """The initial state, created directly with its final sharding (no host copy)."""
    seed = self.cfg.seed if seed is None else seed
    init = jax.jit(
      self.init, out_shardings=self.state_shardings, compiler_options=self.compiler_options
    )
    return init(jax.random.PRNGKey(seed))

  def init_from(self, g_variables, d_variables, seed: int | None = None) -> TrainState:
    """A train state starting from given networks (e.g. imported official weights), fresh Adam.

    g_variables: {'params', 'stats'} of the generator; d_variables: {'params'} of the
    discriminator pair (what `official.convert_*` return). G_ema starts as a copy of G.
    """
    seed = self.cfg.seed if seed is None else seed
    state = self._state(
      *(
        jax.tree.map(jnp.asarray, t)
        for t in (g_variables["params"], g_variables["stats"], d_variables["params"])
      ),
      jax.random.split(jax.random.PRNGKey(seed), 3)[2],
    )
    shape_dtype = lambda x: (x.shape, x.dtype)
    expected = jax.tree.map(shape_dtype, self.abstract_state)
    got = jax.tree.map(shape_dtype, state)
    if expected != got:
      flat = lambda t: dict(
        jax.tree_util.tree_flatten_with_path(t, is_leaf=lambda x: isinstance(x, tuple))[0]
      )
      want, have = flat(expected), flat(got)
      diff = next((k for k in want if want[k] != have.get(k)), None) or next(
        iter(have.keys() - want.keys())
      )
      raise ValueError(
        f"the given networks do not match this config: {jax.tree_util.keystr(diff)} is "
        f"{have.get(diff, 'missing')}, the config needs {want.get(diff, 'nothing there')} (shape, dtype); "
        "build the config from the weights (official.configs_from_meta / infer_configs)"
      )
    return jax.device_put(state, self.state_shardings)

  # ---- the iteration ----

  def phase(self, name: str) -> Phase:
    for p in self.phases:
      if p.name == name:
        return p
    raise ValueError(f"unknown phase {name!r}; phases: {[p.name for p in self.phases]}")

  def apply_grads(self, state: TrainState, result: PhaseResult) -> TrainState:
    """The optimiser step of a phase on its network: official nan_to_num, then Adam."""
    net = self.phase(result.phase).network
    grads = result.grads
    if self.fsdp_split:  # reduce-scatter onto the parameters' split
      grads = jax.lax.with_sharding_constraint(
        grads, getattr(self.state_shardings, f"{net}_params")
      )
    params, opt_state = optim.step(
      self.optimizers[net],
      grads,
      getattr(state, f"{net}_opt_state"),
      getattr(state, f"{net}_params"),
    )
    state = state.replace(**{f"{net}_params": params, f"{net}_opt_state": opt_state})
    if result.g_stats is not None:  # the phase's generator call updated w_avg
      state = state.replace(g_stats=result.g_stats)
    return state

  def gathered(self, state: TrainState) -> TrainState:
    """The state whose networks the phases read, whole on every device (fsdp > 1).

    FSDP the ZeRO-3 way: each fsdp-split weight is all-gathered once per use and its gradient
    reduce-scattered back (`apply_grads`). Without these constraints XLA's propagation on the
    Auto-axis mesh kept weights split and all-gathered batch-sized activations instead (measured
    with digan_jax.aot at 256 chips: more temp memory than fsdp saved).
    """
    if not self.fsdp_split:
      return state
    whole = sharding.replicated(self.mesh)
    pin = lambda tree: jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, whole), tree)
    return state.replace(g_params=pin(state.g_params), d_params=pin(state.d_params))

  def run_phase(self, name: str, state: TrainState, batch, inputs=None):
    """One phase: its draws (unless given), gradients and optimiser step -> (state, metrics)."""
    phase = self.phase(name)
    inputs = phase.inputs(state, batch) if inputs is None else inputs
    result = phase.grads(self.gathered(state), batch, inputs)
    return self.apply_grads(state, result), phase.metrics(result)

  def ema_phase(self, state: TrainState) -> TrainState:
    """G_ema <- lerp(G, G_ema, β); w_avg copied; then the iteration counter advances."""
    cfg = self.cfg
    beta = losses.ema_beta(state.step, cfg.global_batch, cfg.ema_kimg, cfg.ema_rampup)
    params = jax.tree.map(
      lambda e, p: p + (e - p) * beta.astype(p.dtype), state.g_ema["params"], state.g_params
    )
    return state.replace(g_ema={"params": params, "stats": state.g_stats}, step=state.step + 1)

  def lazy_phases(self, step: int) -> tuple[str, ...]:
    """The lazy phases due at iteration `step` (the static variant argument of train_step)."""
    return tuple(p.name for p in self.phases if p.every > 1 and step % p.every == 0)

  def step_variants(self) -> tuple[tuple[str, ...], ...]:
    """Every value `lazy_phases` takes: the compiled variants of train_step."""
    period = math.lcm(*(p.every for p in self.phases))
    return tuple(sorted({self.lazy_phases(s) for s in range(period)}, key=len))

  def train_step(self, state: TrainState, batch, lazy: tuple[str, ...] = (), inputs=None):
    """One full iteration; `lazy` must be `lazy_phases(step)` (static: one compiled variant each).

    inputs: optional {phase name: inputs} to replay instead of drawing.
    """
    lazy = tuple(lazy)
    self.trace_counts["train_step", lazy] += 1  # Python side effect: runs only while tracing
    inputs, metrics = inputs or {}, {}
    before = state
    for p in self.phases:
      if p.every == 1 or p.name in lazy:
        state, phase_metrics = self.run_phase(p.name, state, batch, inputs.get(p.name))
        metrics.update(phase_metrics)
    state = self.ema_phase(state)
    if self.skip_nonfinite:
      return skip_if_nonfinite(before, state, metrics)
    return state, metrics

  # ---- compiled entry points ----

  def _jit(self, fn, **kwargs):
    batch_sh = sharding.batch_sharding(self.mesh)
    return jax.jit(
      fn,
      in_shardings=(self.state_shardings, batch_sh),
      out_shardings=(self.state_shardings, sharding.replicated(self.mesh)),
      donate_argnums=(0,),
      compiler_options=self.compiler_options,
      **kwargs,
    )

  def jit_train_step(self):
    """jit(train_step) with the state donated; call as f(state, batch, lazy) (positional)."""
    return self._jit(self.train_step, static_argnums=(2,))

  def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes, dtypes and sharding of the global batch the step takes (an AOT-compile input)."""
    n, r = self.global_batch, self.resolution
    batch = {"frames": ((n, 2, r, r, 3), jnp.float32), "delta_t": ((n,), jnp.float32)}
    if self.c_dim:
      batch["label"] = ((n,), jnp.int32)
    sh = sharding.batch_sharding(self.mesh)
    return {
      k: jax.ShapeDtypeStruct(shape, dtype, sharding=sh) for k, (shape, dtype) in batch.items()
    }

  def jit_phase(self, name: str):
    """One compiled phase of the table: (state, batch) -> (state, metrics)."""
    self.phase(name)  # fail early on an unknown name
    return self._jit(lambda state, batch: self.run_phase(name, state, batch))

  def jit_ema(self):
    return jax.jit(
      self.ema_phase,
      in_shardings=(self.state_shardings,),
      out_shardings=self.state_shardings,
      donate_argnums=(0,),
      compiler_options=self.compiler_options,
    )


@jax.jit
def state_is_finite(state) -> jax.Array:
  """One replicated bool: every float of the state (networks, EMA, Adam moments) is finite.

  The losses of step s are computed before its update, so a finite loss does not prove that the
  state after the update is finite (an overflowing Adam step); checkpoints check the state itself.
  """
  leaves = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def skip_if_nonfinite(before: TrainState, after: TrainState, metrics):
  """(`after`, metrics) when the iteration's losses and its new state are all finite; otherwise
  `before` with only its iteration counter advanced (per-step draws stay keyed by the step).
  metrics gains train/skipped (1.0 for a skipped iteration)."""
  losses = [v for k, v in metrics.items() if k.startswith("train/loss")]
  ok = state_is_finite(after)
  if losses:
    ok &= jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in losses]))
  kept = before.replace(step=after.step)
  state = jax.tree.map(lambda a, b: jnp.where(ok, a, b), after, kept)
  return state, dict(metrics, **{"train/skipped": jnp.logical_not(ok).astype(jnp.float32)})
