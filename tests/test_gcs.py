"""A pod's storage layout against a real GCS JSON API: a local emulator on 127.0.0.1.

- a whole smoke run with its workdir and dataset in a bucket: the dataset is built there, training
  checkpoints, stops, resumes, evaluates (the real-feature cache written, then hit) and samples;
- the storage helpers alone: dataset lookup and host copy, merged eval records, the cache, samples.
Nothing lands on local disk outside the temp and data-cache dirs.

The stock emulator ignores GCS's generation preconditions and sends no x-goog-generation header on
downloads, which tensorstore's OCDBT writes rely on; tests/gcs_emulator.py patches that in.

How each layer reaches the emulator:
- our files and Orbax's directories (etils.epath): its fsspec/gcsfs backend (EPATH_USE_TF=false),
  which honours STORAGE_EMULATOR_HOST.
- Orbax's arrays (tensorstore): TENSORSTORE_GCS_HTTP_URL. TF's own GCS client has its endpoint compiled in and cannot reach an
  emulator; with TF installed epath uses it on real GCS, through the same epath calls. TensorBoard
  event files go through that client too, so the run here has config.tensorboard=False: they are
  the one output not tested against a bucket.
- array_record (if it ever reads gs:// itself): CLOUD_STORAGE_EMULATOR_ENDPOINT; here the dataset
  is read from the host copy, so it does not.
"""

import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow
BUCKET = "digan-test"


def _need(module):
  if importlib.util.find_spec(module) is None:
    if os.environ.get("DIGAN_REQUIRE_TOOLS") == "1":
      pytest.fail(f"{module} is not installed (requirements.txt lists it)")
    pytest.skip(f"{module} is not installed")


@contextlib.contextmanager
def gcs_emulator(tmp_path):
  _need("gcp_storage_emulator")
  _need("gcsfs")
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  log = open(tmp_path / "emulator.log", "w")
  proc = subprocess.Popen(
    [
      sys.executable,
      str(REPO / "tests" / "gcs_emulator.py"),
      "start",
      "--host",
      "127.0.0.1",
      "--port",
      str(port),
      "--default-bucket",
      BUCKET,
      "--in-memory",
    ],
    stdout=log,
    stderr=subprocess.STDOUT,
  )
  try:
    deadline = time.time() + 60
    while True:
      with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
          break
      assert proc.poll() is None and time.time() < deadline, (tmp_path / "emulator.log").read_text()
      time.sleep(0.2)
    url = f"http://127.0.0.1:{port}"
    yield dict(
      EPATH_USE_TF="false",
      STORAGE_EMULATOR_HOST=url,
      TENSORSTORE_GCS_HTTP_URL=url,
      CLOUD_STORAGE_EMULATOR_ENDPOINT=url,
      GOOGLE_AUTH_TOKEN_FOR_TESTING="emulator",
      GCS_RETRY_CONFIG_MAX_RETRIES="2",
      # gcsfs would probe the bucket type over gRPC (no credentials) on every call.
      GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
    )
  finally:
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def _isolated(tmp_path, gcs_env):
  """(cwd, data cache, env) of a job whose every local write must land in a temp dir: an empty
  working directory (checked empty afterwards), TMPDIR and the dataset host copy."""
  cwd, tmp, cache = tmp_path / "cwd", tmp_path / "tmp", tmp_path / "data_cache"
  for d in (cwd, tmp, cache):
    d.mkdir()
  env = dict(
    os.environ,
    **gcs_env,
    JAX_PLATFORMS="cpu",
    TMPDIR=str(tmp),
    DIGAN_DATA_CACHE=str(cache),
    PYTHONPATH=str(REPO),
  )
  return cwd, cache, env


