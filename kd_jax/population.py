"""A run's population: its members, their hyperparameters for the step, and their fresh state.

A run is `members` seeds (seed, seed + 1, ...) for each point of the grid spanned by the
non-empty tuples of `sweep` (temperature, alpha, learning_rate); a run's extension may change the
members (the paper's specialists: one per class subset). This module is their one owner: which
members there are (`members`, also written as RUN/population.json), the per-member arrays the
compiled step reads (`Population.hparams`), how many run vmapped together (`member_batch`), and
each member's initial state from its own seed.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from kd_jax import config_fields, config_lib, extensions, parallelism, steps

Member = dict[str, Any]  # {index, seed, learning_rate[, temperature, alpha], ...}


def hparam_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The per-member hyperparameters of a run: the learning rate; T and alpha to distil, and the
  numbers of its active loss terms ('terms.dkd.beta', ...)."""
  if not config_fields.is_distillation(config):
    return ("learning_rate",)
  return config_fields.SWEEPABLE + config_lib.term_hparam_names(config)


def members(config: ml_collections.ConfigDict) -> list[Member]:
  """The members of the run, in order: every sweep point (temperature, alpha, learning_rate, in
  that nesting) times `members` seeds; the run's extension may add members or settings. Reads
  saved configs of older runs too (no `members` or `sweep`: one member)."""
  return _members(config, extensions.of(config))


def _members(config: ml_collections.ConfigDict,
             extension: extensions.Extension | None) -> list[Member]:
  names = hparam_names(config)
  sweep = config.get("sweep") or {}
  grids = [tuple(config_lib.get_path(sweep, name) or ()) or (config_lib.get_path(config, name),)
           for name in names]
  listed = []
  for point in itertools.product(*grids):
    for offset in range(config.get("members", 1)):
      listed.append({"index": len(listed), "seed": config.seed + offset,
                     **{name: float(value) for name, value in zip(names, point)}})
  return extension.members(config, listed) if extension else listed


def member_batch(configured: int, num_members: int) -> int:
  """How many population members to vmap together: `configured`, else (0, auto) as follows.

  On CPU one at a time: XLA:CPU runs a vmapped population slower per model than the same members
  in turn (batched matmuls, a working set that leaves the cache). Accelerators are mostly idle on
  one MLP step, so there all members run vmapped together.
  """
  if configured:
    return configured
  return 1 if jax.default_backend() == "cpu" else num_members


@dataclasses.dataclass(frozen=True)
class Population:
  """The members of one run and what the compiled step needs of them."""

  members: list[Member]
  member_batch: int  # Members vmapped together (`member_batch`).
  hparams: dict[str, jax.Array]  # f32[P] per hyperparameter, and an extension's [P, ...] arrays.

  @property
  def size(self) -> int:
    return len(self.members)

  @property
  def seeds(self) -> list[int]:
    return [m["seed"] for m in self.members]


def of(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
       extension: extensions.Extension | None) -> Population:
  """The config's population, its hyperparameters replicated on `mesh`."""
  listed = _members(config, extension)
  hparams = {name: jnp.asarray([m[name] for m in listed], jnp.float32)
             for name in hparam_names(config) if name in listed[0]}
  if extension:
    hparams.update({name: jnp.asarray(v) for name, v in extension.hparams(config, listed).items()})
  return Population(members=listed,
                    member_batch=member_batch(config.member_batch, len(listed)),
                    hparams=jax.device_put(hparams, parallelism.replicated(mesh)))


def init_state(model: nn.Module, tx, seeds: list[int], mesh: jax.sharding.Mesh,
               input_shape: tuple[int, ...],
               adapter_shapes: dict[str, tuple[int, int]] | None = None) -> steps.TrainState:
  """Each member's initial state from its own seed (as its single run would), stacked."""
  replicated = parallelism.replicated(mesh)
  create = jax.jit(functools.partial(steps.create_train_state, model=model, tx=tx,
                                     input_shape=input_shape, adapter_shapes=adapter_shapes),
                   out_shardings=replicated)
  state = steps.stack_members([create(jax.random.PRNGKey(seed)) for seed in seeds])
  return jax.device_put(state, replicated)
