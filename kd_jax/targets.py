"""Targets functions: what the train step distils towards, `targets_fn(teacher_variables, batch)`.

  no_targets                  hard-label training (the loss reads only the labels)
  make_teacher_targets(...)   teachers run inside the step, in eval mode, on the batch as the
                              student sees it (jittered or not)
  cached_targets              logits computed once per run by `teacher_logits` and gathered with
                              the batch (valid only when the transfer set is not jittered)

Teacher outputs are logits [B, M, C] for M teachers (a population teacher is an ensemble; a single
teacher has M = 1), always under stop_gradient. The losses turn them into soft targets.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from kd_jax import data, parallelism

TargetsFn = Callable[[Any, dict], Any]


def no_targets(teacher_variables: Any, batch: dict) -> None:
  del teacher_variables, batch
  return None


def member_logits(model: nn.Module, member_variables: Any, images: jax.Array,
                  member_batch: int | None = None) -> jax.Array:
  """Eval-mode logits [B, M, C] of M stacked variable sets ({'params': ..., and e.g.
  'batch_stats', each [M, ...]}) on normalised images [B, H, W]."""
  apply = lambda variables: model.apply(variables, images, train=False)
  return jnp.moveaxis(parallelism.map_members(apply, member_variables, member_batch), 0, 1)


def make_teacher_targets(teacher: nn.Module, member_batch: int | None = None) -> TargetsFn:
  """Targets from stacked teacher variables, computed on each batch inside the step."""

  def targets_fn(teacher_variables, batch):
    return jax.lax.stop_gradient(member_logits(teacher, teacher_variables, batch["image"],
                                               member_batch))

  return targets_fn


def cached_targets(teacher_variables: Any, batch: dict) -> jax.Array:
  """Teacher logits gathered with the batch from the run's cache (see `teacher_logits`)."""
  del teacher_variables
  return jax.lax.stop_gradient(batch["teacher_logits"])


def teacher_logits(teacher_variables: Any, images: jax.Array, *, teacher: nn.Module,
                   batch_size: int, member_batch: int | None,
                   batch_sharding: jax.sharding.Sharding) -> jax.Array:
  """Logits [N, M, C] of every teacher on images [N, H, W] (uint8, or floats in [0, 1]; N a
  multiple of batch_size).

  Computed once per run when the transfer set is not jittered: a teacher's output on a fixed image
  never changes, so the step can gather it instead of running the teacher again every epoch.
  """
  batches = images.reshape((-1, batch_size) + images.shape[1:])

  def body(_, batch_images):
    batch_images = jax.lax.with_sharding_constraint(batch_images, batch_sharding)
    return None, member_logits(teacher, teacher_variables, data.normalize(batch_images),
                               member_batch)

  _, logits = jax.lax.scan(body, None, batches)
  return logits.reshape((-1,) + logits.shape[2:])
