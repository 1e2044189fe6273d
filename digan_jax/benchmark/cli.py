"""`python -m digan_jax.benchmark SUBCOMMAND --config=FILE [--config.FIELD=VALUE ...] [flags]`.

The flags live on a fresh absl FlagValues per call (nothing is registered at import, so this module
and digan_jax.main can be imported together); the config flag is ml_collections' like main.py's.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any

from absl import flags
from ml_collections import config_flags

from digan_jax.benchmark import measure, subcommands

# Timed calls and untimed calls after compilation, per subcommand.
_DEFAULT_REPEATS = {"train": 3, "render": 3, "i3d": 3, "data": 30}
_DEFAULT_WARMUP = {"train": 1, "render": 1, "i3d": 1, "data": 3}


def define_flags(command: str, argv: list[str], fv: flags.FlagValues) -> flags.FlagValues:
  """The flags of one subcommand on `fv`; argv (program name first) is where config overrides are
  read from."""
  config_flags.DEFINE_config_file(
    "config",
    None,
    "configuration file (configs/*.py)",
    flag_values=fv,
    lock_config=True,
    sys_argv=argv,
  )
  flags.mark_flag_as_required("config", flag_values=fv)
  flags.DEFINE_string("output", "", "also write the JSON to this file", flag_values=fv)
  flags.DEFINE_integer(
    "repeats",
    _DEFAULT_REPEATS[command],
    "timed calls per measurement",
    lower_bound=1,
    flag_values=fv,
  )
  flags.DEFINE_integer(
    "warmup",
    _DEFAULT_WARMUP[command],
    "untimed calls after compilation",
    lower_bound=0,
    flag_values=fv,
  )
  if command == "train":
    flags.DEFINE_boolean(
      "phases", True, "time each phase of the step's phase table on its own", flag_values=fv
    )
    flags.DEFINE_boolean(
      "fused", True, "time each compiled variant of the fused train step", flag_values=fv
    )
  elif command == "render":
    flags.DEFINE_list(
      "batch_sizes", ["1", "8"], "videos per call, one measurement each", flag_values=fv
    )
    flags.DEFINE_integer(
      "frames_per_chunk",
      4,
      "frames of every video rendered per lax.map step "
      "(0: all at once); small chunks keep activations in cache on CPU",
      lower_bound=0,
      flag_values=fv,
    )
  elif command == "i3d":
    flags.DEFINE_enum(
      "precision", "highest", ["highest", "default"], "matmul/conv precision", flag_values=fv
    )
  elif command == "data":
    flags.DEFINE_integer(
      "num_videos",
      0,
      "synthetic videos to build (0: config.data.synthetic_num_videos)",
      lower_bound=0,
      flag_values=fv,
    )
    flags.DEFINE_string(
      "data_dir",
      None,
      "build the TFDS dataset here and keep it (default: a temporary directory)",
      flag_values=fv,
    )
    flags.DEFINE_boolean(
      "tf", True, "also build a TFDS dataset and time the tf.data pipeline", flag_values=fv
    )
  return fv


def _usage(message: str) -> None:
  if message:
    print(f"error: {message}", file=sys.stderr)
  # The package docstring is the usage text (the package is always loaded before this module).
  print(sys.modules[__package__].__doc__, file=sys.stderr)
  raise SystemExit(2 if message else 0)


def parse(argv: list[str]) -> tuple[str, flags.FlagValues]:
  """(subcommand, parsed flags) from the arguments after the program name."""
  positional = [a for a in argv if not a.startswith("-")]
  if any(a in ("-h", "--help", "--helpfull") for a in argv):
    if positional and positional[0] in subcommands.SUBCOMMANDS:
      fv = define_flags(positional[0], ["benchmark", *argv], flags.FlagValues())
      print(fv.get_help(), file=sys.stderr)
      raise SystemExit(0)
    _usage("")
  if not positional or positional[0] not in subcommands.SUBCOMMANDS:
    _usage(f"the first argument must be a subcommand: {', '.join(subcommands.SUBCOMMANDS)}")
  command = positional[0]
  full = ["benchmark", *argv]
  fv = define_flags(command, full, flags.FlagValues())
  try:
    rest = fv(full)
    fv.config.get("train")  # a config file that failed to load raises only when first read
  except (flags.Error, OSError, AttributeError, KeyError, TypeError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2) from e
  if rest[1:] != [command]:
    _usage(f"unexpected arguments {rest[2:]}")
  return command, fv


def main(argv: list[str] | None = None) -> dict[str, Any]:
  """Runs one subcommand; prints its JSON report (the only thing on stdout), also to --output."""
  command, fv = parse(sys.argv[1:] if argv is None else list(argv))
  config = fv.config
  result: dict[str, Any] = dict(
    benchmark=command,
    config=config_flags.get_config_filename(fv["config"]),
    **measure.run_fields(),
    repeats=fv.repeats,
    warmup=fv.warmup,
  )
  # Library chatter (TFDS "Downloading and preparing ...") goes to stderr.
  with contextlib.redirect_stdout(sys.stderr):
    result.update(subcommands.SUBCOMMANDS[command](config, fv))
  result.update(measure.peak_memory())
  text = json.dumps(result, indent=2, default=float)
  print(text)
  if fv.output:
    with open(fv.output, "w") as f:
      f.write(text + "\n")
  return result
