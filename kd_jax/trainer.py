"""Training a run: its entry point, its set-up in phases, and the epoch loop.

`train_and_evaluate` is the one entry point (the API and every command call it). A run is built
in phases, in the order it runs, each owning the config fields it reads:

  inputs      `inputs.place`: the data on the devices (or located for streaming) and eval splits
  population  `population.of`: the members, their hyperparameters, how many run vmapped together
  model       the config's model, or a module of the caller's
  objective   `objective.build`: optimizer, loss and targets (the teacher)
  state       fresh from each member's seed, or resumed from the newest intact checkpoint
  epochs      `epochs.build`: one compiled call per epoch, or one compiled step per streamed batch
  loop        `EpochLoop`: train, evaluate, log and checkpoint each epoch; stop on signals

`build` runs the first four (what the benchmark and the tests use, so they measure and test what
users run); all numerics are in `kd_jax.steps` (pure, compiled).
"""

from __future__ import annotations

import dataclasses
import pathlib
import statistics
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from kd_jax import (checkpointing, epochs, evaluation, extensions, inputs, models, objective,
                    parallelism, population, preemption, reporting, rundir, steps)
from kd_jax.errors import CheckpointError, DataError, TrainingDivergedError


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                       overwrite: bool = False, restart_on_new_teacher: bool = False, *,
                       model: nn.Module | None = None,
                       teacher_model: nn.Module | None = None) -> dict[str, Any]:
  """Trains the config's population (distilling when it names a teacher) into `workdir`.

  A workdir holding the same run (config, data and teacher) resumes from its latest intact
  checkpoint; a finished one is reported, not retrained. A different run there is refused, or
  with `overwrite` replaced once every check has passed (crash-safe: `rundir.set_aside`);
  `restart_on_new_teacher` replaces it when only the teacher changed (the pipeline's choice).
  `model` / `teacher_model` stand in for modules their configs cannot rebuild (a user's, defined
  in a notebook). SIGTERM/SIGINT end the run after the epoch in flight with a checkpoint and
  `preemption.Preempted`; a non-finite loss raises TrainingDivergedError before anything is saved.
  """
  workdir = pathlib.Path(workdir)
  mesh = parallelism.make_mesh()
  parallelism.check_batch_divides(config.batch_size, mesh, "batch_size")
  created = not workdir.exists()
  try:
    with rundir.locked(workdir):
      rundir.recover_replacement(workdir)
      mismatch = rundir.config_mismatch(workdir, config)
      if mismatch and not overwrite:  # Fail fast, before loading anything.
        _refuse_mismatch(workdir, mismatch)
      return _train(config, workdir, mesh, mismatch, overwrite, restart_on_new_teacher, model,
                    teacher_model)
  except BaseException:
    if created:  # Refused before it wrote anything (bad data, a config the data refutes).
      rundir.remove_if_unused(workdir)
    raise


@dataclasses.dataclass(frozen=True)
class Built:
  """A run set up and ready for its state: what `build` returns."""

  mesh: jax.sharding.Mesh
  inputs: inputs.Inputs
  population: population.Population
  model: nn.Module
  objective: objective.Objective
  extension: extensions.Extension | None

  def records(self) -> dict[str, Any]:
    """What the run is checked against on resume: its data, and its teacher when it has one."""
    records = {rundir.DATA_FILE: self.inputs.fingerprint}
    if self.objective.teacher.provenance is not None:
      records[rundir.TEACHER_FILE] = self.objective.teacher.provenance
    return records


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None, *,
          model: nn.Module | None = None, teacher_model: nn.Module | None = None) -> Built:
  """The run's inputs, population, model and objective: everything before its state."""
  mesh = mesh or parallelism.make_mesh()
  extension = extensions.of(config)
  run_inputs = inputs.place(config, mesh)
  members = population.of(config, mesh, extension)
  model = models.model_from_config(config.model) if model is None else model
  run_objective = objective.build(config, run_inputs, members, mesh, extension, teacher_model,
                                  student_model=model)
  if run_objective.teacher.test_log_probs is not None:  # Evaluations measure the fit to it.
    test = run_inputs.eval_splits["test"].replace(
        teacher_log_probs=run_objective.teacher.test_log_probs)
    run_inputs = run_inputs.replace(eval_splits={**run_inputs.eval_splits, "test": test})
  return Built(mesh, run_inputs, members, model, run_objective, extension)


