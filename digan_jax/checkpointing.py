"""Orbax checkpoints: layout, the model card stored beside the weights, EMA-generator restore.

A checkpoint directory holds numbered steps (Orbax `CheckpointManager`, atomic per step). Every
step has the items `g_ema` (the EMA generator's variables) and `model` (JSON: generator and
discriminator configs), so sampling and evaluation can rebuild the generator from the checkpoint
alone. Steps written by the official-weight importer also hold `g` and `d`; training steps hold
`state` (the whole train state).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

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


def manager(directory, max_to_keep: int | None = None, create: bool = True) -> ocp.CheckpointManager:
  directory = as_path(directory)
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create)
  return ocp.CheckpointManager(directory, options=options)


def save_networks(directory, step: int, *, g, g_ema, d, gcfg: GeneratorConfig,
                  dcfg: DiscriminatorConfig | None) -> epath.Path:
  """Write networks (no optimiser state) as step `step`, e.g. from the official importer."""
  mngr = manager(directory)
  if step in mngr.all_steps():
    raise FileExistsError(f"{directory} already holds step {step}; choose a new output directory")
  items = dict(g_ema=ocp.args.StandardSave(g_ema), g=ocp.args.StandardSave(g),
               model=ocp.args.JsonSave(model_card(gcfg, dcfg)))
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
