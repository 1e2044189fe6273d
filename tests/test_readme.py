"""The README's first code block holds exactly two commands (demo, tests); CI runs the second."""

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]


def _first_block_commands():
  text = (REPO / "README.md").read_text()
  block = re.search(r"```(?:bash|sh)?\n(.*?)```", text, re.S).group(1)
  return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_starts_with_demo_and_test_commands():
  commands = _first_block_commands()
  assert len(commands) == 2
  demo, tests = commands
  assert "digan_jax.main" in demo and "configs/synthetic.py" in demo
  assert "pytest" in tests
  for cmd in commands:
    assert "pip install" in cmd and "requirements.txt" in cmd  # works on a fresh machine


def test_ci_runs_exactly_the_readme_test_command():
  ci = (REPO / ".ci" / "run").read_text().strip().splitlines()
  assert ci[-1] == _first_block_commands()[1]
