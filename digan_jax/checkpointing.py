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
import re
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from digan_jax import fileio, sharding
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


def restore_generator(directory, step: int | None = None, step_flag: str = "--step"):
  """(GeneratorConfig, EMA generator variables as NumPy, step) from a checkpoint directory.

  A step whose files do not read back is named, with the other steps (pass one with `step_flag`).
  """
  directory = as_path(directory)
  if not directory.exists():
    raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
  mngr = manager(directory, create=False)
  steps = mngr.all_steps()
  mngr.close()
  if not steps:
    raise FileNotFoundError(f"no checkpoint steps under {directory}")
  step = max(steps) if step is None else step
  if step not in steps:
    raise FileNotFoundError(f"step {step} not in {directory} (available: {sorted(steps)})")
  try:
    card = read_items(directory, step, ("model",))["model"]
    gcfg, _ = configs_from_card(card)
    g_ema = restore_numpy(directory, step, "g_ema")
  except Exception as e:  # noqa: BLE001 - any read failure of committed files is damage
    others = sorted(set(steps) - {step})
    raise UserError(
      f"checkpoint {step} in {directory} is damaged ({short_error(e)}); "
      + (f"pass {step_flag}=<one of {others}>" if others else "no other step to use")
    ) from e
  return gcfg, g_ema, step


def restore_discriminator(directory, step: int):
  """(DiscriminatorConfig, D variables {'params': ...} as NumPy) of a step: an imported
  checkpoint's `d` item, or the discriminator of a training checkpoint's state."""
  directory = as_path(directory)
  _, dcfg = configs_from_card(read_items(directory, step, ("model",))["model"])
  if dcfg is None:
    raise FileNotFoundError(f"checkpoint {step} in {directory} holds no discriminator")
  if (directory / str(step) / "d").exists():
    return dcfg, read_items(directory, step, ("d",))["d"]
  return dcfg, {"params": restore_numpy(directory, step, "state")["d_params"]}


def short_error(e: BaseException) -> str:
  """One line for an error: the storage status (`OUT_OF_RANGE: Error reading ...`) where one is
  in its cause chain (TensorStore errors wrap it in pages of specs), else the first line."""
  chain = [e]
  while chain[-1].__cause__ is not None and len(chain) < 10:
    chain.append(chain[-1].__cause__)
  texts = [f"{type(x).__name__}: {str(x).strip()}" for x in chain]
  status = [t for t in texts if re.search(r"\b[A-Z][A-Z_]{4,}: ", t)]
  text = (status or texts)[0]
  return text.splitlines()[0][:400]


def read_items(directory, step: int, items) -> dict[str, Any]:
  """Named items of a step read whole into host NumPy (JSON for `model`), with no collective
  (handlers, not a manager): an integrity read that one process may fail alone."""
  out = {}
  for item in items:
    path = as_path(directory) / str(step) / item
    if item == "model":
      out[item] = ocp.JsonCheckpointHandler().restore(path)
      continue
    handler = ocp.StandardCheckpointHandler()
    tree = handler.metadata(path)
    tree = getattr(tree, "tree", tree)
    target = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), tree)
    out[item] = handler.restore(path, args=ocp.args.StandardRestore(target))
    handler.close()
  return out


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


_TMP_MARK = ".orbax-checkpoint-tmp"


def _leaf_specs(tree) -> list[tuple[tuple[int, ...], str]]:
  """Sorted (shape, dtype) of every array leaf: what a restore must match, whatever the container
  types of the saved tree (Orbax metadata) and of the abstract state (dataclasses, namedtuples)."""
  return sorted((tuple(x.shape), str(np.dtype(x.dtype))) for x in jax.tree.leaves(tree))


def _remove_tree(path: epath.Path, settle_s: float = 2.0) -> bool:
  """Removes `path` and keeps removing it until it stays gone for `settle_s` (writer threads of a
  failed asynchronous save may still be adding files). True when it is gone."""
  deadline = time.monotonic() + 30.0
  gone_since = None
  while time.monotonic() < deadline:
    if path.exists():
      gone_since = None
      try:
        path.rmtree()
      except OSError:
        pass
    elif gone_since is None:
      gone_since = time.monotonic()
    elif time.monotonic() - gone_since >= settle_s:
      return True
    time.sleep(0.1)
  return not path.exists()


