"""The run loop: set up a population, resume, train epoch by epoch, log, checkpoint, stop on signals.

All numerics are in `kd_jax.steps` (pure, compiled); this module decides what to compile from the
config (loss, targets, hyperparameters per member) and handles everything around it: the workdir,
data on device, the teacher, resuming, metrics, checkpoints and preemption.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import os
import pathlib
import shutil
import statistics
import time
from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from kd_jax import (checkpointing, config_lib, data, evaluation, extensions, faults, losses,
                    models, parallelism, preemption, reporting, steps, targets)
from kd_jax.errors import (CheckpointError, ConfigError, CorruptCheckpointError, DataError,
                           TrainingDivergedError)


@flax.struct.dataclass
class RunSetup:
  """Everything a run needs on device, built once before the first epoch."""

  # Memory pipeline: 'image', 'label' and maybe cached 'teacher_logits'; streamed: {}.
  train_data: dict[str, jax.Array]
  eval_splits: dict[str, Any]  # evaluation.DeviceSplit, or streamed: streaming.StreamedSplit.
  source: str = flax.struct.field(pytree_node=False)
  fingerprint: dict[str, str] = flax.struct.field(pytree_node=False)  # data.fingerprint
  eval_batch: int = flax.struct.field(pytree_node=False)  # Evaluation batch on this mesh.
  num_train: int = flax.struct.field(pytree_node=False, default=0)
  # Streamed (data.pipeline = "grain"): the prepared folder, and the record index of each
  # training example (after any class filter or subset); None in memory.
  prepared: Any = flax.struct.field(pytree_node=False, default=None)
  train_records: Any = flax.struct.field(pytree_node=False, default=None)


def put_data(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> RunSetup:
  faults.point("put_data")
  if config.data.pipeline == "grain":
    return open_streams(config, mesh)
  splits = data.load_dataset(config.data)
  if tuple(splits.train_images.shape[1:]) != tuple(config.model.input_shape):
    raise ConfigError(f"config.model.input_shape={tuple(config.model.input_shape)} does not match "
                      f"the images of {splits.source}, {splits.train_images.shape[1:]}.")
  eval_batch = parallelism.eval_batch_size(config.eval_batch_size, mesh)
  eval_splits = {"test": evaluation.put_eval_split(splits.test_images, splits.test_labels,
                                                   eval_batch, mesh)}
  if config.data.validation_size:
    eval_splits["validation"] = evaluation.put_eval_split(
        splits.validation_images, splits.validation_labels, eval_batch, mesh)
  train_data = {"image": parallelism.put_replicated(splits.train_images, mesh),
                "label": parallelism.put_replicated(splits.train_labels, mesh)}
  return RunSetup(train_data=train_data, eval_splits=eval_splits, source=splits.source,
                  fingerprint=data.fingerprint(splits), eval_batch=eval_batch,
                  num_train=len(splits.train_labels))


def open_streams(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> RunSetup:
  """The grain pipeline's setup: which records train and evaluate, nothing read or placed yet."""
  from kd_jax.data import streaming  # pylint: disable=g-import-not-at-top  # grain: only here.
  prepared = data.open_records(config.data)
  if tuple(prepared.image_shape) != tuple(config.model.input_shape):
    raise ConfigError(f"config.model.input_shape={tuple(config.model.input_shape)} does not match "
                      f"the images of {prepared.source}, {prepared.image_shape}.")
  streaming.check_mesh(mesh)
  streaming.check_grain_workers(config.data.grain_workers)
  cut = data.train_validation_cut(prepared.splits["train"]["num_examples"],
                                  config.data.validation_size)
  train_records = data.select_examples(
      np.asarray(prepared.labels("train")[:cut]), tuple(config.data.train_classes),
      config.data.train_subset, config.data.subset_seed, prepared.num_classes)
  eval_batch = parallelism.eval_batch_size(config.eval_batch_size, mesh)
  eval_splits = {"test": streaming.StreamedSplit.of(prepared, "test", eval_batch)}
  if config.data.validation_size:
    eval_splits["validation"] = streaming.StreamedSplit.of(
        prepared, "train", eval_batch, np.arange(cut, prepared.splits["train"]["num_examples"]))
  return RunSetup(train_data={}, eval_splits=eval_splits, source=prepared.source,
                  fingerprint=streaming.fingerprint(prepared, train_records,
                                                    config.data.validation_size),
                  eval_batch=eval_batch, num_train=len(train_records), prepared=prepared,
                  train_records=train_records)


