"""Scoring members and their ensemble on an evaluation split: the trainer's and evaluate's scorer.

`make_evaluator` wraps the compiled `steps.evaluate` and returns host numbers: per member and for
the ensemble (the average of the members' probabilities, or their geometric mean). For a single
model the member and the ensemble are the same model.
"""

from __future__ import annotations

import functools
import statistics
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kd_jax import inputs, losses, parallelism, steps


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
  (specialists, see `steps.evaluate`) each member is scored on its own classes and 'ensemble' is
  None.
  """
  evaluate_fn = jax.jit(functools.partial(
      steps.evaluate, model=model, batch_size=batch_size, member_batch=member_batch,
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
  counts = jax.vmap(steps.fit_counts, in_axes=(1, None, None))(
      jax.nn.log_softmax(student_logits), teacher, mask)  # The counts each evaluation sums.
  return {"agreement": np.asarray(counts["teacher_agreements"]) / teacher.shape[0],
          "kl": np.asarray(counts["teacher_kl_sum"]) / teacher.shape[0]}
