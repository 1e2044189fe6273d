"""CLI: official DIGAN weights (.npz of PyTorch state_dicts) -> an Orbax checkpoint.

  python -m digan_jax.import_official --npz=digan_taichi.npz --output=/ckpt/taichi_official

The `.npz` holds `G/<name>`, `G_ema/<name>` (optional; G is used when absent) and `D/<name>`
tensors; README "Importing official weights" shows the few lines that export it from a
`network-snapshot-*.pkl`. The configs are inferred from tensor shapes; what shapes do not fix
(σ_t, minibatch-std group, conv clamp) comes from flags. The result is step 0 of a checkpoint
directory that `digan_jax.sampling` and `--mode=eval` read like any training checkpoint.
"""

from __future__ import annotations

import json
import os
import sys

from absl import flags

from digan_jax import cli_flags


def import_npz(npz_path, output, motion_sigma=0.25, mbstd_group_size=4, conv_clamp=256.0, step=0):
  """Convert and save; returns (GeneratorConfig, DiscriminatorConfig or None, checkpoint path)."""
  from digan_jax import checkpointing
  from digan_jax.models import official

  arrays, _ = official.load_npz(npz_path)
  nets = official.split_networks(arrays)
  gcfg, dcfg = official.infer_configs(nets, motion_sigma, mbstd_group_size, conv_clamp)
  g = official.convert_generator(nets.get("G") or nets["G_ema"])
  g_ema = official.convert_generator(nets.get("G_ema") or nets["G"])
  d = official.convert_dual_discriminator(nets["D"]) if "D" in nets else None
  path = checkpointing.save_networks(output, step, g=g, g_ema=g_ema, d=d, gcfg=gcfg, dcfg=dcfg)
  return gcfg, dcfg, path


def _define_flags(fv: flags.FlagValues) -> flags.FlagValues:
  """The CLI's flags on `fv`: absl's FLAGS under `python -m`, a fresh FlagValues in run()."""
  flags.DEFINE_string("npz", None, "exported official state_dicts (.npz)", flag_values=fv)
  flags.DEFINE_string(
    "output", None, "checkpoint directory to create (local or gs://)", flag_values=fv
  )
  flags.DEFINE_float(
    "motion_sigma",
    0.25,
    "σ_t the model was trained with (0.25; the paper's 128-frame TaiChi model used 0.5)",
    flag_values=fv,
  )
  flags.DEFINE_integer(
    "mbstd_group_size", 4, "minibatch-std group of the discriminator", flag_values=fv
  )
  flags.DEFINE_float(
    "conv_clamp", 256.0, "discriminator conv clamp (official: 256)", flag_values=fv
  )
  flags.DEFINE_integer("step", 0, "checkpoint step number to write", flag_values=fv)
  flags.mark_flags_as_required(["npz", "output"], flag_values=fv)
  return fv


def main(argv, fv: flags.FlagValues = flags.FLAGS):
  cli_flags.reject_positional(argv)
  if not os.path.isfile(fv.npz):
    sys.exit(
      f"error: {fv.npz} not found; export it from the official pickle first "
      "(README, 'Importing official weights')"
    )
  try:
    gcfg, dcfg, path = import_npz(
      fv.npz, fv.output, fv.motion_sigma, fv.mbstd_group_size, fv.conv_clamp, fv.step
    )
  except (ValueError, KeyError, FileExistsError) as e:
    sys.exit(f"error: {e}")
  from digan_jax.checkpointing import model_card

  print(json.dumps({"checkpoint": str(path), **model_card(gcfg, dcfg)}, indent=1))
  return 0


def run(argv) -> int:
  """The tool in this process (program name first in argv); returns the exit code."""
  return cli_flags.run_in_process(_define_flags, main, argv)


if __name__ == "__main__":
  cli_flags.run_as_program(_define_flags, main)
