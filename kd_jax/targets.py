"""Targets functions: what the train step distils towards, `targets_fn(teacher_variables, batch)`.

  no_targets                  hard-label training (the loss reads only the labels)
  make_teacher_targets(...)   teachers run inside the step, in eval mode, on the batch as the
                              student sees it (jittered or not)
  cached_targets              logits computed once per run by `teacher_logits` and gathered with
                              the batch (valid only when the transfer set is not jittered)
  given_targets               targets computed before the step, once for a population sharing
                              the batch (`steps.shared_step`), passed in place of the variables

Teacher outputs are logits [B, M, C] for M teachers (a population teacher is an ensemble; a single
teacher has M = 1), always under stop_gradient. The losses turn them into soft targets.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from kd_jax import data, features, parallelism

TargetsFn = Callable[[Any, dict], Any]


def no_targets(teacher_variables: Any, batch: dict) -> None:
  del teacher_variables, batch
  return None


def member_logits(model: nn.Module, member_variables: Any, images: jax.Array,
                  member_batch: int | None = None, dropout_key: jax.Array | None = None
                  ) -> jax.Array:
  """Eval-mode logits [B, M, C] of M stacked variable sets ({'params': ..., and e.g.
  'batch_stats', each [M, ...]}) on normalised images [B, H, W]; with `dropout_key`, train-mode
  logits under the dropout masks that key draws (the same key for every member)."""
  if dropout_key is None:
    apply = lambda variables: model.apply(variables, images, train=False)
  else:
    apply = lambda variables: model.apply(variables, images, train=True,
                                          rngs={"dropout": dropout_key})
  return jnp.moveaxis(parallelism.map_members(apply, member_variables, member_batch), 0, 1)


def make_teacher_targets(teacher: nn.Module, member_batch: int | None = None,
                         feature_paths: tuple[str, ...] = ()) -> TargetsFn:
  """Targets from stacked teacher variables, computed on each batch inside the step (on the
  batch's `teacher_image`, a view of its own, where it has one): logits [B, M, C], or with
  `feature_paths` {'logits': those, 'features': {path: [B, M, ...]}}."""

  def targets_fn(teacher_variables, batch):
    images = batch.get("teacher_image", batch["image"])  # Its own view, when it has one.
    if not feature_paths:
      return jax.lax.stop_gradient(member_logits(teacher, teacher_variables, images,
                                                 member_batch))
    apply = lambda variables: features.apply(teacher, variables, images, feature_paths,
                                             train=False)[:2]
    logits, member_features = parallelism.map_members(apply, teacher_variables, member_batch)
    first_to_second = lambda x: jnp.moveaxis(x, 0, 1)
    return jax.lax.stop_gradient({"logits": first_to_second(logits),
                                  "features": jax.tree.map(first_to_second, member_features)})

  return targets_fn


def given_targets(batch_targets: Any, batch: dict) -> Any:
  """The targets the step was given (in its teacher-variables argument), computed before it."""
  del batch
  return batch_targets


def cached_targets(teacher_variables: Any, batch: dict) -> jax.Array:
  """Teacher logits gathered with the batch from the run's cache (see `teacher_logits`)."""
  del teacher_variables
  return jax.lax.stop_gradient(batch["teacher_logits"])


def teacher_logits(teacher_variables: Any, images: jax.Array, *, teacher: nn.Module,
                   batch_size: int, member_batch: int | None,
                   batch_sharding: jax.sharding.Sharding, dropout_masks: int = 0,
                   dropout_seed: int = 0) -> jax.Array:
  """Logits [N, M, C] of every teacher on images [N, H, W] (uint8, or floats in [0, 1]; N a
  multiple of batch_size).

  Computed once per run when the transfer set is not jittered: a teacher's output on a fixed image
  never changes, so the step can gather it instead of running the teacher again every epoch.

  With `dropout_masks` K > 0 each teacher runs in train mode under K dropout masks per image,
  giving [N, M * K, C]: K members per teacher, whose tempered probabilities the loss averages like
  an ensemble's (the paper's remark that dropout trains an ensemble of weight-sharing models). The
  masks are drawn from `dropout_seed` folded with the batch's index, so they are the same for every
  run with the same batch size (the eval batch, rounded to the device count).
  """
  batches = images.reshape((-1, batch_size) + images.shape[1:])
  mask_keys = jax.random.split(jax.random.key(dropout_seed), max(dropout_masks, 1))

  def body(index, batch_images):
    batch_images = data.normalize(jax.lax.with_sharding_constraint(batch_images, batch_sharding))
    if not dropout_masks:
      return index + 1, member_logits(teacher, teacher_variables, batch_images, member_batch)
    per_mask = jax.lax.map(lambda key: member_logits(
        teacher, teacher_variables, batch_images, member_batch, jax.random.fold_in(key, index)),
                           mask_keys)  # [K, B, M, C]
    per_mask = jnp.moveaxis(per_mask, 0, 2)  # [B, M, K, C]
    return index + 1, per_mask.reshape(per_mask.shape[:1] + (-1,) + per_mask.shape[3:])

  _, logits = jax.lax.scan(body, jnp.zeros((), jnp.uint32), batches)
  return logits.reshape((-1,) + logits.shape[2:])