def fresh_state(config: ml_collections.ConfigDict, run: Built) -> steps.TrainState:
  """Each member's fresh state from its seed (or as the run's extension starts it), once its
  model's logits are checked to be [B, num_classes] (`models.check_logits`)."""
  models.check_logits(run.model, tuple(config.model.input_shape), config.model.num_classes)
  state = population.init_state(run.model, run.objective.optimizer(config.learning_rate),
                                run.population.seeds, run.mesh, tuple(config.model.input_shape),
                                run.objective.adapter_shapes)
  if run.extension:
    state = run.extension.initial_state(config, state, run.population.members, run.mesh)
  return state


def _train(config: ml_collections.ConfigDict, workdir: pathlib.Path, mesh: jax.sharding.Mesh,
           mismatch: str | None, overwrite: bool, restart_on_new_teacher: bool,
           model: nn.Module | None, teacher_model: nn.Module | None) -> dict[str, Any]:
  """build -> state (fresh or resumed) -> epochs -> loop -> summary."""
  run = build(config, mesh, model=model, teacher_model=teacher_model)
  records = run.records()
  mismatch = mismatch or rundir.records_mismatch(workdir, records)
  if mismatch and not overwrite and not (restart_on_new_teacher
                                         and mismatch.startswith("a different teacher")):
    _refuse_mismatch(workdir, mismatch)

  state = fresh_state(config, run)
  if mismatch:  # Every check passed: only now is the old run moved out of the way.
    rundir.set_aside(workdir)
  checkpointing.discard_partial_checkpoints(workdir)
  manager, state, start_epoch, resumed = _resume(workdir, config, state,
                                                 parallelism.replicated(mesh))
  evaluator = evaluation.make_evaluator(run.model, run.inputs.eval_batch, mesh,
                                        run.population.member_batch,
                                        label_maps=run.objective.label_maps)
  if start_epoch >= config.num_epochs:
    reporting.say(f"{workdir} already finished its {config.num_epochs} epochs "
                  f"(checkpoint step {int(state.step[0])}); nothing to train.")
    test = evaluator(state.variables, run.inputs.eval_splits["test"])
  else:
    rundir.save_config(workdir, config, run.population.members, records)
    rundir.discard_set_aside(workdir)
    writer = reporting.MetricsWriter(workdir / rundir.METRICS_FILE,
                                     workdir / rundir.TENSORBOARD_DIR,
                                     keep_epochs_up_to=start_epoch)
    _announce(config, run, start_epoch)
    driver = None
    try:
      driver = epochs.build(config, workdir, run.model, run.objective, run.inputs,
                            run.population, mesh, resumed)
      loop = EpochLoop(config=config, workdir=workdir, eval_splits=run.inputs.eval_splits,
                       evaluator=evaluator, manager=manager, writer=writer)
      state, test = loop.run(driver, state, start_epoch)
    except BaseException:
      _close_after_error(writer, driver)
      raise
    try:
      writer.close()
    finally:
      driver.close()
  manager.wait_until_finished()
  manager.close()
  return _summary(config, workdir, int(state.step[0]), test)


def _close_after_error(writer: reporting.MetricsWriter, driver: epochs.Epochs | None) -> None:
  """Closes the writer and the epochs driver while an error (or a signal's Preempted) is on its
  way out: that first error is what the user must see, so a second one here (the same full
  disk, met again when TensorBoard flushes) is dropped, not raised in its place."""
  for close in (writer.close, driver.close if driver is not None else None):
    try:
      if close is not None:
        close()
    except Exception:  # pylint: disable=broad-except  # The first error is already on its way.
      pass


def _refuse_mismatch(workdir: pathlib.Path, mismatch: str) -> None:
  error = DataError if mismatch.startswith("different data") else CheckpointError
  raise error(f"{workdir} already holds a run with {mismatch}. Use another --workdir, or pass "
              "--overwrite to replace that run (it is deleted once the new one has started).")


def _resume_item(state: steps.TrainState) -> dict[str, Any]:
  """What a checkpoint's `train` item holds beside the params: all that resuming needs (and a
  feature term's adapters, which only training reads)."""
  return {"step": state.step, "opt_state": state.opt_state, "rng": state.rng,
          **({"adapters": state.adapters} if state.adapters else {})}


