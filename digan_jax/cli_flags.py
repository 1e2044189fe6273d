"""The flag pattern of every command-line tool: absl flags defined by a `define_flags(fv)` function
on a FlagValues: absl's global FLAGS under `python -m`, a fresh one for an in-process run. So
importing a tool's module registers no flag, and tools with the same flag names (--output, --seed)
can be imported together."""

from __future__ import annotations

from typing import Callable, Sequence

from absl import app, flags

DefineFlags = Callable[[flags.FlagValues], flags.FlagValues]
Main = Callable[[list[str], flags.FlagValues], int]


def run_in_process(define_flags: DefineFlags, main: Main, argv: Sequence[str]) -> int:
  """The tool in this process: argv as sys.argv (program name first); returns the exit code."""
  fv = define_flags(flags.FlagValues())
  return main(fv(list(argv)), fv)


def run_as_program(define_flags: DefineFlags, main: Main) -> None:
  """`python -m` entry: flags on absl's FLAGS, then app.run (usage text: the module docstring)."""
  define_flags(flags.FLAGS)
  app.run(main)


def reject_positional(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {list(argv[1:])}; every option is a --flag=value")
