"""Scoring members and their ensemble on an evaluation split: the trainer's and evaluate's scorer.

`make_evaluator` wraps the compiled `evaluate` and returns host numbers: per member and for
the ensemble (the average of the members' probabilities, or their geometric mean). For a single
model the member and the ensemble are the same model.
"""

from __future__ import annotations

import functools
import statistics
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kd_jax import data, inputs, losses, parallelism, steps, targets


def _figures(totals: dict[str, Any], num_examples: int) -> dict[str, Any]:
  errors = int(totals["errors"])
  figures = {"errors": errors, "accuracy": 1.0 - errors / num_examples,
             "loss": float(totals["loss_sum"]) / num_examples,
             "per_class_errors": [int(e) for e in totals["per_class_errors"]]}
  if "teacher_agreements" in totals:  # A distilled run's test split: its fit to the teacher.
    figures["teacher_agreement"] = int(totals["teacher_agreements"]) / num_examples
    figures["teacher_kl"] = float(totals["teacher_kl_sum"]) / num_examples
  return figures


def make_evaluator(model, batch_size: int, mesh: jax.sharding.Mesh, member_batch: int,
                   ensemble: str = "arithmetic", label_maps: jax.Array | None = None):
  """A jitted (stacked variables, split) -> {'members': [figures...], 'ensemble': figures}; the
  split on device (`inputs.DeviceSplit`) or streamed (`kd_jax.data.streaming.StreamedSplit`).

  Figures are host numbers: errors, accuracy, loss, per_class_errors. With `label_maps`
  (specialists, see `evaluate`) each member is scored on its own classes and 'ensemble' is
  None.
  """
  evaluate_fn = jax.jit(functools.partial(
      evaluate, model=model, batch_size=batch_size, member_batch=member_batch,
      batch_sharding=parallelism.batch_sharded(mesh), ensemble=ensemble))

  def run(member_variables: Any, split: Any) -> dict[str, Any]:
    if isinstance(split, inputs.DeviceSplit):
      totals = evaluate_fn(member_variables, split.images, split.labels, split.mask, label_maps,
                           split.teacher_log_probs)
    else:  # A streaming.StreamedSplit: batch by batch, the totals added up on the device.
      from kd_jax.data import streaming  # pylint: disable=g-import-not-at-top  # grain: only here.
      totals = None
      for batch in streaming.eval_batches(split):
        batch = streaming.put_batch(batch, mesh)
        counts = evaluate_fn(member_variables, batch["image"], batch["label"], batch["mask"],
                             label_maps)
        totals = counts if totals is None else jax.tree.map(jnp.add, totals, counts)
    totals = jax.device_get(totals)
    num_members = len(totals["members"]["errors"])
    return {"members": [_figures(steps.take_member(totals["members"], i), split.num_examples)
                        for i in range(num_members)],
            "ensemble": (_figures(totals["ensemble"], split.num_examples)
                         if "ensemble" in totals else None)}

  return run


def errors_summary(result: dict[str, Any]) -> str:
  """'12 test errors' for one model; 'best 10 / mean 12.3 / ensemble 9' for a population."""
  errors = [m["errors"] for m in result["members"]]
  if len(errors) == 1:
    return f"{errors[0]}"
  ensemble = f" / ensemble {result['ensemble']['errors']}" if result["ensemble"] else ""
  return f"best {min(errors)} / mean {statistics.mean(errors):.1f}{ensemble}"


def headline(result: dict[str, Any]) -> dict[str, Any]:
  """The figures a run is summed up by: its ensemble's, else (one model, or specialists, which
  have no ensemble) member 0's."""
  return result["ensemble"] if len(result["members"]) > 1 and result["ensemble"] else (
      result["members"][0])


def fit_to_teacher(student_logits: jax.Array, teacher_logits: jax.Array,
                   ensemble: str = "arithmetic") -> dict[str, np.ndarray]:
  """How closely each student member fits its teacher on the same images: `agreement`, the
  fraction where their top classes match, and `kl`, the mean KL(teacher || student) at T = 1.

  student_logits [N, P, C]; teacher_logits [N, M, C] (the teacher's ensemble of M). Measured on
  the transfer set, it tells a student that cannot fit its teacher (low agreement, high KL) from
  one that fits it but learnt too little from the transfer set (high agreement, yet test errors
  above the teacher's).
  """
  teacher = losses.ensemble_log_probabilities(teacher_logits, mean=ensemble)
  mask = jnp.ones(teacher.shape[0], bool)
  counts = jax.vmap(fit_counts, in_axes=(1, None, None))(
      jax.nn.log_softmax(student_logits), teacher, mask)  # The counts each evaluation sums.
  return {"agreement": np.asarray(counts["teacher_agreements"]) / teacher.shape[0],
          "kl": np.asarray(counts["teacher_kl_sum"]) / teacher.shape[0]}


