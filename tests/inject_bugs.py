"""Proves the suite by breaking the code: each mutation is one bug the named tests must catch.

  .venv/bin/python tests/inject_bugs.py                 # all mutations (about an hour on 2 cores)
  .venv/bin/python tests/inject_bugs.py --only=ema,crop # some of them
  .venv/bin/python tests/inject_bugs.py --list

Every mutation is applied to a scratch copy of the working tree (never to the repository), then its
tests run there with this Python. A mutation is *caught* when at least one of its tests fails; the
report lists the failing tests and their assertion lines (measured value vs threshold) as a
Markdown table, and as JSON with --json. Not collected by pytest (no test_ prefix): too slow for CI.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

from absl import flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from digan_jax import cli_flags  # noqa: E402  (run as a script from tests/)

REPO = pathlib.Path(__file__).resolve().parents[1]
IGNORED = {".git", ".venv", "workdirs", "__pycache__", ".pytest_cache"}


@dataclasses.dataclass(frozen=True)
class Mutation:
  name: str
  bug: str
  path: str
  old: str
  new: str
  tests: tuple[str, ...]


MUTATIONS = (
  Mutation(
    "host_backend",
    "CPU fast path chosen by the host's backend, not the compile target (baked into TPU programs)",
    "digan_jax/models/layers.py",
    'elif self.down == 2 and target.platform() == "cpu":',
    'elif self.down == 2 and jax.default_backend() == "cpu":',
    ("tests/test_aot.py::test_fast_paths_follow_the_compile_target_not_the_host",),
  ),
  Mutation(
    "fsdp_gather",
    "fsdp weights left split in the phases (XLA gathers activations instead)",
    "digan_jax/steps.py",
    "    if not self.fsdp_split:\n      return state\n    whole",
    "    return state\n    whole",
    ("tests/test_aot.py::test_tiny_model_with_fsdp_fits_on_256_chips",),
  ),
  Mutation(
    "r1_gain",
    "R1 loss without the x r1_every lazy-regularisation gain",
    "digan_jax/phases.py",
    "total = loss * self.cfg.r1_every",
    "total = loss",
    ("tests/test_steps.py::test_r1_loss_carries_the_lazy_regularisation_gain",),
  ),
  Mutation(
    "ema",
    "EMA blend skipped (G_ema := G)",
    "digan_jax/steps.py",
    "p + (e - p) * beta.astype(p.dtype)",
    "p + (e - p) * 0.0",
    ("tests/test_steps.py::test_ema_blends_with_the_official_beta",),
  ),
  Mutation(
    "phase_order",
    "D phase before the G phase (D sees fakes of the old G)",
    "digan_jax/steps.py",
    "    for p in self.phases:\n      if p.every == 1 or p.name in lazy:",
    "    for p in (self.phases[1], self.phases[0], *self.phases[2:]):\n"
    "      if p.every == 1 or p.name in lazy:",
    ("tests/test_train_parity.py::test_chained_iteration_equals_phases_composed_by_hand",),
  ),
  Mutation(
    "w_avg",
    "w_avg not tracked in training (update_w_avg=False)",
    "digan_jax/phases.py",
    "update_w_avg=True,",
    "update_w_avg=False,",
    ("tests/test_steps.py::test_w_avg_tracks_the_batch_mean_of_w_in_every_generator_call",),
  ),
  Mutation(
    "d_labels",
    "D ignores its class labels",
    "digan_jax/models/discriminator.py",
    'name="mapping"\n      )(None, labels)',
    'name="mapping"\n      )(None, jnp.zeros_like(labels))',
    (
      "tests/test_steps.py::test_class_conditional_phase_uses_labels",
      "tests/test_models.py::test_class_conditional_networks",
    ),
  ),
  Mutation(
    "label_order",
    "image-D labels tiled instead of repeated per frame",
    "digan_jax/models/discriminator.py",
    "labels = jnp.repeat(labels, frames.shape[0] // labels.shape[0], axis=0)",
    "labels = jnp.tile(labels, (frames.shape[0] // labels.shape[0], 1))",
    ("tests/test_models.py::test_class_conditional_networks",),
  ),
  Mutation(
    "dm_delta_t",
    "D_M ignores Δt (zero plane)",
    "digan_jax/models/discriminator.py",
    "    delta_t.reshape(-1, 1, 1, 1)",
    "    0.0 * delta_t.reshape(-1, 1, 1, 1)",
    (
      "tests/test_models.py::test_motion_discriminator_reads_both_frames_and_delta_t",
      "tests/test_train_parity.py::test_phase_matches_official[noaug-Dmain]",
    ),
  ),
  Mutation(
    "g_time",
    "G ignores time (motion path disabled)",
    "digan_jax/models/inr.py",
    "a[:, None, :] * times[:, :, None].astype(jnp.float32)",
    "a[:, None, :] * 0.0 * times[:, :, None].astype(jnp.float32)",
    ("tests/test_steps.py::test_learning_motion_that_follows_delta_t",),
  ),
  Mutation(
    "sr_nearest",
    "super-resolution as nearest upsampling (coordinates repeated in blocks)",
    "digan_jax/models/inr.py",
    "xs = self.x_lo + step * np.arange(w, dtype=np.float64)\n"
    "    ys = (self.y_lo + step * np.arange(h, dtype=np.float64))[::-1]",
    "xs = self.x_lo + step * (np.arange(w) // self.scale * self.scale).astype(np.float64)\n"
    "    ys = (self.y_lo + step * (np.arange(h) // self.scale * self.scale).astype(np.float64))[::-1]",
    (
      "tests/test_models.py::test_super_resolution_render",
      "tests/test_sampling.py::test_sampling_from_imported_official_checkpoint",
    ),
  ),
  Mutation(
    "crop",
    "centre crop one pixel off",
    "digan_jax/data/image_ops.py",
    "left = (width - side) // 2",
    "left = (width - side) // 2 + 1",
    ("tests/test_data_prepare.py::test_centre_crop_window_is_the_official_one",),
  ),
  Mutation(
    "cutout_range",
    "cutout offsets drawn from [0, size) instead of the official range",
    "digan_jax/augment.py",
    "0, resolution + (1 - c % 2)) - c // 2",
    "0, resolution) - c // 2",
    ("tests/test_augment.py::test_cutout_box_range_and_size_match_official_draws",),
  ),
  Mutation(
    "bf16",
    "bfloat16 compute silently done in float32",
    "digan_jax/models/layers.py",
    "return jnp.matmul(x.astype(dtype), w.astype(dtype), preferred_element_type=out_dtype or dtype)",
    "return jnp.matmul(x.astype(jnp.float32), w.astype(jnp.float32), "
    "preferred_element_type=out_dtype or dtype)",
    ("tests/test_layers_fast_conv.py::test_bfloat16_compute_is_really_bfloat16",),
  ),
  Mutation(
    "bf16_activations",
    "bfloat16 operands but float32 activations (no memory saved)",
    "digan_jax/models/layers.py",
    "    preferred_element_type=dtype,\n  )",
    "    preferred_element_type=jnp.float32,\n  )",
    ("tests/test_layers_fast_conv.py::test_bfloat16_compute_is_really_bfloat16",),
  ),
  Mutation(
    "remat_ignored",
    "a remat policy silently ignored",
    "digan_jax/models/layers.py",
    "  return nn.remat(module_cls, policy=getattr(jax.checkpoint_policies, policy))",
    "  return module_cls",
    ("tests/test_models.py::test_remat_keeps_parameters_outputs_and_gradients",),
  ),
  Mutation(
    "hlo_async_bytes",
    "an async slice charged its whole operand",
    "digan_jax/hlo_profile.py",
    'if m["op"].endswith("-start"):',
    'if m["op"].endswith("-never"):',
    ("tests/test_hlo_profile.py::test_kernels_bytes_cycles_and_sources",),
  ),
  Mutation(
    "eval_g",
    "in-loop evaluation scores G instead of G_ema",
    "digan_jax/train.py",
    "for name, result in evaluator(state.g_ema, step, due).items():",
    'for name, result in evaluator({"params": state.g_params, "stats": state.g_stats},'
    " step, due).items():",
    ("tests/test_train.py::test_eval_mode_adds_fvd_of_the_latest_checkpoint",),
  ),
  Mutation(
    "restore_g",
    "restore_generator (sampling, --mode=eval/sample) reads G, not G_ema",
    "digan_jax/checkpointing.py",
    'restore_numpy(directory, step, "g_ema")',
    'restore_numpy(directory, step, "g")',
    (
      "tests/test_import_official.py::test_import_keeps_g_and_g_ema_apart",
      "tests/test_sampling.py::test_sampling_from_imported_official_checkpoint",
      "tests/test_evaluator.py::test_eval_mode_writes_result_with_protocol_card",
    ),
  ),
  Mutation(
    "save_g",
    "training checkpoints save G's parameters as g_ema",
    "digan_jax/checkpointing.py",
    "state=ocp.args.StandardSave(state),\n        g_ema=ocp.args.StandardSave(state.g_ema),",
    "state=ocp.args.StandardSave(state),\n        g_ema=ocp.args.StandardSave("
    '{"params": state.g_params, "stats": state.g_stats}),',
    ("tests/test_train.py::test_uninterrupted_run_writes_workdir",),
  ),
  Mutation(
    "samples_g",
    "write_samples renders G instead of G_ema",
    "digan_jax/train.py",
    "g_ema = jax.device_get(state.g_ema)",
    'g_ema = jax.device_get({"params": state.g_params, "stats": state.g_stats})',
    ("tests/test_train.py::test_sample_mode_renders_what_the_loop_rendered",),
  ),
  Mutation(
    "nonfinite_save",
    "a state with non-finite values is checkpointed",
    "digan_jax/train.py",
    "if not bool(jax.device_get(steps_lib.state_is_finite(state))):",
    "if False:",
    ("tests/test_train.py::test_state_with_a_non_finite_value_is_never_checkpointed",),
  ),
  Mutation(
    "flag_traceback",
    "a mistyped --config override ends in a traceback",
    "digan_jax/main.py",
    "app.run(main, flags_parser=_parse_flags)",
    "app.run(main)",
    ("tests/test_train.py::test_cli_errors_are_one_clear_message",),
  ),
  Mutation(
    "nonfinite_skip_applied",
    'nonfinite_policy="skip" applies the non-finite iteration anyway',
    "digan_jax/steps.py",
    "  kept = before.replace(step=after.step)\n",
    "  kept = after\n",
    ("tests/test_steps.py::test_nonfinite_policy_skip_with_a_nan_injected_into_one_batch",),
  ),
  Mutation(
    "damaged_checkpoint_deleted",
    "a damaged checkpoint is deleted instead of moved aside",
    "digan_jax/checkpointing.py",
    "      (self.directory / str(step)).rename(aside)\n",
    "      (self.directory / str(step)).rmtree()\n",
    (
      "tests/test_faults.py::test_damaged_newest_checkpoint_is_set_aside_and_the_previous_one_resumes",
    ),
  ),
  Mutation(
    "corrupt_record_traceback",
    "a damaged dataset record surfaces as TensorFlow's decoder error",
    "digan_jax/data/pipeline.py",
    "  return _naming_corrupt_records(batches, dataset, plan_of)\n",
    "  return batches\n",
    ("tests/test_faults.py::test_damaged_frame_stops_the_run_naming_file_and_record",),
  ),
  Mutation(
    "failed_save_fatal",
    "a failed checkpoint write ends the run at once instead of retrying at the next save",
    "digan_jax/checkpointing.py",
    "    except Exception as e:  # noqa: BLE001 - any storage error; the run goes on\n      self._save_failed(step, e)\n      return\n",
    "    except Exception as e:  # noqa: BLE001 - any storage error; the run goes on\n      raise\n",
    ("tests/test_faults.py::test_failed_write_is_retried_at_the_next_save",),
  ),
  Mutation(
    "catch_up_partial_samples",
    "a resumed run takes a half-written samples directory of its step for done",
    "digan_jax/train.py",
    '    done = workdir / "samples" / str(start) / "sampling.json"  # written last by sample_to_dir\n',
    '    done = workdir / "samples" / str(start)\n',
    ("tests/test_faults.py::test_stop_after_the_last_checkpoint_still_gets_its_samples_and_fvd",),
  ),
  Mutation(
    "floor_self",
    "the FVD floor compares the reals with themselves, not with the disjoint split",
    "digan_jax/evaluation/evaluator.py",
    "fvd_kvd(real_sets[t % len(real_sets)], floor_sets[t % len(floor_sets)], protocol)",
    "fvd_kvd(real_sets[t % len(real_sets)], real_sets[t % len(real_sets)], protocol)",
    (
      "tests/test_evaluator.py::"
      "test_floor_is_fvd_of_disjoint_real_sets_and_the_gap_is_read_against_it",
    ),
  ),
  Mutation(
    "freeze_ignored",
    "train.freeze zeroes no update (the motion-path control trains its motion path)",
    "digan_jax/optim.py",
    "flags = [bool(regex.search(n)) for n in param_names(network, params)]",
    "flags = [False for n in param_names(network, params)]",
    ("tests/test_motion.py::test_freeze_keeps_the_motion_path_and_names_it",),
  ),
)


def _copy_tree(src: pathlib.Path, dst: pathlib.Path):
  shutil.copytree(src, dst, ignore=lambda d, names: [n for n in names if n in IGNORED])


def _mutated_text(root: pathlib.Path, m: Mutation) -> str:
  text = (root / m.path).read_text()
  if text.count(m.old) != 1:
    raise SystemExit(
      f"{m.name}: the code to mutate was found {text.count(m.old)} times in {m.path}; "
      "update the mutation to the current code"
    )
  return text.replace(m.old, m.new)


def run_mutation(m: Mutation, snapshot: pathlib.Path, timeout: int, cache_dir: str) -> dict:
  with tempfile.TemporaryDirectory(prefix=f"mutant_{m.name}_") as tmp:
    root = pathlib.Path(tmp) / "repo"
    _copy_tree(snapshot, root)
    if (REPO.parent / "shared").is_dir():
      os.symlink(REPO.parent / "shared", pathlib.Path(tmp) / "shared")
    (root / m.path).write_text(_mutated_text(root, m))
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir)
    start = time.time()
    try:
      proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-rf", *m.tests],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
      )
      out, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
      out, rc = (e.stdout or "") if isinstance(e.stdout, str) else "", "timeout"
  failed = sorted(set(re.findall(r"^FAILED (\S+)", out, re.M)))
  errors = [line.strip()[:300] for line in out.splitlines() if re.match(r"^E\s{2,}\S", line)]
  return {
    "name": m.name,
    "bug": m.bug,
    "tests": list(m.tests),
    "caught": rc not in (0, "timeout") and bool(failed),
    "returncode": rc,
    "failed": failed,
    "assertions": errors[:4],
    "seconds": round(time.time() - start, 1),
    "summary": (out.strip().splitlines() or [""])[-1][:200],
  }


def markdown(results) -> str:
  rows = [
    "| bug injected | caught by | failing assertion (measured vs threshold) |",
    "|---|---|---|",
  ]
  for r in results:
    tests = (
      "<br>".join(f.split("::", 1)[-1] for f in r["failed"]) or f"**NOT CAUGHT** ({r['summary']})"
    )
    shown = "<br>".join(a.replace("|", "\\|") for a in r["assertions"][:2])
    rows.append(f"| {r['bug']} | {tests} | {shown} |")
  return "\n".join(rows)


def _define_flags(fv: flags.FlagValues) -> flags.FlagValues:
  """The tool's flags on `fv`: absl's FLAGS when run as a script, a fresh FlagValues in run()."""
  flags.DEFINE_list("only", [], "comma-separated mutation names (default: all)", flag_values=fv)
  flags.DEFINE_boolean("list", False, "list the mutations and exit", flag_values=fv)
  flags.DEFINE_integer("timeout", 1800, "seconds per mutation", flag_values=fv)
  flags.DEFINE_string("json", "", "also write the results here", flag_values=fv)
  return fv


def main(argv, fv: flags.FlagValues = flags.FLAGS):
  cli_flags.reject_positional(argv)
  if fv.list:
    for m in MUTATIONS:
      print(f"{m.name:16s} {m.bug}")
    return 0
  names = [n for n in fv.only if n]
  unknown = set(names) - {m.name for m in MUTATIONS}
  if unknown:
    raise SystemExit(f"unknown mutations {sorted(unknown)}; see --list")
  chosen = [m for m in MUTATIONS if not names or m.name in names]
  cache_dir = tempfile.mkdtemp(prefix="mutants_xla_cache_")
  # One snapshot of the tree as it is now: editing the repository while this runs changes nothing.
  snapshot = pathlib.Path(tempfile.mkdtemp(prefix="mutants_snapshot_")) / "repo"
  _copy_tree(REPO, snapshot)
  for m in chosen:  # fail fast when the code has moved away from a mutation
    _mutated_text(snapshot, m)
  results = []
  for m in chosen:
    r = run_mutation(m, snapshot, fv.timeout, cache_dir)
    results.append(r)
    print(
      f"{m.name}: {'caught' if r['caught'] else 'NOT CAUGHT'} in {r['seconds']} s by {r['failed']}",
      flush=True,
    )
    if fv.json:
      pathlib.Path(fv.json).write_text(json.dumps(results, indent=1))
  print(markdown(results))
  return 0 if all(r["caught"] for r in results) else 1


def run(argv) -> int:
  """The tool in this process (program name first in argv); returns the exit code."""
  return cli_flags.run_in_process(_define_flags, main, argv)


if __name__ == "__main__":
  cli_flags.run_as_program(_define_flags, main)