@dataclasses.dataclass(frozen=True)
class Teacher:
  """What the step needs from the teacher: its targets function and the arguments it takes."""

  targets_fn: targets.TargetsFn
  variables: Any  # Stacked [M, ...], or None when its logits are cached in the train data.
  cached_logits: jax.Array | None  # [N, M, C] on the un-jittered training images, or None.
  provenance: dict[str, Any] | None = None  # Which teacher it is: the student's teacher.json.
  # Streamed runs: the teacher whose logits `cache_logits_on_disk` writes once into the workdir
  # (the pipeline reads its rows with each batch); None otherwise.
  to_cache_on_disk: tuple[nn.Module, Any] | None = None


def load_teacher(config: ml_collections.ConfigDict, setup: RunSetup, mesh: jax.sharding.Mesh,
                 member_batch: int, teacher_model: nn.Module | None = None) -> Teacher:
  """Restores the teacher (all or `teacher_members` of a population) from its own config, as
  `teacher_model` when given (a module its config cannot rebuild).

  Without jitter the transfer set is fixed, so its logits are computed here once and the step
  gathers them (config.cache_teacher_logits); with jitter the teacher runs inside the step.
  Either way it runs in eval mode (running statistics, no dropout).
  """
  variables, teacher_config, teacher_step = checkpointing.restore_variables(
      config.teacher_workdir, mesh, members=tuple(config.teacher_members) or None,
      model=teacher_model)
  teacher = (models.model_from_config(teacher_config.model) if teacher_model is None
             else teacher_model)
  num_teachers = jax.tree.leaves(variables)[0].shape[0]
  ensemble = f", an ensemble of {num_teachers} members" if num_teachers > 1 else ""
  reporting.say(f"Teacher: {models.describe(teacher_config.model)} from "
                f"{config.teacher_workdir} (step {teacher_step}){ensemble}.")
  finished = checkpointing.finished_step(config.teacher_workdir, teacher_config) == teacher_step
  if not finished:
    reporting.say(f"Warning: the teacher in {config.teacher_workdir} has not finished its "
                  f"{teacher_config.num_epochs} epochs (checkpoint step {teacher_step}); "
                  "distilling from it as it is now.")
  provenance = {"workdir": str(pathlib.Path(config.teacher_workdir).absolute()),
                "step": teacher_step, "members": list(config.teacher_members) or "all",
                "digest": checkpointing.combined_digest(
                    checkpointing.array_digests(variables["params"])),
                "finished": finished}
  if setup.prepared is not None and not config.data.jitter and config.cache_teacher_logits:
    return Teacher(targets.cached_targets, None, None, provenance, (teacher, variables))
  if setup.prepared is not None:
    return Teacher(targets.make_teacher_targets(teacher, member_batch), variables, None,
                   provenance)
  return dataclasses.replace(
      make_teacher(config, teacher, variables, setup.train_data["image"], mesh, member_batch,
                   setup.eval_batch),
      provenance=provenance)


def make_teacher(config: ml_collections.ConfigDict, teacher: nn.Module, variables: Any,
                 train_images: jax.Array, mesh: jax.sharding.Mesh, member_batch: int,
                 eval_batch: int) -> Teacher:
  """The teacher in the step (jittered transfer set) or its logits cached once (un-jittered),
  under `teacher_dropout_masks` dropout masks per image when that is > 0."""
  if config.data.jitter or not config.cache_teacher_logits:
    return Teacher(targets.make_teacher_targets(teacher, member_batch), variables, None)
  masks = config.get("teacher_dropout_masks", 0)
  if masks and set(variables) != {"params"}:
    raise ConfigError(f"teacher_dropout_masks={masks} runs the teacher in train mode, which would "
                      f"also update its {sorted(set(variables) - {'params'})}: use it with a "
                      "teacher without running statistics (no BatchNorm).")
  start = time.perf_counter()
  logits = jax.block_until_ready(evaluation.logits_of(
      teacher, variables, train_images, eval_batch, mesh, member_batch, masks,
      config.get("teacher_dropout_seed", 0)))
  under = f" under {masks} dropout masks each" if masks else ""
  reporting.say(f"Cached the teacher's logits on the {train_images.shape[0]} training images"
                f"{under} in {time.perf_counter() - start:.1f}s.")
  return Teacher(targets.cached_targets, None, logits)


