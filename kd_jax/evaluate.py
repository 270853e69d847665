"""Restores a run's checkpoint (latest or --step) on this machine's devices and scores the test set.

  python -m kd_jax.evaluate --workdir runs/distilled

Prints the result and writes RUN/eval.json; for a population, every member and their ensemble.
`evaluate_checkpoint` is the command's work, which `kd_jax.Run.evaluate` calls too.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax.numpy as jnp
from absl import flags

from kd_jax import (config_fields, data, evaluation, extensions, inputs, losses, parallelism,
                    population, reporting, rundir, runs, runtime)
from kd_jax.errors import CheckpointError, ConfigError


@runtime.quiet_logs()  # orbax's notices on opening a run read-only stay off the console.
def evaluate_checkpoint(workdir: str | pathlib.Path, step: int | None = None,
                        mnist_dir: str | None = None, ensemble: str = "arithmetic",
                        report_name: str = rundir.EVAL_FILE, *, model=None,
                        teacher_model=None) -> dict[str, Any]:
  """Scores a checkpoint on the test set; writes and returns RUN/eval.json's content (or
  RUN/`report_name`'s). `model` / `teacher_model` stand in for modules the run's configs cannot
  rebuild (a user's, defined in a notebook).

  For a population, eval.json also holds `members` (one dict per member) and `ensemble`; its
  top-level test figures are then the ensemble's. For a single model they are the model's.
  """
  rundir.repair_interrupted_overwrite(workdir)
  extension = extensions.of(rundir.load_config(workdir))
  if extension and extension.evaluate_elsewhere:
    raise ConfigError(f"{workdir} holds {extension.name}: {extension.evaluate_elsewhere}")
  mesh = parallelism.make_mesh()
  run = runs.Run.open(workdir, mesh=mesh, step=step, model=model)
  run_config = run.config
  batch_size = parallelism.eval_batch_size(run_config.eval_batch_size, mesh)
  if run_config.data.get("pipeline", "memory") == "grain":  # Streamed: the test split only.
    splits, test, fingerprint = None, *_streamed_test(run_config, batch_size)
  else:
    splits = data.load_dataset(run_config.data, mnist_dir)
    fingerprint = data.fingerprint(splits)
    test = inputs.put_eval_split(splits.test_images, splits.test_labels, batch_size, mesh)
  trained_on = _read_record(workdir, rundir.DATA_FILE)
  if trained_on and trained_on.get("test") != fingerprint["test"]:
    reporting.say(f"Warning: the test set ({fingerprint['source']}, {fingerprint['test']}) differs "
                  f"from the one {workdir} was trained with ({trained_on.get('source')}, "
                  f"{trained_on.get('test')}).")
  settings = population.members(run_config)
  num_members = len(settings)
  evaluator = evaluation.make_evaluator(run.model, batch_size, mesh, run.member_batch, ensemble)
  result = evaluator(run.variables, test)
  report = {**_test_report(result["ensemble"] if num_members > 1 else result["members"][0]),
            "num_test_examples": test.num_examples, "step": run.step,
            "model": run.describe(),
            "distilled_from": run_config.get("teacher_workdir") or None,
            "data_source": fingerprint["source"], "num_devices": mesh.size,
            "data": {"source": fingerprint["source"], "test": fingerprint["test"],
                     "same_as_training": (trained_on.get("test") == fingerprint["test"]
                                          if trained_on else None)},
            "teacher": _read_record(workdir, rundir.TEACHER_FILE)}
  reporting.say(f"{workdir} (step {run.step}, {report['model']}"
                f"{f', {num_members} members' if num_members > 1 else ''}): "
                f"{evaluation.errors_summary(result)} test errors, accuracy "
                f"{100 * report['test_accuracy']:.2f}%, loss {report['test_loss']:.4f}; "
                f"per class {report['per_class_errors']}.")
  if config_fields.is_distillation(run_config) and splits is not None:  # Per member: lists.
    report["transfer_fit"] = _transfer_fit(run, splits, mesh, teacher_model)  # Printed under it.
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


def _transfer_fit(run: runs.Run, splits: data.Splits, mesh,
                  teacher_model=None) -> dict[str, Any] | None:
  """`evaluation.fit_to_teacher` of a distilled run on its (un-jittered) transfer set and on the
  test set: fitting the teacher on the first but not the second is a transfer set that covers
  too little. None, with a warning, when its teacher can no longer be read."""
  run_config = run.config
  try:
    teacher = runs.Run.open(run_config.teacher_workdir, mesh=mesh, model=teacher_model,
                            members=tuple(run_config.teacher_members) or None)
  except (CheckpointError, ConfigError) as e:  # Gone, or a module to pass as teacher_model.
    reporting.say(f"Warning: no fit to the teacher measured: {e}")
    return None
  batch_size = parallelism.eval_batch_size(run_config.eval_batch_size, mesh)
  report = {"num_train_examples": len(splits.train_images)}
  for split, images in (("train", splits.train_images), ("test", splits.test_images)):
    images = jnp.asarray(images)
    fit = evaluation.fit_to_teacher(
        runs.logits_of(run.model, run.variables, images, batch_size, mesh, run.member_batch),
        runs.logits_of(teacher.model, teacher.variables, images, batch_size, mesh,
                       run.member_batch),
        run_config.teacher_ensemble)
    report[f"{split}_agreement"] = [float(a) for a in fit["agreement"]]
    report[f"{split}_kl"] = [float(k) for k in fit["kl"]]
    reporting.say(f"  fit to its teacher on the {len(images)} {split} images: agreement "
                  f"{100 * fit['agreement'].mean():.2f}%, KL(teacher || student) "
                  f"{fit['kl'].mean():.4f}"
                  f"{' (mean over members)' if run.num_members > 1 else ''}.")
  return report


def _test_report(figures: dict[str, Any]) -> dict[str, Any]:
  return {"test_errors": figures["errors"], "test_accuracy": figures["accuracy"],
          "test_loss": figures["loss"], "per_class_errors": figures["per_class_errors"]}


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


def define_flags() -> None:
  """The command's flags (defined only when it runs, so the library imports this module too)."""
  flags.DEFINE_string("workdir", None, "Run directory to evaluate.", required=True)
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_string("mnist_dir", None, "IDX folder (default: the run's config, then "
                      f"${data.MNIST_DIR_ENV}, then tensorflow-datasets).")
  flags.DEFINE_enum("ensemble", "arithmetic", losses.ENSEMBLE_MEANS,
                    "A population's ensemble: the arithmetic mean of its members' "
                    "probabilities, or their (normalised) geometric mean.")


def main(argv):
  del argv
  f = flags.FLAGS
  evaluate_checkpoint(f.workdir, f.step, f.mnist_dir, f.ensemble)


if __name__ == "__main__":
  from kd_jax import cli  # pylint: disable=g-import-not-at-top  # The command only.
  define_flags()
  cli.run(main)
