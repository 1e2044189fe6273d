"""Two local JAX processes (gloo collectives, 2 CPU devices each) train like one process."""

import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from digan_jax import sharding
import tiny_digan

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_STEPS = 2


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_single_process(tmp_path):
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
             PYTHONPATH=str(REPO))
  procs = [subprocess.Popen([sys.executable, str(REPO / "tests" / "tiny_digan.py"), "--worker",
                             str(i), "2", str(port), str(tmp_path / f"p{i}.npz"), str(NUM_STEPS)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for i in range(2)]
  try:
    # The single-process reference (4 of this process's 8 devices) runs while the workers do.
    config = tiny_digan.tiny_config()
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:4])
    history, state = tiny_digan.run(config, mesh, NUM_STEPS)
    reference = tiny_digan.host_params(state)
    outputs = [p.communicate(timeout=600)[0].decode(errors="replace") for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-4000:]

  flat_ref = {jax.tree_util.keystr(p): v
              for p, v in jax.tree_util.tree_flatten_with_path(reference)[0]}
  ref_losses = np.array([[m[k] for k in sorted(m)] for m in history])
  results = [np.load(tmp_path / f"p{i}.npz") for i in range(2)]
  for res in results:
    np.testing.assert_array_equal(res["devices"], [4, 2])
    np.testing.assert_allclose(res["losses"], ref_losses, rtol=1e-5)
    assert set(res.files) - {"losses", "devices"} == set(flat_ref)
    diff = max(float(np.max(np.abs(res[k] - v))) for k, v in flat_ref.items())
    print(f"max |param(2 processes) - param(1 process)| = {diff:.3g}")
    assert diff < 5e-5
  # Both processes hold the same replicated parameters.
  for k in flat_ref:
    np.testing.assert_array_equal(results[0][k], results[1][k])