def init_population(model: nn.Module, tx, members: list[dict[str, Any]],
                    mesh: jax.sharding.Mesh,
                    input_shape: tuple[int, ...] = data.IMAGE_SHAPE) -> steps.TrainState:
  """Each member's initial state from its own seed (as its single run would), stacked."""
  replicated = parallelism.replicated(mesh)
  create = jax.jit(functools.partial(steps.create_train_state, model=model, tx=tx,
                                     input_shape=input_shape), out_shardings=replicated)
  state = steps.stack_members([create(jax.random.PRNGKey(m["seed"])) for m in members])
  return jax.device_put(state, replicated)


def make_step_fn(config: ml_collections.ConfigDict, model: nn.Module,
                 objective: Objective) -> Callable:
  """`steps.train_step` told the run's model, optimizer, loss, targets and max-norm: the step
  both pipelines run (scanned in the compiled epoch, or called per streamed batch)."""
  return functools.partial(steps.train_step, model=model, optimizer=objective.optimizer,
                           loss_fn=objective.loss_fn, targets_fn=objective.teacher.targets_fn,
                           max_norm=config.model.max_norm)


def make_epoch_fn(config: ml_collections.ConfigDict, model: nn.Module, objective: Objective,
                  mesh: jax.sharding.Mesh, member_batch: int):
  """The jitted population epoch (state donated): (state, train_data, hparams,
  teacher_variables, epoch) -> (state, per-member metrics)."""
  return jax.jit(
      functools.partial(steps.population_epoch, member_batch=member_batch,
                        step_fn=make_step_fn(config, model, objective),
                        batch_size=config.batch_size, max_shift=config.data.jitter,
                        batch_sharding=parallelism.batch_sharded(mesh),
                        sampler=objective.sampler),
      out_shardings=parallelism.replicated(mesh), donate_argnums=(0,))


def member_hparams(config: ml_collections.ConfigDict,
                   members: list[dict[str, Any]]) -> dict[str, jax.Array]:
  """Per-member hyperparameters as f32[P] arrays, fed to the compiled epoch, and any per-member
  arrays the run's extension adds (specialists: their class maps)."""
  hparams = {name: jnp.asarray([m[name] for m in members], jnp.float32)
             for name in config_lib.hparam_names(config)}
  extension = extensions.of(config)
  if extension:
    hparams.update({name: jnp.asarray(v) for name, v in extension.hparams(config, members).items()})
  return hparams


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                       overwrite: bool = False, restart_on_new_teacher: bool = False, *,
                       model: nn.Module | None = None,
                       teacher_model: nn.Module | None = None) -> dict[str, Any]:
  """Trains the config's population (distilling when it names a teacher) into `workdir`.

  A workdir holding the same run (config, data and teacher) resumes from its latest intact
  checkpoint; a finished one is reported, not retrained. A different run there is refused, or
  with `overwrite` replaced once every check has passed (crash-safe: `checkpointing.set_aside`);
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
    with checkpointing.locked(workdir):
      checkpointing.recover_replacement(workdir)
      if not overwrite:  # Fail fast on a config mismatch, before loading anything.
        _refuse_mismatch(workdir, checkpointing.run_mismatch(workdir, config, {}))
      return _train(config, workdir, mesh, overwrite, restart_on_new_teacher, model,
                    teacher_model)
  except BaseException:
    if created:  # Refused before it wrote anything (bad data, a config the data refutes).
      checkpointing.remove_if_unused(workdir)
    raise


def _refuse_mismatch(workdir: pathlib.Path, mismatch: str | None) -> None:
  if mismatch is None:
    return
  error = DataError if mismatch.startswith("different data") else CheckpointError
  raise error(f"{workdir} already holds a run with {mismatch}. Use another --workdir, or pass "
              "--overwrite to replace that run (it is deleted once the new one has started).")


@dataclasses.dataclass(frozen=True)
class Objective:
  """What the step optimises: its optimizer, loss, targets (the teacher) and data sampler."""

  optimizer: steps.Optimizer
  loss_fn: losses.LossFn
  teacher: Teacher
  sampler: steps.Sampler
  label_maps: jax.Array | None  # Members' own classes (an extension's): evaluation maps labels.


def make_objective(config: ml_collections.ConfigDict, setup: RunSetup, hparams: dict[str, Any],
                   mesh: jax.sharding.Mesh, member_batch: int,
                   teacher_model: nn.Module | None) -> Objective:
  """The optimizer, loss and targets of the config: hard labels, or distillation from its
  teacher (logits cached once when the transfer set is fixed); an extension's loss and sampler."""
  num_train = setup.num_train
  steps_per_epoch = num_train // config.batch_size
  if steps_per_epoch == 0:
    raise ConfigError(f"config.batch_size={config.batch_size} is larger than the "
                      f"{num_train} training examples.")
  loss_fn, teacher = losses.hard_label_loss, Teacher(targets.no_targets, None, None)
  if config_lib.is_distillation(config):
    loss_fn = losses.make_distillation_loss(config.soft_loss, config.teacher_ensemble,
                                            config.soft_t_squared)
    teacher = load_teacher(config, setup, mesh, member_batch, teacher_model)
  sampler, label_maps = steps.shuffled_batches, None
  extension = extensions.of(config)
  if extension:  # The one place a kind of run (specialists) changes the objective.
    loss_fn, sampler, label_maps = extension.objective(config, loss_fn, sampler, hparams)
  return Objective(steps.make_optimizer(config, steps_per_epoch), loss_fn, teacher, sampler,
                   label_maps)


