"""Test setup: 8 fake CPU devices must be requested before jax is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# TensorFlow (data tests) must never grab an accelerator or flood the log.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# One persistent compilation cache for the session, its xdist workers and the trainer subprocesses
# they start: the same small programs are compiled by many tests, and compiling dominates CPU test
# time. Workers of one run share it through xdist's run id (JAX writes cache entries atomically).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import tempfile  # noqa: E402

  _run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
  if _run_id:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(
      tempfile.gettempdir(), f"digan_jax_xla_cache_{_run_id}"
    )
  else:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="digan_jax_xla_cache_")

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures"


# The slowest files, slowest first (measured: 2-worker suite, 2-core CPU). Under `-n 2 --dist
# loadfile` (with --no-loadscope-reorder, pyproject.toml) each worker takes the next file when it is
# nearly done, so starting with the long ones lets both workers finish together.
SLOW_FILES_FIRST = (
  "test_faults.py",  # ~700 s: trainer runs with injected faults, 10 SIGKILLs, two processes
  "test_multiprocess.py",  # ~700 s: launcher run, two-process step
  "test_train.py",  # ~600 s: trainer runs in and out of process
  "test_steps.py",  # ~550 s
  "test_gcs.py",  # ~350 s: trainer in a bucket
  "test_train_parity.py",
  "test_evaluator.py",
  "test_models.py",
)


def pytest_terminal_summary(terminalreporter):
  """The outcomes that fault-injection tests recorded (`report` in test_faults.py), so CI's log
  shows what was injected and what the runs did."""
  lines = {
    f"{report.nodeid.split('::')[-1]}: {value}"
    for report in terminalreporter.stats.get("passed", [])
    for key, value in getattr(report, "user_properties", ())
    if key == "faults"
  }
  if lines:
    terminalreporter.section("faults injected and outcomes")
    for line in sorted(lines):
      terminalreporter.write_line(line)


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept


@pytest.fixture(scope="session")
def fixtures_dir():
  """../shared/fixtures, or a skip when this clone has none beside it."""
  if not SHARED_FIXTURES.is_dir():
    pytest.skip(
      f"../shared/fixtures not found at {SHARED_FIXTURES} (only present in the dev/CI layout)"
    )
  return SHARED_FIXTURES


@pytest.fixture(scope="session")
def official_npz_with_distinct_g_ema(fixtures_dir, tmp_path_factory):
  """The official 128² fixture as G_ema, plus a G whose toRGB biases are shifted by 0.5: an export
  where reading G instead of G_ema anywhere (import, restore, sampling) shows."""
  import numpy as np

  data = np.load(fixtures_dir / "official_digan_128.npz")
  out = {}
  for k in data.files:
    v = data[k]
    if k.startswith("G/"):
      out["G_ema/" + k[2:]] = v
      out[k] = v + 0.5 if k.endswith("torgb.bias") else v
    elif not k.startswith(("in/", "out/")):
      out[k] = v
  path = tmp_path_factory.mktemp("official") / "g_and_g_ema.npz"
  np.savez(path, **out)
  return path
