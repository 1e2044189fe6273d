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
import sys

from absl import app, flags

_NPZ = flags.DEFINE_string("npz", None, "exported official state_dicts (.npz)")
_OUTPUT = flags.DEFINE_string("output", None, "checkpoint directory to create (local or gs://)")
_MOTION_SIGMA = flags.DEFINE_float("motion_sigma", 0.25, "σ_t the model was trained with "
                                   "(0.25; the paper's 128-frame TaiChi model used 0.5)")
_MBSTD = flags.DEFINE_integer("mbstd_group_size", 4, "minibatch-std group of the discriminator")
_CLAMP = flags.DEFINE_float("conv_clamp", 256.0, "discriminator conv clamp (official: 256)")
_STEP = flags.DEFINE_integer("step", 0, "checkpoint step number to write")


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


def main(argv):
  del argv
  import os
  if not _NPZ.value or not _OUTPUT.value:
    sys.exit("usage: python -m digan_jax.import_official --npz=WEIGHTS.npz --output=CKPT_DIR")
  if not os.path.isfile(_NPZ.value):
    sys.exit(f"error: {_NPZ.value} not found; export it from the official pickle first "
             "(README, 'Importing official weights')")
  try:
    gcfg, dcfg, path = import_npz(_NPZ.value, _OUTPUT.value, _MOTION_SIGMA.value, _MBSTD.value,
                                  _CLAMP.value, _STEP.value)
  except (ValueError, KeyError, FileExistsError) as e:
    sys.exit(f"error: {e}")
  from digan_jax.checkpointing import model_card
  print(json.dumps({"checkpoint": str(path), **model_card(gcfg, dcfg)}, indent=1))


if __name__ == "__main__":
  app.run(main)
