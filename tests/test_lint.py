"""Formatting and lint (ruff, configured in pyproject.toml): `ruff format` leaves every file as it
is and `ruff check` finds nothing. Fix with `.venv/bin/ruff format . && .venv/bin/ruff check --fix .`."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

# Skipped without ruff, except in CI (.ci/run sets DIGAN_REQUIRE_TOOLS=1): there it must run.
pytestmark = pytest.mark.skipif(
  importlib.util.find_spec("ruff") is None and os.environ.get("DIGAN_REQUIRE_TOOLS") != "1",
  reason="ruff is not installed (requirements.txt pins it)",
)


@pytest.mark.parametrize("command", [["format", "--check"], ["check"]], ids=["format", "check"])
def test_ruff(command):
  proc = subprocess.run(
    [sys.executable, "-m", "ruff", *command, "."], cwd=REPO, capture_output=True, text=True
  )
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