def _resume(workdir: pathlib.Path, config: ml_collections.ConfigDict, state: steps.TrainState,
            sharding) -> tuple[ocp.CheckpointManager, steps.TrainState, int, dict[str, Any]]:
  """The state phase: the newest intact checkpoint's state in place of the fresh one, if there
  is a checkpoint. Returns (manager, state, epoch to start from, the checkpoint's meta)."""
  manager, step, restored = checkpointing.restore_latest(
      workdir, {**checkpointing.variable_items(state.variables), "train": _resume_item(state)},
      sharding, config.checkpoint.max_to_keep)
  if step is None:
    return manager, state, 0, {}
  train = restored["train"]
  state = steps.TrainState(step=train["step"], params=restored["params"],
                           opt_state=train["opt_state"], rng=train["rng"],
                           model_state=restored.get("model_state", {}),
                           adapters=train.get("adapters", {}))
  if int(state.step[0]) != step:
    raise CheckpointError(f"Checkpoint {step} in {workdir} holds step {int(state.step[0])}.")
  epoch = int(restored["meta"]["epoch"])
  within = restored["meta"].get("stream", {}).get("step_in_epoch", 0)
  reporting.say(f"Resuming {workdir} from checkpoint step {step} (epoch {epoch}"
                f"{f', step {within} of epoch {epoch + 1}' if within else ''}).")
  return manager, state, epoch, restored["meta"]


def _announce(config: ml_collections.ConfigDict, run: Built, start_epoch: int) -> None:
  num_train, members = run.inputs.num_train, run.population.size
  reporting.say(f"Training {models.describe(config.model)} on {run.inputs.source} "
                f"({num_train} examples, {f'{members} members, ' if members > 1 else ''}"
                f"{run.mesh.size} device(s), {num_train // config.batch_size} steps/epoch"
                f"{', streamed by grain' if run.inputs.streamed else ''})"
                f"{' by distillation' if run.objective.teacher.provenance else ''}"
                f"{f', from epoch {start_epoch}' if start_epoch else ''}.")


def _summary(config: ml_collections.ConfigDict, workdir: pathlib.Path, step: int,
             test: dict[str, Any]) -> dict[str, Any]:
  """The run's result as train_and_evaluate returns it, and its closing line."""
  figures = evaluation.headline(test)
  summary = {"test_errors": figures["errors"], "test_accuracy": figures["accuracy"],
             "step": step,
             "checkpoint": str((workdir / rundir.CHECKPOINT_DIR / str(step)).absolute())}
  whose = ""
  if len(test["members"]) > 1:  # Whose accuracy `evaluation.headline` gave.
    whose = " of the ensemble" if test["ensemble"] else " of member 0, on its own classes"
  reporting.say(f"Done: {evaluation.errors_summary(test)} test errors "
                f"({100 * summary['test_accuracy']:.2f}% accuracy{whose}) after "
                f"{config.num_epochs} epochs. Checkpoint: {summary['checkpoint']}")
  return summary


def epoch_record(epoch: int, step: int, epoch_time: float, train_metrics: dict[str, np.ndarray],
                 results: dict[str, dict[str, Any]]) -> dict[str, Any]:
  """One metrics.jsonl line. One member: scalars. A population: per-member lists in member order
  plus the ensemble's figures as ensemble_<split>_<figure>. An epoch not evaluated
  (`eval_every_epochs`) has no `results` ({}) and no split figures."""
  single = np.size(train_metrics["loss"]) == 1
  record = {"epoch": epoch, "step": step, "epoch_time_s": epoch_time}
  for name, values in train_metrics.items():
    record[f"train_{name}"] = float(values[0]) if single else [float(v) for v in values]
  for split, result in results.items():
    for figure in ("loss", "errors", "accuracy", "teacher_agreement", "teacher_kl"):
      if figure not in result["members"][0]:  # The fit to a teacher: a distilled run's test.
        continue
      values = [m[figure] for m in result["members"]]
      record[f"{split}_{figure}"] = values[0] if single else values
      if not single and result["ensemble"] and figure in result["ensemble"]:
        record[f"ensemble_{split}_{figure}"] = result["ensemble"][figure]
  return record


