"""Mesh, partition rules and host-local <-> global arrays.

The mesh has axes ("data", "fsdp") with Auto axis types. The batch is sharded over both
axes. Parameters (and EMA targets and optimizer state, which mirror them) are either
replicated (`config.sharding.mode = 'data_parallel'`) or sharded over "fsdp" along
their largest divisible dimension (`'fsdp'`), when they have at least
`config.sharding.fsdp_min_size` elements.
"""
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

PyTree = Any
BATCH_AXES = ("data", "fsdp")
MODES = ("data_parallel", "fsdp")


def create_mesh(config, devices=None) -> Mesh:
  """('data', 'fsdp') mesh: fsdp size = `config.sharding.fsdp_size` in FSDP mode (all
  devices when it is -1 or more than there are: a pod recipe's group size also runs on one
  host), 1 in data-parallel mode; the data axis takes the remaining devices."""
  devices = jax.devices() if devices is None else devices
  mode = config.sharding.mode
  if mode not in MODES:
    raise ValueError(f"Unknown config.sharding.mode={mode!r}; choose one of {MODES}.")
  n = len(devices)
  size = config.sharding.fsdp_size
  fsdp = 1 if mode == "data_parallel" else (n if size < 0 or size > n else size)
  if n % fsdp:
    raise ValueError(f"config.sharding.fsdp_size={fsdp} does not divide the {n} devices.")
  grid = np.asarray(devices).reshape(n // fsdp, fsdp)
  return Mesh(grid, BATCH_AXES, axis_types=(AxisType.Auto, AxisType.Auto))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every device."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fsdp_spec(shape, fsdp_size: int, min_size: int) -> P:
  """Shard the largest dimension divisible by the fsdp size; replicate small arrays."""
  if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return P(*spec)
  return P()


def state_shardings(mesh: Mesh, abstract_state: PyTree, config) -> PyTree:
  """NamedSharding per leaf of a (shape-only) train state."""
  fsdp_size = mesh.shape["fsdp"]
  min_size = config.sharding.fsdp_min_size
  return jax.tree.map(
      lambda x: NamedSharding(mesh, fsdp_spec(x.shape, fsdp_size, min_size)), abstract_state)


def global_batch(local_batch: PyTree, sharding: NamedSharding) -> PyTree:
  """Assemble each process's local numpy batch into one global jax.Array per leaf."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x),
                      local_batch)
