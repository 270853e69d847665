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
import jax.numpy as jnp
import numpy as np

from kd_jax import (checkpointing, config_lib, data, extensions, losses, models, parallelism,
                    reporting, steps, targets)
from kd_jax.errors import CheckpointError, ConfigError


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


def logits_of(model, variables: Any, images: jax.Array, batch_size: int, mesh: jax.sharding.Mesh,
              member_batch: int | None, dropout_masks: int = 0,
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
def logits_fn(model, batch_size: int, mesh: jax.sharding.Mesh, member_batch: int | None,
              dropout_masks: int, dropout_seed: int):
  """`logits_of`'s jitted scan, one per (model, batch size, mesh, member batch, masks), so that
  calls with the same ones and image shape (a distilled run caching its teacher's logits, then
  measuring its fit to that teacher; the cells of a study) compile once."""
  return jax.jit(functools.partial(
      targets.teacher_logits, teacher=model, batch_size=batch_size, member_batch=member_batch,
      batch_sharding=parallelism.batch_sharded(mesh), dropout_masks=dropout_masks,
      dropout_seed=dropout_seed), out_shardings=parallelism.replicated(mesh))


def logits_on(workdir: str | pathlib.Path, images: np.ndarray,
              mesh: jax.sharding.Mesh) -> np.ndarray:
  """Logits [N, M, C] of every member of the run in `workdir` (latest checkpoint) on `images`."""
  variables, run_config, _ = checkpointing.restore_variables(workdir, mesh)
  num_members = jax.tree.leaves(variables)[0].shape[0]
  return np.array(logits_of(
      models.model_from_config(run_config.model), variables, jnp.asarray(images),
      parallelism.eval_batch_size(run_config.eval_batch_size, mesh), mesh,
      parallelism.member_batch(run_config.get("member_batch", 0), num_members)))


def _figures(totals: dict[str, Any], num_examples: int) -> dict[str, Any]:
  errors = int(totals["errors"])
  return {"errors": errors, "accuracy": 1.0 - errors / num_examples,
          "loss": float(totals["loss_sum"]) / num_examples,
          "per_class_errors": [int(e) for e in totals["per_class_errors"]]}


def make_evaluator(model, batch_size: int, mesh: jax.sharding.Mesh, member_batch: int,
                   ensemble: str = "arithmetic", label_maps: jax.Array | None = None):
  """A jitted (stacked variables, split) -> {'members': [figures...], 'ensemble': figures}; the
  split on device (`DeviceSplit`) or streamed (`kd_jax.data.streaming.StreamedSplit`).

  Figures are host numbers: errors, accuracy, loss, per_class_errors. With `label_maps`
  (specialists, see `steps.evaluate`) each member is scored on its own classes and 'ensemble' is
  None.
  """
  evaluate_fn = jax.jit(functools.partial(
      steps.evaluate, model=model, batch_size=batch_size, member_batch=member_batch,
      batch_sharding=parallelism.batch_sharded(mesh), ensemble=ensemble))

  def run(member_variables: Any, split: Any) -> dict[str, Any]:
    if isinstance(split, DeviceSplit):
      totals = evaluate_fn(member_variables, split.images, split.labels, split.mask, label_maps)
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
  student = jax.nn.log_softmax(student_logits)
  agreement = jnp.mean(jnp.argmax(student, -1) == jnp.argmax(teacher, -1)[:, None], axis=0)
  kl = jnp.mean(jnp.sum(jnp.exp(teacher)[:, None] * (teacher[:, None] - student), -1), axis=0)
  return {"agreement": np.asarray(agreement), "kl": np.asarray(kl)}


def _transfer_fit(run_config, model, variables: Any, splits: data.Splits,
                  mesh: jax.sharding.Mesh, num_members: int,
                  teacher_model=None) -> dict[str, Any] | None:
  """`fit_to_teacher` of a distilled run on its (un-jittered) transfer set and on the test set:
  fitting the teacher on the first but not the second is a transfer set that covers too little.
  None, with a warning, when its teacher can no longer be read."""
  try:
    teacher_variables, teacher_config, _ = checkpointing.restore_variables(
        run_config.teacher_workdir, mesh, members=tuple(run_config.teacher_members) or None,
        model=teacher_model)
  except (CheckpointError, ConfigError) as e:  # Gone, or a module to pass as teacher_model.
    reporting.say(f"Warning: no fit to the teacher measured: {e}")
    return None
  batch_size = parallelism.eval_batch_size(run_config.eval_batch_size, mesh)
  member_batch = parallelism.member_batch(run_config.get("member_batch", 0), num_members)
  if teacher_model is None:
    teacher_model = models.model_from_config(teacher_config.model)
  report = {"num_train_examples": len(splits.train_images)}
  for split, images in (("train", splits.train_images), ("test", splits.test_images)):
    images = jnp.asarray(images)
    fit = fit_to_teacher(
        logits_of(model, variables, images, batch_size, mesh, member_batch),
        logits_of(teacher_model, teacher_variables, images, batch_size, mesh, member_batch),
        run_config.teacher_ensemble)
    report[f"{split}_agreement"] = [float(a) for a in fit["agreement"]]
    report[f"{split}_kl"] = [float(k) for k in fit["kl"]]
    reporting.say(f"  fit to its teacher on the {len(images)} {split} images: agreement "
                  f"{100 * fit['agreement'].mean():.2f}%, KL(teacher || student) "
                  f"{fit['kl'].mean():.4f}{' (mean over members)' if num_members > 1 else ''}.")
  return report


def _test_report(figures: dict[str, Any]) -> dict[str, Any]:
  return {"test_errors": figures["errors"], "test_accuracy": figures["accuracy"],
          "test_loss": figures["loss"], "per_class_errors": figures["per_class_errors"]}


def evaluate_checkpoint(workdir: str | pathlib.Path, step: int | None = None,
                        mnist_dir: str | None = None,
                        ensemble: str = "arithmetic",
                        report_name: str = checkpointing.EVAL_FILE, *, model=None,
                        teacher_model=None) -> dict[str, Any]:
  """Scores a checkpoint on the test set; writes and returns RUN/eval.json's content (or
  RUN/`report_name`'s). `model` / `teacher_model` stand in for modules the run's configs cannot
  rebuild (a user's, defined in a notebook).

  For a population, eval.json also holds `members` (one dict per member) and `ensemble`; its
  top-level test figures are then the ensemble's. For a single model they are the model's.
  """
  checkpointing.repair_interrupted_overwrite(workdir)
  extension = extensions.of(checkpointing.load_config(workdir))
  if extension and extension.evaluate_elsewhere:
    raise ConfigError(f"{workdir} holds {extension.name}: {extension.evaluate_elsewhere}")
  mesh = parallelism.make_mesh()
  variables, run_config, step = checkpointing.restore_variables(workdir, mesh, step, model=model)
  model = models.model_from_config(run_config.model) if model is None else model
  batch_size = parallelism.eval_batch_size(run_config.eval_batch_size, mesh)
  if run_config.data.get("pipeline", "memory") == "grain":  # Streamed: the test split only.
    splits, test, fingerprint = None, *_streamed_test(run_config, batch_size)
  else:
    splits = data.load_dataset(run_config.data, mnist_dir)
    fingerprint = data.fingerprint(splits)
    test = put_eval_split(splits.test_images, splits.test_labels, batch_size, mesh)
  trained_on = _read_record(workdir, checkpointing.DATA_FILE)
  if trained_on and trained_on.get("test") != fingerprint["test"]:
    reporting.say(f"Warning: the test set ({fingerprint['source']}, {fingerprint['test']}) differs "
                  f"from the one {workdir} was trained with ({trained_on.get('source')}, "
                  f"{trained_on.get('test')}).")
  settings = config_lib.population_members(run_config)
  num_members = len(settings)
  evaluator = make_evaluator(
      model, batch_size, mesh,
      parallelism.member_batch(run_config.get("member_batch", 0), num_members), ensemble)
  result = evaluator(variables, test)
  report = {**_test_report(result["ensemble"] if num_members > 1 else result["members"][0]),
            "num_test_examples": test.num_examples, "step": step,
            "model": models.describe(run_config.model),
            "distilled_from": run_config.get("teacher_workdir") or None,
            "data_source": fingerprint["source"], "num_devices": mesh.size,
            "data": {"source": fingerprint["source"], "test": fingerprint["test"],
                     "same_as_training": (trained_on.get("test") == fingerprint["test"]
                                          if trained_on else None)},
            "teacher": _read_record(workdir, checkpointing.TEACHER_FILE)}
  reporting.say(f"{workdir} (step {step}, {report['model']}"
                f"{f', {num_members} members' if num_members > 1 else ''}): "
                f"{errors_summary(result)} test errors, accuracy "
                f"{100 * report['test_accuracy']:.2f}%, loss {report['test_loss']:.4f}; "
                f"per class {report['per_class_errors']}.")
  if config_lib.is_distillation(run_config) and splits is not None:  # Per member: lists.
    report["transfer_fit"] = _transfer_fit(run_config, model, variables, splits, mesh,
                                           num_members, teacher_model)  # Printed under it.
  if num_members > 1:
    report.update(num_members=num_members, ensemble_mean=ensemble,
                  members=[{**setting, **_test_report(figures)}
                           for setting, figures in zip(settings, result["members"])],
                  ensemble=_test_report(result["ensemble"]))
  try:  # The score is shown first: a read-only run directory does not lose it.
    reporting.write_json(pathlib.Path(workdir) / report_name, report)
  except CheckpointError as e:
    raise CheckpointError(f"{e} (the score is printed above)") from e
  return report


def _streamed_test(run_config, batch_size: int) -> tuple[Any, dict[str, str]]:
  """A streamed run's test split, read batch by batch as it trained, and its fingerprint (the
  fit to the teacher on the transfer set, which needs it in memory, is not measured)."""
  from kd_jax.data import streaming  # pylint: disable=g-import-not-at-top  # grain: only here.
  prepared = data.open_records(run_config.data)
  test = streaming.StreamedSplit.of(prepared, "test", batch_size)
  return test, {"source": prepared.source, "test": prepared.splits["test"]["digest"]}


def _read_record(workdir: str | pathlib.Path, name: str) -> dict[str, Any] | None:
  """A run's data.json or teacher.json, or None for runs from before those records."""
  path = pathlib.Path(workdir) / name
  return json.loads(path.read_text()) if path.exists() else None
