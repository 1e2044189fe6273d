"""Entry point: `python -m digan_jax.main --config=configs/X.py --workdir=DIR [--mode=train|eval|sample]`.

Only process setup and dispatch live here: optional `jax.distributed.initialize()`, keeping
TensorFlow off accelerators, a process/device summary, and one user-facing error line for mistakes.
"""

from __future__ import annotations

import ast
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from digan_jax import cli_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "configuration file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory (local path or gs://)")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "sample"], "what to run")
flags.mark_flags_as_required(["config", "workdir"])


def _wants_distributed(config) -> bool:
  if os.environ.get("DIGAN_NO_DISTRIBUTED") == "1":
    return False
  env = ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES")
  return bool(config.distributed) or any(os.environ.get(k) for k in env)


class _QuietLibraries:
  """Drops INFO records of Orbax and TFDS (dozens of lines per checkpoint), keeps warnings."""

  def filter(self, record) -> bool:
    noisy = ("/orbax/", "/tensorflow_datasets/", "/etils/")
    return record.levelno >= 30 or not any(n in record.pathname for n in noisy)


def _initialize_distributed(jax):
  """jax.distributed.initialize from the environment.

  Cloud TPU, Slurm and Open MPI are detected by JAX itself; launch/local.sh (and any other
  launcher) sets JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID explicitly.
  """
  kwargs = {}
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    kwargs = dict(
      coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
      num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
      process_id=int(os.environ["JAX_PROCESS_ID"]),
    )
  if os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
    # Cross-process collectives on CPU (local multi-process runs and tests).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)


def main(argv):
  cli_flags.reject_positional(argv)
  # TF (data pipelines only) must never take accelerator memory from JAX.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import jax  # pylint: disable=g-import-not-at-top

  logging.get_absl_handler().addFilter(_QuietLibraries())
  config = _CONFIG.value
  if _wants_distributed(config):
    _initialize_distributed(jax)
  logging.info(
    "JAX %s: process %d/%d, %d local / %d global devices (%s)",
    jax.__version__,
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
    jax.devices()[0].device_kind,
  )

  from digan_jax.errors import UserError  # pylint: disable=g-import-not-at-top

  try:
    if _MODE.value == "train":
      from digan_jax import train  # pylint: disable=g-import-not-at-top

      train.train_and_evaluate(config, _WORKDIR.value)
    elif _MODE.value == "eval":
      from digan_jax.evaluation import evaluator  # pylint: disable=g-import-not-at-top

      evaluator.run_eval_mode(config, _WORKDIR.value)
    else:
      from digan_jax import sampling  # pylint: disable=g-import-not-at-top

      sampling.run_sample_mode(config, _WORKDIR.value)
  except UserError as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def _parse_flags(argv):
  """absl's parser, with a mistyped flag or `--config.` override as one error line, no traceback.

  ml_collections raises plain AttributeError/KeyError/TypeError/ValueError from inside flag parsing
  (an unknown config field, a value of the wrong type), which absl would print as a traceback.
  """
  try:
    remaining = flags.FLAGS(argv)
    if _CONFIG.value is not None:
      _CONFIG.value.get("train")  # a config file that failed to load raises only when first read
    return remaining
  except OSError as e:  # the --config file itself
    message = str(e).replace(
      "Configuration is not available because of an earlier failure to load: ", ""
    )
  except flags.Error as e:
    message = str(e)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    message = str(e.args[0]) if e.args else repr(e)
  if len(message) > 1 and message[0] == message[-1] == "'":  # a KeyError's repr inside the message
    try:
      message = ast.literal_eval(message)
    except (SyntaxError, ValueError):
      pass
  message = " ".join(message.split())
  print(
    f"error: {message}\n(check the flag and the field names in configs/default.py; "
    "--helpfull lists the flags)",
    file=sys.stderr,
  )
  sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
