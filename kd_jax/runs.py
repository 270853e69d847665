"""A trained run opened from its directory: its config, model and variables, and its logits.

The one way kd_jax opens a run: the API's `load`, the evaluate command, export, a student's
teacher, the fit to that teacher and the paper's studies all call `Run.open`, which restores the
variables (checksummed) on this process's devices whatever layout wrote them and rebuilds the
model from the run's config (or takes a module the config cannot rebuild).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from kd_jax import checkpointing, models, parallelism, population, targets


@dataclasses.dataclass(frozen=True)
class Run:
  """A trained run: its directory, config, model and variables on this process's devices.

  `variables` holds every collection of the model ({'params': ..., and e.g. 'batch_stats'}), each
  leaf stacked on a leading member axis (M = 1 for one model).
  """

  workdir: pathlib.Path
  config: ml_collections.ConfigDict
  model: nn.Module
  variables: dict[str, Any]
  step: int

  @classmethod
  def open(cls, workdir: str | os.PathLike, *, mesh: jax.sharding.Mesh | None = None,
           step: int | None = None, members: tuple[int, ...] | None = None,
           model: nn.Module | None = None, **fields: Any) -> Run:
    """The run in `workdir` (its latest checkpoint, or `step`; all members, or `members`), with
    `model` standing in for a module its config cannot rebuild; `fields` are a subclass's own."""
    variables, config, step = checkpointing.restore_variables(
        workdir, mesh or parallelism.make_mesh(), step, members=members, model=model)
    model = models.model_from_config(config.model) if model is None else model
    return cls(workdir=pathlib.Path(workdir), config=config, model=model, variables=variables,
               step=step, **fields)

  def describe(self) -> str:
    """The model in a few words ('MLP 784-1200-1200-10, ...')."""
    return models.describe(self.config.model)

  @property
  def num_members(self) -> int:
    return jax.tree.leaves(self.variables)[0].shape[0]

  @property
  def member_batch(self) -> int:
    """Members vmapped together when this run computes logits (its config's choice)."""
    return population.member_batch(self.config.get("member_batch", 0), self.num_members)

  def logits(self, images: Any, mesh: jax.sharding.Mesh | None = None, *,
             dropout_masks: int = 0, dropout_seed: int = 0) -> jax.Array:
    """Eval-mode logits [N, M, C] of every member on images [N, ...] (see `logits_of`)."""
    mesh = mesh or parallelism.make_mesh()
    return logits_of(self.model, self.variables, jnp.asarray(images),
                     parallelism.eval_batch_size(self.config.eval_batch_size, mesh), mesh,
                     self.member_batch, dropout_masks, dropout_seed)


def logits_of(model: nn.Module, variables: Any, images: jax.Array, batch_size: int,
              mesh: jax.sharding.Mesh, member_batch: int | None, dropout_masks: int = 0,
              dropout_seed: int = 0) -> jax.Array:
  """Eval-mode logits [N, M, C] of M stacked variable sets on images [N, ...] (uint8, or floats
  in [0, 1]), any N (padded to whole batches, sharded over the mesh, one compiled scan); with
  `dropout_masks` K > 0, train-mode logits under K dropout masks, [N, M * K, C]
  (`targets.teacher_logits`)."""
  num_pad = -images.shape[0] % batch_size
  padded = jnp.pad(images, ((0, num_pad),) + ((0, 0),) * (images.ndim - 1))
  return logits_fn(model, batch_size, mesh, member_batch, dropout_masks, dropout_seed)(
      variables, padded)[:images.shape[0]]


@functools.lru_cache(maxsize=16)
def logits_fn(model: nn.Module, batch_size: int, mesh: jax.sharding.Mesh,
              member_batch: int | None, dropout_masks: int, dropout_seed: int):
  """`logits_of`'s jitted scan, one per (model, batch size, mesh, member batch, masks), so that
  calls with the same ones and image shape (a distilled run caching its teacher's logits, then
  measuring its fit to that teacher; the cells of a study) compile once."""
  return jax.jit(functools.partial(
      targets.teacher_logits, teacher=model, batch_size=batch_size, member_batch=member_batch,
      batch_sharding=parallelism.batch_sharded(mesh), dropout_masks=dropout_masks,
      dropout_seed=dropout_seed), out_shardings=parallelism.replicated(mesh))