def initial_state(config: ml_collections.ConfigDict, model: nn.Module, objective: Objective,
                  members: list[dict[str, Any]], mesh: jax.sharding.Mesh) -> steps.TrainState:
  """Each member's fresh state from its seed (or as the run's extension starts it)."""
  state = init_population(model, objective.optimizer(config.learning_rate), members, mesh,
                          tuple(config.model.input_shape))
  extension = extensions.of(config)
  return extension.initial_state(config, state, members, mesh) if extension else state


def _train(config: ml_collections.ConfigDict, workdir: pathlib.Path, mesh: jax.sharding.Mesh,
           overwrite: bool, restart_on_new_teacher: bool, model: nn.Module | None,
           teacher_model: nn.Module | None) -> dict[str, Any]:
  """data -> model -> objective (optimizer, loss, targets) -> state (fresh or resumed) -> epochs."""
  setup = put_data(config, mesh)
  members = config_lib.population_members(config)
  member_batch = parallelism.member_batch(config.member_batch, len(members))
  model = models.model_from_config(config.model) if model is None else model
  hparams = jax.device_put(member_hparams(config, members), parallelism.replicated(mesh))
  objective = make_objective(config, setup, hparams, mesh, member_batch, teacher_model)
  if objective.teacher.cached_logits is not None:
    setup = setup.replace(train_data={**setup.train_data,
                                      "teacher_logits": objective.teacher.cached_logits})
  records = {checkpointing.DATA_FILE: setup.fingerprint}
  if objective.teacher.provenance is not None:
    records[checkpointing.TEACHER_FILE] = objective.teacher.provenance
  mismatch = checkpointing.run_mismatch(workdir, config, records)
  if mismatch and not overwrite and not (restart_on_new_teacher
                                         and mismatch.startswith("a different teacher")):
    _refuse_mismatch(workdir, mismatch)

  state = initial_state(config, model, objective, members, mesh)
  if mismatch:  # Every check passed: only now is the old run moved out of the way.
    checkpointing.set_aside(workdir)
  checkpointing.discard_partial_checkpoints(workdir)
  manager, state, start_epoch, resumed = _resume(workdir, config, state,
                                                 parallelism.replicated(mesh))
  evaluator = evaluation.make_evaluator(
      model, setup.eval_batch, mesh, member_batch,
      label_maps=objective.label_maps)
  if start_epoch >= config.num_epochs:
    reporting.say(f"{workdir} already finished its {config.num_epochs} epochs "
                  f"(checkpoint step {int(state.step[0])}); nothing to train.")
    test = evaluator(state.variables, setup.eval_splits["test"])
  else:
    checkpointing.save_config(workdir, config, records)
    checkpointing.discard_set_aside(workdir)
    writer = reporting.MetricsWriter(workdir / checkpointing.METRICS_FILE,
                                     workdir / checkpointing.TENSORBOARD_DIR,
                                     keep_epochs_up_to=start_epoch)
    num_train = setup.num_train
    population = f"{len(members)} members, " if len(members) > 1 else ""
    reporting.say(f"Training {models.describe(config.model)} on {setup.source} "
                  f"({num_train} examples, {population}{mesh.size} device(s), "
                  f"{num_train // config.batch_size} steps/epoch"
                  f"{', streamed by grain' if setup.prepared is not None else ''})"
                  f"{' by distillation' if config_lib.is_distillation(config) else ''}"
                  f"{f', from epoch {start_epoch}' if start_epoch else ''}.")
    epochs = None
    try:
      if setup.prepared is None:
        epochs = CompiledEpochs(make_epoch_fn(config, model, objective, mesh, member_batch),
                                (setup.train_data, hparams, objective.teacher.variables))
      else:
        epochs = StreamedEpochs.start(config, workdir, model, objective, setup, hparams, mesh,
                                      member_batch, members, resumed)
      loop = EpochLoop(config=config, workdir=workdir, setup=setup, evaluator=evaluator,
                       manager=manager, writer=writer)
      state, test = loop.run(epochs, state, start_epoch)
    finally:
      writer.close()
      if epochs is not None:
        epochs.close()
  manager.wait_until_finished()
  manager.close()

  step = int(state.step[0])
  figures = evaluation.headline(test)
  summary = {"test_errors": figures["errors"], "test_accuracy": figures["accuracy"],
             "step": step,
             "checkpoint": str((workdir / checkpointing.CHECKPOINT_DIR / str(step)).absolute())}
  reporting.say(f"Done: {evaluation.errors_summary(test)} test errors "
                f"({100 * summary['test_accuracy']:.2f}% accuracy"
                f"{_whose(test)}) after {config.num_epochs} epochs. "
                f"Checkpoint: {summary['checkpoint']}")
  return summary