def eval_counts(log_probs: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
  """Sums (not means) over the real examples of a padded batch, so totals add up exactly."""
  nll = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
  wrong = (jnp.argmax(log_probs, -1) != labels) & mask
  per_class = jnp.zeros(log_probs.shape[-1], jnp.int32).at[labels].add(wrong.astype(jnp.int32))
  return {"loss_sum": jnp.sum(jnp.where(mask, nll, 0.0)), "errors": jnp.sum(wrong),
          "per_class_errors": per_class}


def evaluate(member_variables: Any, images: jax.Array, labels: jax.Array, mask: jax.Array,
             label_maps: jax.Array | None = None, teacher_log_probs: jax.Array | None = None,
             *, model: nn.Module, batch_size: int,
             member_batch: int, batch_sharding: jax.sharding.Sharding,
             ensemble: str = "arithmetic") -> dict[str, dict[str, jax.Array]]:
  """Totals of `eval_counts` over a split padded to a multiple of `batch_size`.

  `member_variables` are stacked [P, ...] ({'params': ..., and any other collections}); returns {'members': totals with a leading [P] axis,
  'ensemble': totals of the members' averaged probabilities}. With `label_maps` [P, C] (members
  that predict classes of their own, e.g. specialists) member p is scored on label_maps[p][labels]
  and there is no ensemble. With `teacher_log_probs` [N, C] (a teacher's, at T = 1) each member
  also counts its top-class agreements with the teacher and sums KL(teacher || member).
  """
  num_batches = images.shape[0] // batch_size
  fit = teacher_log_probs is not None

  def body(totals, inputs):
    batch_images, batch_labels, batch_mask, *batch_teacher = [
        jax.lax.with_sharding_constraint(x, batch_sharding) for x in inputs]
    logits = targets.member_logits(model, member_variables, data.normalize(batch_images),
                                   member_batch)
    if label_maps is not None:
      counts = {"members": jax.vmap(eval_counts, in_axes=(1, 0, None))(
          jax.nn.log_softmax(logits), label_maps[:, batch_labels], batch_mask)}
    else:
      counts = {
          "members": jax.vmap(eval_counts, in_axes=(1, None, None))(
              jax.nn.log_softmax(logits), batch_labels, batch_mask),
          "ensemble": eval_counts(losses.ensemble_log_probabilities(logits, mean=ensemble),
                                  batch_labels, batch_mask)}
    if fit:
      counts["members"].update(jax.vmap(fit_counts, in_axes=(1, None, None))(
          jax.nn.log_softmax(logits), batch_teacher[0], batch_mask))
    return jax.tree.map(jnp.add, totals, counts), None

  split = lambda x: x.reshape((num_batches, batch_size) + x.shape[1:])
  num_members = jax.tree.leaves(member_variables)[0].shape[0]
  num_classes = jax.eval_shape(lambda v, x: targets.member_logits(model, v, x, member_batch),
                               member_variables, images[:1].astype(jnp.float32)).shape[-1]
  zeros = {"loss_sum": jnp.zeros((), jnp.float32), "errors": jnp.zeros((), jnp.int32),
           "per_class_errors": jnp.zeros(num_classes, jnp.int32)}
  member_zeros = {**zeros, **({"teacher_agreements": jnp.zeros((), jnp.int32),
                                 "teacher_kl_sum": jnp.zeros((), jnp.float32)} if fit else {})}
  zeros = {"members": jax.tree.map(lambda z: jnp.zeros((num_members,) + z.shape, z.dtype),
                                   member_zeros),
           **({"ensemble": zeros} if label_maps is None else {})}
  totals, _ = jax.lax.scan(body, zeros, (split(images), split(labels), split(mask),
                                         *([split(teacher_log_probs)] if fit else [])))
  return totals


def fit_counts(log_probs: jax.Array, teacher_log_probs: jax.Array,
               mask: jax.Array) -> dict[str, jax.Array]:
  """A member's top-class agreements with its teacher and summed KL(teacher || member) over the
  real examples of a padded batch."""
  agree = (jnp.argmax(log_probs, -1) == jnp.argmax(teacher_log_probs, -1)) & mask
  kl = jnp.sum(jnp.exp(teacher_log_probs) * (teacher_log_probs - log_probs), -1)
  return {"teacher_agreements": jnp.sum(agree.astype(jnp.int32)),
          "teacher_kl_sum": jnp.sum(jnp.where(mask, kl, 0.0))}
