"""Device mesh, shardings and multi-process start-up.

One code path serves 1 CPU, 8 GPUs or a pod: a 1-D mesh over every device with a `data` axis;
batches are sharded along it and parameters are replicated. XLA inserts the gradient all-reduce.
The members of a population run through `map_members`: vmapped in groups, the groups in turn.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from kd_jax.errors import ConfigError, one_line

DATA_AXIS = "data"


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None,
                           timeout_s: int = 300) -> None:
  """Joins JAX's multi-controller runtime: one process per host (or per GPU) runs this same code.

  With no arguments JAX detects the cluster itself (SLURM, TPU pods, Open MPI, Kubernetes); on
  CPU the cross-process collectives go through gloo.
  """
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               initialization_timeout=timeout_s)
  except (ValueError, RuntimeError) as e:
    raise ConfigError(f"--distributed could not join a multi-process run ({one_line(e)}). Run "
                      "inside a SLURM/TPU/MPI job, or pass --coordinator_address, "
                      "--num_processes and --process_id; a single process needs none of "
                      "this.") from e


def sync_processes(name: str) -> None:
  """A barrier across processes (a no-op in a single-process run)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def broadcast_from_main(value: bool) -> bool:
  """Process 0's `value` on every process (itself in a single-process run): one decision where
  processes could see a shared filesystem differently."""
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(value)))


def make_mesh(devices: list | None = None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh, leading_axes: int = 0) -> NamedSharding:
  """The batch dimension split across the `data` axis: the first, or the one after
  `leading_axes` whole ones (members [P, B, ...], a streamed chunk of steps [k, P, B, ...])."""
  return NamedSharding(mesh, P(*[None] * leading_axes, DATA_AXIS))


def put_replicated(host_array: np.ndarray, mesh: Mesh) -> jax.Array:
  """Places a host array whole on every device of the mesh (works across processes too).

  Every process holds the same host array (MNIST is 47 MB) and fills its own devices; batches are
  then gathered on device, each device taking its slice of the global batch.
  """
  return jax.make_array_from_callback(host_array.shape, replicated(mesh),
                                      lambda index: host_array[index])


def check_batch_divides(batch_size: int, mesh: Mesh, field: str) -> None:
  if batch_size % mesh.size:
    raise ConfigError(f"{field}={batch_size} must be divisible by the number of devices "
                      f"({mesh.size}); per-device batch = {field} / devices.")


def eval_batch_size(configured: int, mesh: Mesh) -> int:
  """The evaluation batch: `configured` rounded up to a multiple of the device count.

  Evaluation pads and masks, so any batch scores every example exactly once; rounding up lets a
  run's eval_batch_size=1000 evaluate on 3 devices instead of being refused.
  """
  return -(-configured // mesh.size) * mesh.size


def map_members(fn: Callable[[Any], Any], stacked: Any, member_batch: int | None,
                unroll: bool = False) -> Any:
  """`fn` over the leading (member) axis of `stacked`: `member_batch` members vmapped at a time.

  With member_batch <= 1 each member runs unbatched, exactly the computation of a single run;
  otherwise groups of that size are vmapped. The groups run in a loop (jax.lax.map), or with
  `unroll` one after another in the program: XLA:CPU runs convolutions far slower inside a loop.
  """
  batch_size = member_batch if member_batch and member_batch > 1 else None
  if not unroll:
    return jax.lax.map(fn, stacked, batch_size=batch_size)
  size = jax.tree.leaves(stacked)[0].shape[0]
  group = batch_size or 1
  outputs = []
  for start in range(0, size, group):
    part = jax.tree.map(lambda leaf: leaf[start:start + group], stacked)
    if group == 1:  # Unbatched, as lax.map runs it: no size-1 batch axis in the products.
      outputs.append(jax.tree.map(lambda leaf: leaf[None], fn(jax.tree.map(lambda leaf: leaf[0],
                                                                            part))))
    else:
      outputs.append(jax.vmap(fn)(part))
  return jax.tree.map(lambda *leaves: jax.numpy.concatenate(leaves), *outputs)
