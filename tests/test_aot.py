"""TPU programs compiled ahead of time on this CPU host (libtpu topologies, digan_jax.aot): the
report's fields, fsdp at 256 chips within HBM, and no CPU-only fast path inside a TPU program."""

import importlib.util
import json
import os
import re

import jax
import jax.numpy as jnp
import pytest

from digan_jax import aot, sharding, target
from digan_jax import steps as steps_lib
from digan_jax.evaluation import i3d
from digan_jax.models import layers
import tiny_digan

HAVE_LIBTPU = importlib.util.find_spec("libtpu") is not None


def _need_libtpu():
  if not HAVE_LIBTPU:
    message = "libtpu is not installed (requirements.txt installs it on x86_64 Linux)"
    if os.environ.get("DIGAN_REQUIRE_TOOLS") == "1":
      pytest.fail(f"{message}; DIGAN_REQUIRE_TOOLS=1 requires it")
    pytest.skip(message)


def _conv_strides(fn, *args):
  """The window strides of every convolution in fn's jaxpr (nested jaxprs included)."""
  text = str(jax.make_jaxpr(fn)(*args))
  return [
    tuple(int(v) for v in m.split(",") if v.strip())
    for m in re.findall(r"conv_general_dilated\[[^\]]*?window_strides=\(([\d, ]*)\)", text, re.S)
  ]


@pytest.mark.parametrize("platform", ["cpu", "tpu"])
def test_fast_paths_follow_the_compile_target_not_the_host(platform):
  """On this CPU host, a trace for TPU must take the XLA conv paths: a strided 2D conv for the
  down-sampling D conv and one 3D conv for a multi-tap I3D kernel; a trace for CPU takes the
  polyphase matmul and the per-tap 2D convs."""
  conv = layers.Conv2d(features=4, kernel_size=3, down=2)
  x = jnp.zeros((1, 8, 8, 3))
  params = conv.init(jax.random.PRNGKey(0), x)
  video, kernel = jnp.zeros((1, 4, 8, 8, 3)), jnp.zeros((3, 3, 3, 3, 5))
  with target.compiling_for(platform):
    d_convs = _conv_strides(lambda p: conv.apply(p, x), params)
    i3d_convs = _conv_strides(lambda v: i3d.conv3d_same(v, kernel, (1, 1, 1), "highest"), video)
  if platform == "tpu":
    assert (2, 2) in d_convs, d_convs
    assert i3d_convs == [(1, 1, 1)], i3d_convs
  else:
    assert (2, 2) not in d_convs, d_convs
    assert i3d_convs == [(1, 1)] * 3, i3d_convs  # one 2D conv per temporal tap


def test_compile_target_rejects_unknown_platforms():
  with pytest.raises(ValueError, match="cpu, gpu or tpu"):
    with target.compiling_for("npu"):
      pass
  assert target.platform() == jax.default_backend()


@pytest.fixture(scope="module")
def libtpu_env():
  _need_libtpu()
  # One libtpu per host unless allowed (another test process may hold it).
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")


def test_train_step_compiles_for_v5e_2x2(libtpu_env, tmp_path):
  """The tiny config's training iteration for 4 v5e chips: every report field, a data-parallel
  all-reduce, and the strided XLA conv (not the CPU polyphase matmul) in the optimised HLO."""
  config = tiny_digan.tiny_config(global_batch=8, r1_every=4)
  partial = []  # each function's report is handed out as soon as it is compiled
  result = aot.compile_for_topology(
    config,
    "v5e:2x2",
    functions=("train",),
    hlo_dir=str(tmp_path),
    log=lambda _: None,
    on_function=lambda r: partial.append(sorted(r["functions"])),
  )
  assert partial == [["train_step"], ["train_step", "train_step+r1"]]
  assert result["num_devices"] == 4 and result["chip"]["chip"] == "v5e"
  assert result["chip"]["hbm_bytes"] == 16 * 2**30 and result["per_device_batch"] == 2
  plain, lazy = (result["functions"][k] for k in ("train_step", "train_step+r1"))
  assert lazy["flops"] > plain["flops"]  # R1's double backward
  # The iteration: the R1 variant once every 4 steps, in time, FLOPs and libtpu's estimate.
  it, peak = result["iteration"], result["chip"]["peak_flops"]
  amortise = lambda get: (3 * get(plain) + get(lazy)) / 4
  assert it["seconds"] == pytest.approx(amortise(lambda v: v["roofline"]["seconds"]))
  kernel_s = amortise(lambda v: v["kernels"]["estimated_seconds"])
  assert it["estimated_seconds"] == pytest.approx(kernel_s)
  flops = amortise(lambda v: v["flops"])
  assert it["mfu"] == pytest.approx(flops / peak / it["seconds"])
  assert it["estimated_mfu"] == pytest.approx(flops / peak / kernel_s)
  entry = plain
  mem = entry["memory"]
  assert 0 < mem["argument"] and 0 < mem["temp"] and mem["fits"]
  assert mem["total_bytes"] == (
    mem["argument"] + mem["output"] - mem["alias"] + mem["temp"] + mem["generated_code"]
  )
  assert entry["flops"] > 0 and entry["bytes_accessed"] > 0 and entry["compile_s"] > 0
  roof = entry["roofline"]
  assert roof["seconds"] == max(roof["compute_seconds"], roof["memory_seconds"]) > 0
  assert 0 < roof["mfu"] <= 1 and roof["videos_per_s_per_device"] == 2 / roof["seconds"]
  assert entry["collectives"]["all-reduce"]["count"] > 0  # gradients are averaged over 4 chips
  kernels = entry["kernels"]  # libtpu's per-kernel estimates, at v5e's derived clock
  assert kernels["estimated_cycles"] > 0
  assert kernels["estimated_seconds"] == kernels["estimated_cycles"] / result["chip"]["clock_hz"]
  sources = [t["source"] for t in kernels["top_by_cycles"]]
  assert any("Discriminator" in s for s in sources) and any("Generator" in s for s in sources)
  # Kernel bytes count each kernel's operands and result once: never below the largest source.
  assert kernels["bytes"] >= kernels["top_by_bytes"][0]["bytes"] > 0
  assert kernels["bytes"] >= mem["argument"] - mem["alias"]  # every input is read at least once
  kroof = entry["kernel_roofline"]
  assert kroof["memory_seconds"] == kernels["bytes"] / result["chip"]["hbm_bytes_per_s"]
  assert kroof["seconds"] == max(roof["compute_seconds"], kroof["memory_seconds"])
  json.dumps(result)
  hlo = (tmp_path / "train_step.hlo.txt").read_text()
  assert re.search(r"convolution\(.*window=\{size=3x3 stride=2x2", hlo), "no strided D conv"


