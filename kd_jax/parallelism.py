"""Device mesh, shardings and multi-process start-up.

One code path serves 1 CPU, 8 GPUs or a pod: a 1-D mesh over every device with a `data` axis;
batches are sharded along it and parameters are replicated. XLA inserts the gradient all-reduce.
"""

from __future__ import annotations

import numpy as np
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from kd_jax.errors import ConfigError

DATA_AXIS = "data"


def make_mesh(devices: list | None = None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split across the `data` axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def put_replicated(host_array: np.ndarray, mesh: Mesh) -> jax.Array:
  """Places a host array whole on every device of the mesh (works across processes too)."""
  return jax.make_array_from_callback(host_array.shape, replicated(mesh),
                                      lambda index: host_array[index])


def check_batch_divides(batch_size: int, mesh: Mesh, field: str) -> None:
  if batch_size % mesh.size:
    raise ConfigError(f"{field}={batch_size} must be divisible by the number of devices "
                      f"({mesh.size}); per-device batch = {field} / devices.")
