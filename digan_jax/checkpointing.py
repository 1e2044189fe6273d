"""Orbax checkpoints: layout, the model card stored beside the weights, EMA-generator restore.

A checkpoint directory holds numbered steps (Orbax `CheckpointManager`, atomic per step). Every
step has the items `g_ema` (the EMA generator's variables) and `model` (JSON: generator and
discriminator configs), so sampling and evaluation can rebuild the generator from the checkpoint
alone. Steps written by the official-weight importer also hold `g` and `d`; training steps hold
`state` (the whole train state).

A training workdir holds checkpoints/<step>/ (the last config.keep_checkpoints steps) and
best/<step>/ (the EMA generator of the step with the lowest FVD, with best/best.json).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from digan_jax import fileio
from digan_jax.errors import UserError
from digan_jax.fileio import as_path
from digan_jax.models.discriminator import DiscriminatorConfig
from digan_jax.models.generator import GeneratorConfig, generator_config_from


def model_card(gcfg: GeneratorConfig, dcfg: DiscriminatorConfig | None) -> dict[str, Any]:
  card = {"generator": dataclasses.asdict(gcfg)}
  card["generator"]["extra_convs"] = [list(p) for p in gcfg.extra_convs]
  if dcfg is not None:
    card["discriminator"] = dataclasses.asdict(dcfg)
  return card


def configs_from_card(card: dict[str, Any]) -> tuple[GeneratorConfig, DiscriminatorConfig | None]:
  gcfg = generator_config_from(card["generator"])
  dcfg = DiscriminatorConfig(**card["discriminator"]) if "discriminator" in card else None
  return gcfg, dcfg


def manager(
  directory, max_to_keep: int | None = None, create: bool = True
) -> ocp.CheckpointManager:
  directory = as_path(directory)
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create)
  return ocp.CheckpointManager(directory, options=options)


def save_networks(
  directory, step: int, *, g, g_ema, d, gcfg: GeneratorConfig, dcfg: DiscriminatorConfig | None
) -> epath.Path:
  """Write networks (no optimiser state) as step `step`, e.g. from the official importer."""
  mngr = manager(directory)
  if step in mngr.all_steps():
    raise FileExistsError(f"{directory} already holds step {step}; choose a new output directory")
  items = dict(
    g_ema=ocp.args.StandardSave(g_ema),
    g=ocp.args.StandardSave(g),
    model=ocp.args.JsonSave(model_card(gcfg, dcfg)),
  )
  if d is not None:
    items["d"] = ocp.args.StandardSave(d)
  mngr.save(step, args=ocp.args.Composite(**items))
  mngr.wait_until_finished()
  mngr.close()
  return as_path(directory) / str(step)


def restore_generator(directory, step: int | None = None):
  """(GeneratorConfig, EMA generator variables as NumPy, step) from a checkpoint directory."""
  directory = as_path(directory)
  if not directory.exists():
    raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
  mngr = manager(directory, create=False)
  steps = mngr.all_steps()
  if not steps:
    raise FileNotFoundError(f"no checkpoint steps under {directory}")
  step = max(steps) if step is None else step
  if step not in steps:
    raise FileNotFoundError(f"step {step} not in {directory} (available: {sorted(steps)})")
  card = mngr.restore(step, args=ocp.args.Composite(model=ocp.args.JsonRestore()))["model"]
  gcfg, _ = configs_from_card(card)
  mngr.close()
  return gcfg, restore_numpy(directory, step, "g_ema"), step


def restore_numpy(directory, step: int, item: str):
  """One array item of a step as a tree of host NumPy arrays, whatever topology saved it.

  A plain restore re-creates the saved shardings and fails on another topology (a checkpoint of a
  pod slice or of 2 processes, read on one machine); a NumPy target reads every array whole.
  """
  handlers = {name: ocp.StandardCheckpointHandler() for name in ("state", "g_ema", "g", "d", item)}
  handlers["model"] = ocp.JsonCheckpointHandler()
  mngr = ocp.CheckpointManager(as_path(directory), item_handlers=handlers)
  try:
    metadata = mngr.item_metadata(step)[item]
    tree = getattr(metadata, "tree", metadata)
    target = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), tree)
    out = mngr.restore(step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(target)}))
  finally:
    mngr.close()
  return jax.tree.map(np.asarray, out[item])


def check_compatible(workdir, config):
  """A workdir trained with other networks must not be resumed with this config."""
  saved = as_path(workdir) / "config.json"
  if not saved.exists():
    return
  old = fileio.read_json(saved)
  new = json.loads(config.to_json_best_effort())
  if old.get("model") != new.get("model"):
    diff = sorted(
      k
      for k in set(old.get("model", {})) | set(new["model"])
      if old.get("model", {}).get(k) != new["model"].get(k)
    )
    raise UserError(
      f"--workdir={workdir} holds a run of a different model (config.model.{diff} "
      "differ); use a new --workdir or the original config"
    )


class TrainCheckpoints:
  """Orbax managers for the training state (last N) and the best EMA generator by FVD."""

  def __init__(self, workdir, config, gcfg, dcfg):
    workdir = as_path(workdir)
    options = ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True)
    self.last = ocp.CheckpointManager(workdir / "checkpoints", options=options)
    self.best = ocp.CheckpointManager(
      workdir / "best", options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
    )
    self.card = model_card(gcfg, dcfg)
    self.best_fvd = math.inf
    best_file = workdir / "best" / "best.json"
    if best_file.exists():
      self.best_fvd = fileio.read_json(best_file)["fvd"]
    self.workdir = workdir

  def latest_step(self):
    return self.last.latest_step()

  def save(self, step: int, state):
    self.last.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        g_ema=ocp.args.StandardSave(state.g_ema),
        model=ocp.args.JsonSave(self.card),
      ),
    )

  def save_if_best(self, step: int, state, fvd: float):
    if not fvd < self.best_fvd:
      return
    self.best_fvd = fvd
    self.best.wait_until_finished()
    self.best.save(
      step,
      args=ocp.args.Composite(
        g_ema=ocp.args.StandardSave(state.g_ema), model=ocp.args.JsonSave(self.card)
      ),
      force=True,
    )
    self.best.wait_until_finished()
    if jax.process_index() == 0:
      fileio.write_json(self.workdir / "best" / "best.json", {"step": step, "fvd": fvd})

  def restore(self, step: int, abstract_state):
    """The train state of `step`, placed as `abstract_state` (ShapeDtypeStructs with shardings)."""
    try:
      out = self.last.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
      )
    except (ValueError, KeyError) as e:
      raise UserError(
        f"checkpoint {step} in {self.workdir / 'checkpoints'} does not match this "
        f"config ({str(e).splitlines()[0][:200]}); use a new --workdir"
      ) from e
    return out["state"]

  def close(self):
    self.last.wait_until_finished()
    self.best.wait_until_finished()
    self.last.close()
    self.best.close()