@dataclasses.dataclass(frozen=True)
class EpochLoop:
  """The epoch loop of one run: train, evaluate, log, checkpoint; stops cleanly on a signal."""

  config: ml_collections.ConfigDict
  workdir: pathlib.Path
  eval_splits: dict[str, Any]  # inputs.Inputs.eval_splits
  evaluator: Callable[[Any, Any], dict[str, Any]]
  manager: ocp.CheckpointManager
  writer: reporting.MetricsWriter

  def save(self, state: steps.TrainState, meta: dict[str, Any]) -> None:
    checkpointing.save(self.manager, int(state.step[0]),
                       {**checkpointing.variable_items(state.variables),
                        "train": _resume_item(state)}, meta)

  def run(self, driver: epochs.Epochs, state: steps.TrainState,
          start_epoch: int) -> tuple[steps.TrainState, dict[str, Any]]:
    """Trains from `start_epoch` to the end; returns the final state and its test evaluation."""
    config, workdir = self.config, self.workdir
    driver = driver.compiled(state)
    train_time = 0.0
    with preemption.PreemptionGuard() as guard, \
        reporting.progress_bar(config.num_epochs, start_epoch, workdir.name) as bar:
      for epoch in range(start_epoch, config.num_epochs):
        if epoch == start_epoch and guard.requested():
          raise preemption.Preempted(f"{guard.signal_name or 'a signal'} before the first "
                                     "epoch; nothing new to save. Rerun the same command to "
                                     "resume.")
        epoch_start = time.perf_counter()
        step_before = int(state.step[0])
        state, train_metrics = driver.train(state, epoch, self, guard)
        train_metrics = jax.device_get(train_metrics)
        epoch_time = time.perf_counter() - epoch_start
        train_time += epoch_time
        self._check_finite(train_metrics.pop("first_nonfinite_step"), step_before, epoch)
        evaluated = (epoch + 1) % config.get("eval_every_epochs", 1) == 0 or (
            epoch + 1 == config.num_epochs)
        results = {name: self.evaluator(state.variables, split)
                   for name, split in self.eval_splits.items()} if evaluated else {}
        record = epoch_record(epoch + 1, int(state.step[0]), epoch_time, train_metrics, results)
        self.writer.write(record)
        test_errors = evaluation.errors_summary(results["test"]) if evaluated else "-"
        test_loss = f"{evaluation.headline(results['test'])['loss']:.4f}" if evaluated else "-"
        mean_loss = statistics.mean(np.atleast_1d(record["train_loss"]))
        bar.update(1)
        bar.set_postfix(loss=f"{mean_loss:.4f}", test_errors=test_errors)
        if reporting.is_main_process():
          parts = "".join(  # A distilled run: the soft term (KL x T^2) and the hard term.
              f"  {name} {statistics.mean(np.atleast_1d(record[f'train_{name}_loss'])):.4f}"
              for name in ("soft", "hard") if f"train_{name}_loss" in record)
          bar.write(f"epoch {epoch + 1:3d}  train_loss {mean_loss:.4f}{parts}  test_loss "
                    f"{test_loss}  test_errors {test_errors}  time {epoch_time:.1f}s")
        stopping = guard.requested()
        if (stopping or epoch + 1 == config.num_epochs
            or (epoch + 1) % config.checkpoint.every_epochs == 0):
          self.save(state, {"epoch": epoch + 1, "test_errors": evaluation.headline(
              results["test"])["errors"] if evaluated else None, **driver.position()})
        if stopping and epoch + 1 < config.num_epochs:
          raise preemption.Preempted(
              f"{guard.signal_name or 'a signal on another process'}: saved checkpoint step "
              f"{int(state.step[0])} (epoch {epoch + 1} of {config.num_epochs}) in {workdir}. "
              "Rerun the same command to resume.")
    reporting.say(f"Trained {config.num_epochs - start_epoch} epochs in {train_time:.1f}s "
                  f"({train_time / (config.num_epochs - start_epoch):.2f}s per epoch).")
    return state, results["test"]

  def _check_finite(self, first_bad: np.ndarray, step_before: int, epoch: int) -> None:
    """Raises TrainingDivergedError if any member's loss became non-finite in this epoch."""
    bad = [(int(step), member) for member, step in enumerate(first_bad) if step >= 0]
    if not bad:
      return
    self.manager.wait_until_finished()
    last_good = self.manager.latest_step()
    kept = ("no checkpoint was written yet" if last_good is None
            else f"the last good checkpoint is step {last_good}")
    step, member = min(bad)
    which = f" of member {member}" if len(first_bad) > 1 else ""
    raise TrainingDivergedError(
        f"The training loss{which} became non-finite at step {step_before + step + 1} (epoch "
        f"{epoch + 1}); stopped without saving: {kept}. Usual causes: a learning rate too high, a "
        "very low temperature, or a teacher checkpoint that is corrupted or diverged (evaluate "
        "it with kd_jax.evaluate).")