def _whose(result: dict[str, Any]) -> str:
  """Whose accuracy `evaluation.headline` gave: the ensemble's, one model's, or member 0's."""
  if len(result["members"]) == 1:
    return ""
  return " of the ensemble" if result["ensemble"] else " of member 0, on its own classes"


def epoch_record(epoch: int, step: int, epoch_time: float, train_metrics: dict[str, np.ndarray],
                 results: dict[str, dict[str, Any]]) -> dict[str, Any]:
  """One metrics.jsonl line. One member: scalars. A population: per-member lists in member order
  plus the ensemble's figures as ensemble_<split>_<figure>."""
  single = len(results["test"]["members"]) == 1
  record = {"epoch": epoch, "step": step, "epoch_time_s": epoch_time}
  for name, values in train_metrics.items():
    record[f"train_{name}"] = float(values[0]) if single else [float(v) for v in values]
  for split, result in results.items():
    for figure in ("loss", "errors", "accuracy"):
      values = [m[figure] for m in result["members"]]
      record[f"{split}_{figure}"] = values[0] if single else values
      if not single and result["ensemble"]:
        record[f"ensemble_{split}_{figure}"] = result["ensemble"][figure]
  return record


@dataclasses.dataclass
class CompiledEpochs:
  """The memory pipeline's epochs: each one compiled call over data already on the devices."""

  epoch_fn: Any  # make_epoch_fn's jitted epoch; compiled ahead of the first epoch.
  args: tuple[Any, ...]  # (train data, hparams, teacher variables)

  def compiled(self, state: steps.TrainState) -> CompiledEpochs:
    start = time.perf_counter()
    compiled = self.epoch_fn.lower(state, *self.args, jnp.int32(0)).compile()
    reporting.say(f"Compiled the epoch in {time.perf_counter() - start:.1f}s.")
    return CompiledEpochs(compiled, self.args)

  def train(self, state, epoch: int, loop: EpochLoop, guard) -> tuple[Any, dict[str, Any]]:
    del loop, guard  # Signals are answered between epochs.
    return self.epoch_fn(state, *self.args, jnp.int32(epoch))

  def position(self) -> dict[str, Any]:
    return {}

  def close(self) -> None:
    pass