def test_tiny_model_with_fsdp_fits_on_256_chips(libtpu_env, monkeypatch):
  """v5e:16x16 with a (64 data x 4 fsdp) mesh; the size threshold is lowered so that the tiny
  networks' larger weights are really split over the fsdp axis."""
  monkeypatch.setattr(sharding, "FSDP_MIN_SIZE", 256)
  config = tiny_digan.tiny_config(global_batch=256)
  config.mesh.fsdp = 4
  result = aot.compile_for_topology(config, "v5e:16x16", functions=("train",), log=lambda _: None)
  assert result["mesh"] == {"data": 64, "fsdp": 4} and result["per_device_batch"] == 1
  mem = result["functions"]["train_step"]["memory"]
  assert 0 < mem["total_bytes"] < mem["hbm_bytes"] and mem["fits"]
  # ZeRO-3: only weights are gathered, each about twice (forward, backward) per phase that reads
  # it (G and D phases read both networks, R1 only D); the compiler may gather once more rather
  # than keep a weight live. Gathering activations instead (the propagation without the
  # constraints in steps.DiganSteps.gathered) measured 180 all-gathers here, vs 67 (73 since the
  # depthwise FIR, every one weight-sized).
  steps = steps_lib.DiganSteps(
    config, sharding.make_mesh(config.mesh, aot.topology_devices("v5e:16x16"))
  )
  split = lambda t: sum("fsdp" in str(s.spec) for s in jax.tree.leaves(t))
  g, d = split(steps.state_shardings.g_params), split(steps.state_shardings.d_params)
  assert g and d, "the tiny networks must have fsdp-split weights for this test to mean anything"
  gathered = result["functions"]["train_step"]["collectives"]["all-gather"]
  assert 0 < gathered["count"] <= 3 * (2 * (g + d) + d), (gathered, g, d)
  params = (steps.abstract_state.g_params, steps.abstract_state.d_params)
  largest = max(4 * x.size for x in jax.tree.leaves(params))
  assert gathered["max_bytes"] <= largest, (gathered, largest)  # never an activation


def test_bad_topology_and_batch_get_one_clear_message(libtpu_env):
  config = tiny_digan.tiny_config(global_batch=6)
  with pytest.raises(aot.UserError, match="not divisible by the 4 devices"):
    aot.compile_for_topology(config, "v5e:2x2", functions=("train",), log=lambda _: None)
  with pytest.raises(aot.UserError, match="cannot describe TPU topology 'v9z:2x2'"):
    aot.compile_for_topology(config, "v9z:2x2", functions=("train",), log=lambda _: None)


def test_v4_and_v5p_topologies_give_one_device_per_chip(libtpu_env):
  """libtpu describes v4 per TensorCore by default; JAX meshes on v4/v5p need one device per chip."""
  for name, kind in (("v4:2x2x1", "v4"), ("v5p:2x2x1", "v5p")):
    devices = aot.topology_devices(name)
    assert len(devices) == 4 and len({tuple(d.coords) for d in devices}) == 4, devices
    chip = aot.chip_facts(devices, name)
    assert chip["chip"] == kind and chip["devices_per_chip"] == 1
    assert chip["hbm_bytes"] == {"v4": 32 * 2**30, "v5p": 102005473280}[kind]
    sharding.make_mesh(tiny_digan.tiny_config(global_batch=8).mesh, devices)


def test_too_big_names_bytes_hbm_and_what_helps():
  result = dict(
    topology="v5e:2x2",
    per_device_batch=16,
    chip=dict(hbm_bytes=16 * 2**30),
    functions={
      "train_step": dict(memory=dict(fits=False, total_bytes=20 * 2**30, temp=18 * 2**30)),
      "render": dict(memory=dict(fits=True, total_bytes=2**30, temp=0)),
    },
  )
  message = aot.too_big(result)
  assert "train_step needs 20.00 GiB" in message and "16.0 GiB" in message
  assert "render" not in message and "global_batch_size" in message and "_remat" in message
  result["functions"]["train_step"]["memory"]["fits"] = True
  assert aot.too_big(result) is None