class TrainCheckpoints:
  """The training state's checkpoints (the last N) and the best EMA generator by FVD.

  Faults, and what this class does about them:
  - a committed step that does not read back (`restore_newest`): moved aside to
    `<step>.corrupt-<UTC time>`, never deleted, and the step before it is restored;
  - a save that fails (disk full, a storage error): logged with the step and the error; the
    partial files are removed; training goes on and the next save tries again. `finish()` raises
    when the last save failed, naming the newest intact step.
  Retention is ours, not Orbax's: an old step is deleted only after a newer one is known to be
  committed (Orbax 0.12 garbage-collects old steps even after a failed asynchronous write).
  """

  def __init__(self, workdir, config, gcfg, dcfg):
    workdir = as_path(workdir)
    self.keep = config.keep_checkpoints
    self.last = ocp.CheckpointManager(
      workdir / "checkpoints", options=ocp.CheckpointManagerOptions(create=True)
    )
    self.best = ocp.CheckpointManager(
      workdir / "best", options=ocp.CheckpointManagerOptions(create=True)
    )
    self.card = model_card(gcfg, dcfg)
    self.best_fvd = math.inf
    best_file = workdir / "best" / "best.json"
    if best_file.exists():
      self.best_fvd = fileio.read_json(best_file)["fvd"]
    self.workdir = workdir
    self.pending: int | None = None  # the step of the asynchronous save not yet confirmed
    self.failed: tuple[int, str] | None = None  # the newest save that failed, with its error
    self._remove_partials()

  @property
  def directory(self) -> epath.Path:
    return self.workdir / "checkpoints"

  def latest_step(self):
    return self.last.latest_step()

  # ---- saving ----

  def save(self, step: int, state) -> None:
    """Starts an asynchronous save of `state` as `step` (after confirming the previous one)."""
    self.settle()
    self._remove_partials()  # left by an earlier failed save
    try:
      self.last.save(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          g_ema=ocp.args.StandardSave(state.g_ema),
          model=ocp.args.JsonSave(self.card),
        ),
      )
    except Exception as e:  # noqa: BLE001 - any storage error; the run goes on
      self._save_failed(step, e)
      return
    self.pending = step

  def settle(self) -> None:
    """Waits for the pending save: a committed step prunes the old ones; a failed one is logged."""
    step, self.pending = self.pending, None
    try:
      self.last.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      self._save_failed(step, e)
      return
    if step is None:
      return
    self.last.reload()
    if step not in self.last.all_steps():  # Orbax logs some commit failures instead of raising
      self._save_failed(step, RuntimeError("the step was not committed (see the log above)"))
      return
    if self.failed is not None and (self.failed[0] or 0) < step:
      self.failed = None
    for old in sorted(self.last.all_steps())[: -self.keep] if self.keep else []:
      self.last.delete(old)

  def _save_failed(self, step: int | None, error: Exception) -> None:
    self.last.reload()
    intact = self.last.latest_step()
    logging.error(
      "checkpoint %s could not be written (%s); the newest intact checkpoint is %s. Training goes "
      "on and the next save tries again.",
      step,
      short_error(error),
      intact,
    )
    self.failed = (step, short_error(error))
    if step is not None and step != intact and jax.process_index() == 0:
      committed = self.directory / str(step)
      if committed.exists():  # renamed into place, then a later write of it failed
        committed.rename(self.directory / f"{step}.corrupt-{_utc_now()}")
    self._remove_partials()
    self.last.reload()

  def _remove_partials(self) -> None:
    """Removes the temporary directories of failed or killed saves (process 0)."""
    if jax.process_index() != 0:
      return
    for manager_dir in (self.directory, self.workdir / "best"):
      if manager_dir.exists():
        for path in manager_dir.iterdir():
          if _TMP_MARK in path.name and not _remove_tree(path):
            logging.warning("could not remove the partial checkpoint %s", path)

  def finish(self) -> None:
    """After the last step: confirms the last save; raises UserError if it failed."""
    self.settle()
    if self.failed is not None:
      step, error = self.failed
      intact = self.last.latest_step()
      raise UserError(
        f"the checkpoint of step {step} could not be written ({error}); the newest intact "
        f"checkpoint in {self.directory} is {intact}. Free space (or fix the storage error) and "
        f"run the same command again: it resumes from step {intact}."
      )

  def save_if_best(self, step: int, state, fvd: float):
    if not fvd < self.best_fvd:
      return
    self.best.wait_until_finished()
    try:
      self.best.save(
        step,
        args=ocp.args.Composite(
          g_ema=ocp.args.StandardSave(state.g_ema), model=ocp.args.JsonSave(self.card)
        ),
        force=True,
      )
      self.best.wait_until_finished()
      self.best.reload()
      if step not in self.best.all_steps():
        raise RuntimeError("the step was not committed (see the log above)")
    except Exception as e:  # noqa: BLE001 - the previous best stays; training goes on
      logging.error("best checkpoint %d (FVD %.3f) could not be written: %s", step, fvd, e)
      self._remove_partials()
      self.best.reload()
      return
    self.best_fvd = fvd
    if jax.process_index() == 0:
      fileio.write_json(self.workdir / "best" / "best.json", {"step": step, "fvd": fvd})
    for old in self.best.all_steps():
      if old != step:
        self.best.delete(old)

  # ---- restoring ----

  def restore_newest(self, abstract_state):
    """(train state, step) of the newest checkpoint that reads back, or (None, None) without one.

    A damaged step is logged, moved aside (`<step>.corrupt-<time>`) and the one before it is tried.
    With several processes the decision is collective: every process reads the step (no
    collective inside, so a process that fails alone cannot hang the others), then all agree.
    Raises UserError when a checkpoint does not match the config, or when none reads back.
    """
    tried = []
    while True:
      self.last.reload()
      newest = self.last.latest_step()
      step = sharding.from_process_0(-1 if newest is None else newest)
      if step < 0:
        if tried:
          raise UserError(
            f"no checkpoint in {self.directory} reads back ({'; '.join(tried)}); each was moved "
            "aside as <step>.corrupt-<time>. Start again with a new --workdir."
          )
        return None, None
      error = self._damage(step, abstract_state)
      if error is None:
        try:
          out = self.last.restore(
            step,
            args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract_state),
              g_ema=ocp.args.StandardRestore(abstract_state.g_ema),
            ),
          )
          return out["state"], step
        except Exception as e:  # noqa: BLE001
          if jax.process_count() > 1:
            raise  # every process has just read it whole: not a damaged file
          error = short_error(e)
      aside = self._set_aside(step)
      logging.error(
        "checkpoint %d in %s is damaged (%s); moved aside to %s, trying the one before it",
        step,
        self.directory,
        error,
        aside.name,
      )
      tried.append(f"step {step}: {error}")

  def _damage(self, step: int, abstract_state) -> str | None:
    """None when `step` reads back (checked on every process when there are several); its error
    when not. Raises UserError when its arrays do not match `abstract_state` (another config)."""
    error, mismatch = None, None
    try:
      meta = ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / "state")
      saved, wanted = _leaf_specs(getattr(meta, "tree", meta)), _leaf_specs(abstract_state)
      if saved != wanted:
        diff = next(((a, b) for a, b in zip(saved, wanted) if a != b), None)
        mismatch = f"{len(saved)} arrays saved, {len(wanted)} in this config" + (
          f"; saved {diff[0]} where this config has {diff[1]}" if diff else ""
        )
      elif jax.process_count() > 1:
        read_items(self.directory, step, ("state", "g_ema", "model"))
      else:
        read_items(self.directory, step, ("model",))
    except Exception as e:  # noqa: BLE001 - whatever the storage raises, the step is unreadable
      error = short_error(e)
    verdict = sharding.agree_max(2 if mismatch else 1 if error else 0)
    if verdict == 2:
      what = mismatch or "on another process"
      raise UserError(
        f"checkpoint {step} in {self.directory} does not match this config ({what}); "
        "use a new --workdir or the original config"
      )
    if verdict == 1:
      return error or "unreadable on another process"
    return None

  def _set_aside(self, step: int) -> epath.Path:
    """Renames a damaged step out of Orbax's sight (process 0), never deleting it."""
    aside = self.directory / f"{step}.corrupt-{_utc_now(sharding.from_process_0(int(time.time())))}"
    if jax.process_index() == 0:
      (self.directory / str(step)).rename(aside)
    sharding.barrier(f"digan_set_aside_{step}")
    self.last.reload()
    return aside

  def close(self):
    for mngr in (self.last, self.best):
      try:
        mngr.wait_until_finished()
      except Exception as e:  # noqa: BLE001 - already reported by settle() or save_if_best()
        logging.error("a checkpoint write failed while closing: %s", short_error(e))
      mngr.close()


def _utc_now(seconds: float | None = None) -> str:
  return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(seconds))