def _bucket_files(env, prefix):
  """{relative path: bytes} of every object under gs://BUCKET/prefix, read in a clean process."""
  code = (
    "import json, sys; from etils import epath\n"
    f"root = epath.Path('gs://{BUCKET}/{prefix}')\n"
    "out = {}\n"
    "from digan_jax import fileio\n"
    "for p in fileio.list_files(root): out[str(p.relative_to(root))] = p.read_bytes().hex()\n"
    "print(json.dumps(out))"
  )
  proc = subprocess.run(
    [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return {k: bytes.fromhex(v) for k, v in json.loads(proc.stdout.splitlines()[-1]).items()}


_ROUND_TRIP = """
import json, os, sys
import numpy as np
from digan_jax import fileio
from digan_jax.data import prepare, storage
from digan_jax.evaluation import evaluator, protocols, real_data
from digan_jax import sampling, checkpointing
from digan_jax.models.generator import Generator, GeneratorConfig

bucket = sys.argv[1]
out = {}
# Dataset: built locally, uploaded (dataset_info.json last), found and copied to this host.
name, _ = prepare.prepare_synthetic(f"gs://{bucket}/data", 16, 8, 4, num_workers=1)
found = storage.find_dataset_dir(f"gs://{bucket}/data", name)
ds = storage.open_dataset(f"gs://{bucket}/data", name, "train")
out["dataset_dir"] = found
out["local_dir"] = ds.local_dir
out["num_videos"] = len(ds)
out["frame_bytes"] = len(ds.fetch([0], [[0]])[0, 0])
try:
  storage.find_dataset_dir(f"gs://{bucket}/data", "synthetic_videos/r99")
except storage.DatasetNotFoundError as e:
  out["not_found"] = str(e)
# Results and the feature cache: atomic single-object puts, read back.
evaluator.record_result(f"gs://{bucket}/run/eval", 3, {"protocol": "proxy", "fvd": 1.0})
evaluator.record_result(f"gs://{bucket}/run/eval", 3, {"protocol": "digan", "fvd": 2.0})
out["record"] = fileio.read_json(f"gs://{bucket}/run/eval/3.json")
proto = protocols.get_protocol("proxy", num_real=4, num_fake=4, num_trials=1)
path = real_data.real_cache_path(f"gs://{bucket}/run/eval/real_cache", proto, "fp")
fileio.write_npz(path, features=np.ones((proto.num_real_sets, 4, 400), np.float32),
                 meta=np.array(json.dumps({"dataset_fingerprint": "fp"})))
out["cache_read"] = real_data.read_cache(path, proto, "fp") is not None
out["cache_other_fingerprint"] = real_data.read_cache(path, proto, "other") is not None
# Samples: encoded locally, uploaded whole.
gcfg = GeneratorConfig(resolution=16, input_resolution=4, z_dim=8, motion_dim=8, w_dim=8,
                       channel_base=64, channel_max=8, emb_size=8, mapping_layers=1)
import jax, jax.numpy as jnp
g = Generator(gcfg)
variables = g.init(jax.random.key(0), jnp.zeros((1, 8)), jnp.zeros((1, 8)), jnp.zeros((1,)))
sampling.sample_to_dir(gcfg, variables, f"gs://{bucket}/run/samples/3", num_videos=2, num_frames=3)
out["samples"] = sorted(p.name for p in fileio.as_path(f"gs://{bucket}/run/samples/3").iterdir())
out["gif_head"] = fileio.as_path(f"gs://{bucket}/run/samples/3/grid.gif").read_bytes()[:4].decode()
print("RESULT " + json.dumps(out))
"""


def test_storage_round_trip_in_a_bucket(tmp_path):
  """Dataset build/lookup/host copy, eval records, feature cache and samples on gs://."""
  with gcs_emulator(tmp_path) as gcs_env:
    cwd, cache, env = _isolated(tmp_path, gcs_env)
    proc = subprocess.run(
      [sys.executable, "-c", _ROUND_TRIP, BUCKET],
      cwd=cwd,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    out = json.loads(proc.stdout.split("RESULT ", 1)[1])
    data_files = _bucket_files(env, "data")
  assert out["dataset_dir"].startswith(f"gs://{BUCKET}/data/synthetic_videos/r16_n8_t4/")
  assert out["local_dir"].startswith(str(cache)) and out["num_videos"] == 8
  assert out["frame_bytes"] > 0
  assert (
    "No prepared dataset" in out["not_found"] and "synthetic_videos/r16_n8_t4" in out["not_found"]
  )
  assert any(n.endswith("dataset_info.json") for n in data_files)
  assert any(".array_record-" in n for n in data_files)
  assert sorted(out["record"]["results"]) == ["digan", "proxy"]  # merged, not overwritten
  assert out["cache_read"] and not out["cache_other_fingerprint"]
  assert "grid.gif" in out["samples"] and "sampling.json" in out["samples"]
  assert out["gif_head"] == "GIF8"
  assert not list(cwd.iterdir()), list(cwd.iterdir())  # nothing landed on local disk


def test_training_run_in_a_bucket(tmp_path):
  """The smoke trainer with --workdir and the data dir on gs://: builds the dataset there, trains 3
  steps, stops; a new job resumes to 6; both evaluate at their end (the second reads the real
  features that the first cached) and write samples."""
  with gcs_emulator(tmp_path) as gcs_env:
    cwd, cache, env = _isolated(tmp_path, gcs_env)
    cmd = [
      sys.executable,
      "-m",
      "digan_jax.main",
      f"--config={REPO / 'configs' / 'smoke.py'}",
      f"--workdir=gs://{BUCKET}/run",
      f"--config.data.data_dir=gs://{BUCKET}/data",
      "--config.tensorboard=False",
      "--config.eval.at_end=True",
      "--config.eval.num_videos=8",
      "--config.eval.num_repeats=1",
      "--config.eval.batch_size=8",
      "--config.sample_every_steps=3",
      "--config.sample.num_videos=2",
    ]
    logs = []
    for num_steps in (3, 6):
      proc = subprocess.run(
        cmd + [f"--config.train.num_steps={num_steps}"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
      )
      logs.append(proc.stdout + proc.stderr)
      assert proc.returncode == 0, logs[-1][-4000:]
    files = _bucket_files(env, "run")
  assert "Resumed from step 3" in logs[1] and "step 6: FVD" in logs[1]
  names = set(files)
  for step in (3, 6):
    assert any(n.startswith(f"checkpoints/{step}/state/") for n in names), sorted(names)[:40]
    assert {f"samples/{step}/grid.gif", f"samples/{step}/sampling.json"} <= names
  assert any(n.startswith("best/") for n in names) and "best/best.json" in names
  evals = {s: json.loads(files[f"eval/{s}.json"])["results"]["proxy"] for s in (3, 6)}
  assert not evals[3]["real_cache_hit"] and evals[6]["real_cache_hit"]
  assert evals[6]["real_cache"].startswith(f"gs://{BUCKET}/run/eval/real_cache/")
  assert any(n.startswith("eval/real_cache/real_proxy_") for n in names)
  assert len(json.loads(files["manifest.json"])) == 2 and "config.json" in names
  assert not list(cwd.iterdir()), list(cwd.iterdir())  # nothing landed on local disk