@dataclasses.dataclass
class StreamedEpochs:
  """The grain pipeline's epochs: one compiled step per batch streamed from the records (the
  step the memory pipeline scans), checkpoints within epochs every `checkpoint.every_steps`
  with the iterators' state and the epoch's running metric sums, so a run killed mid-epoch
  resumes exactly."""

  step_fn: Any
  accumulate: Any
  iterators: list[Any]
  feed: Any  # streaming.device_batches over the iterators.
  args: tuple[Any, ...]  # (hparams, teacher variables)
  steps_per_epoch: int
  every_steps: int
  resume_step: int = 0
  resume_sums: dict[str, Any] | None = None

  @classmethod
  def start(cls, config, workdir: pathlib.Path, model: nn.Module, objective: Objective,
            setup: RunSetup, hparams: dict[str, jax.Array], mesh: jax.sharding.Mesh,
            member_batch: int, members: list[dict[str, Any]],
            resumed: dict[str, Any]) -> StreamedEpochs:
    """Streams for the run (one shared, or one per member), positioned where the checkpoint it
    resumes from (its meta, `resumed`; {} when fresh) left them."""
    from kd_jax.data import streaming  # pylint: disable=g-import-not-at-top  # grain: only here.
    shared = config.data.shared_order or len(members) == 1
    seeds = [config.seed] if shared else [m["seed"] for m in members]
    position = resumed.get("stream", {})
    if resumed and len(position.get("iterators", ())) != len(seeds):
      raise CheckpointError(
          f"The checkpoint in {workdir} holds {len(position.get('iterators', ()))} data "
          f"iterator states for {len(seeds)} streams of this run: it was not written by this "
          "run's grain pipeline. Use another --workdir, or --overwrite.")
    logits = ""
    if objective.teacher.to_cache_on_disk is not None:
      logits = str(cache_logits_on_disk(workdir, objective.teacher, setup, mesh, member_batch))
    streams = [streaming.TrainStream(
        paths=tuple(setup.prepared.paths("train")), image_shape=setup.prepared.image_shape,
        example_records=setup.train_records, seed=seed, batch_size=config.batch_size,
        num_epochs=config.num_epochs, max_shift=config.data.jitter,
        process_index=jax.process_index(), process_count=jax.process_count(),
        teacher_logits=logits) for seed in seeds]
    iterators = [iter(streaming.train_batches(stream, config.data.grain_workers,
                                              config.data.prefetch)) for stream in streams]
    try:
      for iterator, state in zip(iterators, position.get("iterators", ())):
        iterator.set_state(state)
    except BaseException:
      for iterator in iterators:
        iterator.close()
      raise
    population_step = jax.jit(functools.partial(
        steps.population_step, member_batch=member_batch,
        step_fn=make_step_fn(config, model, objective), shared_batch=shared),
                              out_shardings=parallelism.replicated(mesh), donate_argnums=(0,))
    sums = position.get("sums")
    return cls(step_fn=population_step, accumulate=jax.jit(steps.accumulate_metrics),
               iterators=iterators, feed=streaming.device_batches(iterators, mesh, shared),
               args=(hparams, objective.teacher.variables),
               steps_per_epoch=streams[0].steps_per_epoch,
               every_steps=config.checkpoint.every_steps,
               resume_step=position.get("step_in_epoch", 0),
               resume_sums=None if sums is None else {
                   name: jnp.asarray(values, jnp.int32 if name == "first_nonfinite_step"
                                     else jnp.float32) for name, values in sums.items()})

  def compiled(self, state: steps.TrainState) -> StreamedEpochs:
    del state  # The step compiles on its first batch.
    return self

  def train(self, state, epoch: int, loop: EpochLoop, guard) -> tuple[Any, dict[str, Any]]:
    """Steps through the rest of epoch `epoch`; returns epoch-mean metrics as the compiled epoch
    does (stopping early, before any save, once a loss is non-finite).

    Every `every_steps` steps it checkpoints; every `every_steps` (else SIGNAL_CHECK_STEPS) steps
    it asks whether any process was signalled, and if so checkpoints and stops: an epoch of a
    large dataset is too long to finish inside a scheduler's grace period.
    """
    start, sums = self.resume_step, self.resume_sums
    self.resume_step, self.resume_sums = 0, None
    check_every = self.every_steps or SIGNAL_CHECK_STEPS
    for step_in_epoch in range(start, self.steps_per_epoch):
      batch = next(self.feed)
      state, metrics = self.step_fn(state, batch, *self.args, jnp.int32(epoch),
                                    jnp.int32(step_in_epoch))
      sums = self.accumulate(sums, metrics, jnp.int32(step_in_epoch))
      done = step_in_epoch + 1
      if done % check_every or done == self.steps_per_epoch:
        continue  # The epoch's end is the loop's to save.
      if (np.asarray(jax.device_get(sums["first_nonfinite_step"])) >= 0).any():
        break  # The loop reports it, with the last good checkpoint.
      stopping = guard.requested()
      if stopping or (self.every_steps and done % self.every_steps == 0):
        loop.save(state, {"epoch": epoch, "test_errors": None, **self.position(done, sums)})
        faults.point(f"step_checkpoint:{int(state.step[0])}")
      if stopping:
        raise preemption.Preempted(
            f"{guard.signal_name or 'a signal on another process'}: saved checkpoint step "
            f"{int(state.step[0])} (step {done} of epoch {epoch + 1}) in {loop.workdir}. Rerun "
            "the same command to resume.")
    first_bad = sums["first_nonfinite_step"]  # Counted from the epoch's start; the loop counts
    metrics = {name: value / self.steps_per_epoch for name, value in sums.items()  # from `start`.
               if name != "first_nonfinite_step"}
    metrics["first_nonfinite_step"] = jnp.where(first_bad >= 0, first_bad - start, first_bad)
    return state, metrics

  def close(self) -> None:
    """Stops grain's threads and worker processes (their shared memory goes with them)."""
    for iterator in self.iterators:
      iterator.close()

  def position(self, step_in_epoch: int = 0, sums: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    """The checkpoint's record of where the streams are (grain's iterator states)."""
    stream = {"step_in_epoch": step_in_epoch,
              "iterators": [iterator.get_state() for iterator in self.iterators]}
    if sums is not None:
      stream["sums"] = {name: np.asarray(value).tolist()
                        for name, value in jax.device_get(sums).items()}
    return {"stream": stream}


SIGNAL_CHECK_STEPS = 50  # Streamed runs: steps between checks for a signal (a collective).


def cache_logits_on_disk(workdir: pathlib.Path, teacher: Teacher, setup: RunSetup,
                         mesh: jax.sharding.Mesh, member_batch: int) -> pathlib.Path:
  """A streamed run's teacher logits on its training records, computed once into
  WORKDIR/teacher_logits.npy ([records, M, C], rows keyed by record index, read by the pipeline
  with each batch; never on the devices whole), with teacher_logits.json naming the teacher and
  data that made them: reused on resume when both match (process 0 decides for all)."""
  from kd_jax.data import streaming  # pylint: disable=g-import-not-at-top
  path = workdir / checkpointing.TEACHER_LOGITS_FILE
  record = workdir / checkpointing.TEACHER_LOGITS_RECORD
  made_by = {"teacher": teacher.provenance["digest"], "data": setup.fingerprint["train"]}
  try:
    cached = path.exists() and json.loads(record.read_text()) == made_by
  except (OSError, json.JSONDecodeError):  # Missing or half-written: computed again.
    cached = False
  if parallelism.broadcast_from_main(cached):
    reporting.say(f"Teacher logits: {path} (cached earlier).")
    return path
  module, variables = teacher.to_cache_on_disk
  logits_fn = evaluation.logits_fn(module, setup.eval_batch, mesh, member_batch, 0, 0)
  split = streaming.StreamedSplit.of(setup.prepared, "train", setup.eval_batch,
                                     setup.train_records)
  start, rows, partial = time.perf_counter(), None, path.with_suffix(".tmp.npy")
  try:
    for keys, logits in streaming.stream_logits(split, functools.partial(logits_fn, variables),
                                                mesh):
      if rows is None and reporting.is_main_process():
        rows = _allocated_memmap(partial, logits.dtype, (
            setup.prepared.splits["train"]["num_examples"],) + logits.shape[1:])
      if rows is not None:
        rows[keys] = logits
    if rows is not None:
      rows.flush()
      del rows
      partial.replace(path)
  except OSError as e:
    raise CheckpointError(f"could not write the teacher's logits to {partial} ({e.strerror or e}); "
                          "is the disk full or read-only?") from e
  reporting.write_json(record, made_by)
  parallelism.sync_processes("kd_jax_teacher_logits")
  reporting.say(f"Cached the teacher's logits on the {split.num_examples} training records in "
                f"{path} in {time.perf_counter() - start:.1f}s.")
  return path


def _allocated_memmap(path: pathlib.Path, dtype, shape: tuple[int, ...]) -> np.memmap:
  """A .npy memory map whose blocks are allocated now: a full disk is an OSError here, not a
  SIGBUS when a row is written."""
  rows = np.lib.format.open_memmap(path, "w+", dtype, shape)
  try:
    with open(path, "r+b") as f:
      os.posix_fallocate(f.fileno(), 0, os.path.getsize(path))
  except OSError as e:
    if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # A filesystem that cannot: as before.
      raise
  return rows


@dataclasses.dataclass(frozen=True)
class EpochLoop:
  """The epoch loop of one run: train, evaluate, log, checkpoint; stops cleanly on a signal."""

  config: ml_collections.ConfigDict
  workdir: pathlib.Path
  setup: RunSetup
  evaluator: Callable[[Any, Any], dict[str, Any]]
  manager: ocp.CheckpointManager
  writer: reporting.MetricsWriter

  def save(self, state: steps.TrainState, meta: dict[str, Any]) -> None:
    checkpointing.save(self.manager, int(state.step[0]),
                       {**checkpointing.variable_items(state.variables),
                        "train": _resume_item(state)}, meta)

  def run(self, epochs: CompiledEpochs | StreamedEpochs, state: steps.TrainState,
          start_epoch: int) -> tuple[steps.TrainState, dict[str, Any]]:
    """Trains from `start_epoch` to the end; returns the final state and its test evaluation."""
    config, workdir = self.config, self.workdir
    epochs = epochs.compiled(state)
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
        state, train_metrics = epochs.train(state, epoch, self, guard)
        train_metrics = jax.device_get(train_metrics)
        epoch_time = time.perf_counter() - epoch_start
        train_time += epoch_time
        self._check_finite(train_metrics.pop("first_nonfinite_step"), step_before, epoch)
        results = {name: self.evaluator(state.variables, split)
                   for name, split in self.setup.eval_splits.items()}
        record = epoch_record(epoch + 1, int(state.step[0]), epoch_time, train_metrics, results)
        self.writer.write(record)
        test_errors = evaluation.errors_summary(results["test"])
        mean_loss = statistics.mean(np.atleast_1d(record["train_loss"]))
        bar.update(1)
        bar.set_postfix(loss=f"{mean_loss:.4f}", test_errors=test_errors)
        if reporting.is_main_process():
          parts = "".join(  # A distilled run: the soft term (KL x T^2) and the hard term.
              f"  {name} {statistics.mean(np.atleast_1d(record[f'train_{name}_loss'])):.4f}"
              for name in ("soft", "hard") if f"train_{name}_loss" in record)
          bar.write(f"epoch {epoch + 1:3d}  train_loss {mean_loss:.4f}{parts}  test_loss "
                    f"{evaluation.headline(results['test'])['loss']:.4f}  test_errors {test_errors}  "
                    f"time {epoch_time:.1f}s")
        stopping = guard.requested()
        if (stopping or epoch + 1 == config.num_epochs
            or (epoch + 1) % config.checkpoint.every_epochs == 0):
          self.save(state, {"epoch": epoch + 1,
                            "test_errors": evaluation.headline(results["test"])["errors"],
                            **epochs.position()})
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


def _resume_item(state: steps.TrainState) -> dict[str, Any]:
  """What a checkpoint's `train` item holds beside the params: all that resuming needs."""
  return {"step": state.step, "opt_state": state.opt_state, "rng": state.rng}


def _resume(workdir: pathlib.Path, config: ml_collections.ConfigDict, state: steps.TrainState,
            sharding) -> tuple[ocp.CheckpointManager, steps.TrainState, int, dict[str, Any]]:
  """Opens the checkpoint manager and restores the newest intact checkpoint, if any: one that
  fails its checksums is moved to WORKDIR/corrupted_checkpoints/ with a warning, and the one
  before it is used. Returns (manager, state, epoch to start from, the checkpoint's meta)."""
  manager = checkpointing.open_manager(workdir, max_to_keep=config.checkpoint.max_to_keep)
  while (step := manager.latest_step()) is not None:
    try:
      restored = checkpointing.restore(
          manager, step, {**checkpointing.variable_items(state.variables),
                          "train": _resume_item(state)}, sharding, workdir)
      break
    except CorruptCheckpointError as e:
      manager.close()
      quarantine = workdir / checkpointing.CORRUPTED_DIR / str(step)
      if reporting.is_main_process():
        quarantine.parent.mkdir(exist_ok=True)
        shutil.rmtree(quarantine, ignore_errors=True)
        (workdir / checkpointing.CHECKPOINT_DIR / str(step)).rename(quarantine)
      parallelism.sync_processes("kd_jax_quarantine")
      reporting.say(f"Warning: {e} Moved it to {quarantine}; resuming from the checkpoint "
                    "before it.")
      manager = checkpointing.open_manager(workdir, max_to_keep=config.checkpoint.max_to_keep)
  else:
    return manager, state, 0, {}
  train = restored["train"]
  state = steps.TrainState(step=train["step"], params=restored["params"],
                           opt_state=train["opt_state"], rng=train["rng"],
                           model_state=restored.get("model_state", {}))
  if int(state.step[0]) != step:
    raise CheckpointError(f"Checkpoint {step} in {workdir} holds step {int(state.step[0])}.")
  epoch = int(restored["meta"]["epoch"])
  within = restored["meta"].get("stream", {}).get("step_in_epoch", 0)
  reporting.say(f"Resuming {workdir} from checkpoint step {step} (epoch {epoch}"
                f"{f', step {within} of epoch {epoch + 1}' if within else ''}).")
  return manager, state, epoch, restored["meta"]
