"""Device mesh, shardings of the train state and of batches, host-local -> global arrays.

The mesh always has two axes, `data` and `fsdp`. Batches are split over both (every device holds a
different slice of the global batch); parameters are replicated unless `fsdp > 1`, in which case
large parameters (and their optimiser moments, which have the same shapes) are split along one
dimension over `fsdp`. Step code never names devices: it only sees these shardings, so the same
code runs on one CPU, one GPU host or a multi-host pod.
"""

from __future__ import annotations

import math
import types
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")  # the batch dimension is split over both axes
# Parameters smaller than this stay replicated under fsdp (the gather would cost more than it saves).
FSDP_MIN_SIZE = 2**18


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, int]:
  """(data, fsdp) sizes from config.mesh, where one -1 takes all remaining devices."""
  sizes = [int(mesh_config.data), int(mesh_config.fsdp)]
  if sizes.count(-1) > 1:
    raise ValueError("config.mesh: at most one of data/fsdp may be -1")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(
      f"config.mesh sizes must be positive or -1, got data={sizes[0]} fsdp={sizes[1]}"
    )
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(
        f"config.mesh: {num_devices} devices are not divisible by the fixed axis size {known}"
      )
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(
      f"config.mesh data={sizes[0]} x fsdp={sizes[1]} = {math.prod(sizes)} devices, "
      f"but {num_devices} are available; set one of them to -1"
    )
  return sizes[0], sizes[1]


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'fsdp') mesh over `devices` (default: all devices of all processes)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_config, len(devices))
  # Auto axes: XLA propagates shardings through the step, we only pin inputs and outputs.
  return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_parallel_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Every device on the `data` axis (fsdp = 1): the mesh of evaluation and sampling by default."""
  return make_mesh(types.SimpleNamespace(data=-1, fsdp=1), devices)


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
  """The mesh axes a batch is split over (a plain ('data',) mesh works too)."""
  axes = tuple(a for a in mesh.axis_names if a in BATCH_AXES)
  if not axes:
    raise ValueError(
      f"the mesh has axes {mesh.axis_names}; batches are split over {BATCH_AXES}, "
      "so the mesh needs at least one of them"
    )
  return axes


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
  """Leading (batch) dimension split over the batch axes, the rest whole."""
  return NamedSharding(mesh, P(batch_axes(mesh), *([None] * (ndim - 1))))


def batch_devices(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in batch_axes(mesh))


def padded_batch(mesh: Mesh, batch_size: int) -> int:
  """`batch_size` rounded up to a multiple of the devices the batch is split over."""
  devices = batch_devices(mesh)
  return max(1, math.ceil(batch_size / devices)) * devices


def to_host(x: jax.Array) -> np.ndarray:
  """A (possibly multi-process) global array as one NumPy array on every host."""
  if x.is_fully_addressable:
    return np.asarray(x)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def batch_size_per_device(mesh: Mesh, global_batch: int) -> int:
  n = batch_devices(mesh)
  if global_batch % n:
    raise ValueError(
      f"global batch {global_batch} is not divisible by the {n} devices of the mesh; "
      "choose a global batch that is a multiple of the device count"
    )
  return global_batch // n


def _fsdp_spec(shape: tuple[int, ...], fsdp: int) -> P:
  """Split the largest dimension divisible by `fsdp` of a large array; otherwise replicate."""
  if fsdp == 1 or math.prod(shape) < FSDP_MIN_SIZE:
    return P()
  dims = sorted(range(len(shape)), key=lambda i: -shape[i])
  for i in dims:
    if shape[i] % fsdp == 0:
      spec = [None] * len(shape)
      spec[i] = "fsdp"
      return P(*spec)
  return P()


def state_shardings(abstract_state: Any, mesh: Mesh) -> Any:
  """NamedSharding for every leaf of a (shape-only) train state: replicated, or fsdp-split."""
  fsdp = mesh.shape["fsdp"]
  return jax.tree.map(
    lambda x: NamedSharding(mesh, _fsdp_spec(tuple(x.shape), fsdp)), abstract_state
  )


def process_rows(mesh: Mesh, global_batch: int) -> slice:
  """The rows of the global batch whose data this process must supply (contiguous)."""
  sharding = batch_sharding(mesh)
  index_map = sharding.addressable_devices_indices_map((global_batch,))
  starts = sorted({idx[0].start or 0 for idx in index_map.values()})
  per_device = batch_size_per_device(mesh, global_batch)
  lo, hi = starts[0], starts[-1] + per_device
  if hi - lo != per_device * len(starts):
    raise ValueError(
      "this process's devices do not hold a contiguous part of the batch; "
      "build the mesh with jax.make_mesh over jax.devices() (process-major order)"
    )
  return slice(lo, hi)


def global_batch_from_local(
  local_batch: dict[str, Any], mesh: Mesh, global_batch: int | None = None
) -> dict[str, jax.Array]:
  """Host-local NumPy arrays (this process's rows) -> global arrays sharded over the batch.

  `global_batch` defaults to local rows x process count (every process feeds an equal share).
  """
  out = {}
  for name, value in local_batch.items():
    value = np.asarray(value)
    rows = global_batch or value.shape[0] * jax.process_count()
    out[name] = jax.make_array_from_process_local_data(
      batch_sharding(mesh, value.ndim), value, (rows,) + value.shape[1:]
    )
  return out


def from_process_0(value: int) -> int:
  """Process 0's `value` on every process.

  Whatever a process reads from storage and then acts on collectively (the step to resume from, a
  feature-cache hit) must be one decision: with a listing that differs between hosts (an object
  store's eventual consistency, a cache written meanwhile) the processes would enter different
  collectives and hang.
  """
  if jax.process_count() == 1:
    return int(value)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def agree_max(value: int) -> int:
  """The largest `value` over all processes (a verdict every process then acts on alike)."""
  if jax.process_count() == 1:
    return int(value)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  return int(np.max(multihost_utils.process_allgather(np.array([value], np.int32))))


def barrier(name: str) -> None:
  """All processes wait here (e.g. until process 0 has renamed a directory they then list)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    multihost_utils.sync_global_devices(name)
