"""Scoring members and their ensemble on an evaluation split, and the evaluate command's work.

`make_evaluator` wraps the compiled `steps.evaluate` and returns host numbers: per member and for
the ensemble (the average of the members' probabilities, or their geometric mean). For a single
model the member and the ensemble are the same model.
"""

from __future__ import annotations

import functools
import json
import pathlib
import statistics
from typing import Any

import flax.struct
import jax
import numpy as np

from kd_jax import checkpointing, config_lib, data, models, parallelism, reporting, steps
from kd_jax.errors import CheckpointError


class DeviceSplit(flax.struct.PyTreeNode):
  """An evaluation split on device, padded, with a mask of its real examples."""

  images: jax.Array
  labels: jax.Array
  mask: jax.Array
  num_examples: int = flax.struct.field(pytree_node=False)


def put_eval_split(images: np.ndarray, labels: np.ndarray, batch_size: int,
                   mesh: jax.sharding.Mesh) -> DeviceSplit:
  padded = data.pad_for_eval(images, labels, batch_size)
  return DeviceSplit(*(parallelism.put_replicated(x, mesh) for x in padded),
                     num_examples=len(images))


def _figures(totals: dict[str, Any], num_examples: int) -> dict[str, Any]:
  errors = int(totals["errors"])
  return {"errors": errors, "accuracy": 1.0 - errors / num_examples,
          "loss": float(totals["loss_sum"]) / num_examples,
          "per_class_errors": [int(e) for e in totals["per_class_errors"]]}


def make_evaluator(model, batch_size: int, mesh: jax.sharding.Mesh, member_batch: int,
                   ensemble: str = "arithmetic"):
  """A jitted (stacked params, split) -> {'members': [figures...], 'ensemble': figures}.

  Figures are host numbers: errors, accuracy, loss, per_class_errors.
  """
  evaluate_fn = jax.jit(functools.partial(
      steps.evaluate, model=model, batch_size=batch_size, member_batch=member_batch,
      batch_sharding=parallelism.batch_sharded(mesh), ensemble=ensemble))

  def run(member_params: Any, split: DeviceSplit) -> dict[str, Any]:
    totals = jax.device_get(evaluate_fn(member_params, split.images, split.labels, split.mask))
    num_members = len(totals["members"]["errors"])
    return {"members": [_figures(steps.take_member(totals["members"], i), split.num_examples)
                        for i in range(num_members)],
            "ensemble": _figures(totals["ensemble"], split.num_examples)}

  return run


def errors_summary(result: dict[str, Any]) -> str:
  """'12 test errors' for one model; 'best 10 / mean 12.3 / ensemble 9' for a population."""
  errors = [m["errors"] for m in result["members"]]
  if len(errors) == 1:
    return f"{errors[0]}"
  return (f"best {min(errors)} / mean {statistics.mean(errors):.1f} / ensemble "
          f"{result['ensemble']['errors']}")


def _test_report(figures: dict[str, Any]) -> dict[str, Any]:
  return {"test_errors": figures["errors"], "test_accuracy": figures["accuracy"],
          "test_loss": figures["loss"], "per_class_errors": figures["per_class_errors"]}


def evaluate_checkpoint(workdir: str | pathlib.Path, step: int | None = None,
                        mnist_dir: str | None = None,
                        ensemble: str = "arithmetic",
                        report_name: str = "eval.json") -> dict[str, Any]:
  """Scores a checkpoint on the test set; writes and returns RUN/eval.json's content (or
  RUN/`report_name`'s).

  For a population, eval.json also holds `members` (one dict per member) and `ensemble`; its
  top-level test figures are then the ensemble's. For a single model they are the model's.
  """
  mesh = parallelism.make_mesh()
  params, run_config, step = checkpointing.restore_params(workdir, mesh, step)
  batch_size = parallelism.eval_batch_size(run_config.eval_batch_size, mesh)
  splits = data.load_mnist_from_config(run_config.data, mnist_dir)
  fingerprint = data.fingerprint(splits)
  trained_on = _read_record(workdir, checkpointing.DATA_FILE)
  if trained_on and trained_on.get("test") != fingerprint["test"]:
    reporting.say(f"Warning: the test set ({fingerprint['source']}, {fingerprint['test']}) differs "
                  f"from the one {workdir} was trained with ({trained_on.get('source')}, "
                  f"{trained_on.get('test')}).")
  test = put_eval_split(splits.test_images, splits.test_labels, batch_size, mesh)
  settings = config_lib.population_members(run_config)
  num_members = len(settings)
  evaluator = make_evaluator(
      models.model_from_config(run_config.model), batch_size, mesh,
      parallelism.member_batch(run_config.get("member_batch", 0), num_members), ensemble)
  result = evaluator(params, test)
  report = {**_test_report(result["ensemble"] if num_members > 1 else result["members"][0]),
            "num_test_examples": test.num_examples, "step": step,
            "model": models.describe(run_config.model),
            "distilled_from": run_config.get("teacher_workdir") or None,
            "data_source": splits.source, "num_devices": mesh.size,
            "data": {"source": fingerprint["source"], "test": fingerprint["test"],
                     "same_as_training": (trained_on.get("test") == fingerprint["test"]
                                          if trained_on else None)},
            "teacher": _read_record(workdir, checkpointing.TEACHER_FILE)}
  if num_members > 1:
    report.update(num_members=num_members, ensemble_mean=ensemble,
                  members=[{**setting, **_test_report(figures)}
                           for setting, figures in zip(settings, result["members"])],
                  ensemble=_test_report(result["ensemble"]))
  reporting.say(f"{workdir} (step {step}, {report['model']}"
                f"{f', {num_members} members' if num_members > 1 else ''}): "
                f"{errors_summary(result)} test errors, accuracy "
                f"{100 * report['test_accuracy']:.2f}%, loss {report['test_loss']:.4f}; "
                f"per class {report['per_class_errors']}.")
  try:  # The score is shown first: a read-only run directory does not lose it.
    reporting.write_json(pathlib.Path(workdir) / report_name, report)
  except OSError as e:
    raise CheckpointError(f"could not write {pathlib.Path(workdir) / report_name} "
                          f"({e.strerror or e}); the score is printed above.") from e
  return report


def _read_record(workdir: str | pathlib.Path, name: str) -> dict[str, Any] | None:
  """A run's data.json or teacher.json, or None for runs from before those records."""
  path = pathlib.Path(workdir) / name
  return json.loads(path.read_text()) if path.exists() else None
