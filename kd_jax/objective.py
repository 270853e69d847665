"""What a run optimises: its optimizer, its loss and its targets (the teacher), from the config.

The objective phase of a run. Hard-label training has no teacher; a distilled run opens its
teacher's run (`runs.Run.open`, eval mode), and either computes the teacher's logits once on a
fixed transfer set (cached: in memory for the memory pipeline, in WORKDIR/teacher_logits.npy for
a streamed one) or runs the teacher inside the step on each jittered view. A run's extension
(the paper's specialists) may change the loss and the sampler here, and nowhere else.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import pathlib
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kd_jax import (checkpointing, config_lib, extensions, features, inputs, losses, models,
                    parallelism, population, reporting, rundir, runs, steps, targets)
from kd_jax.data import records
from kd_jax.errors import CheckpointError, ConfigError


@dataclasses.dataclass(frozen=True)
class Teacher:
  """What the step needs from the teacher: its targets function and the arguments it takes."""

  targets_fn: targets.TargetsFn
  variables: Any  # Stacked [M, ...], or None when its logits are cached in the train data.
  cached_logits: jax.Array | None  # [N, M, C] on the un-jittered training images, or None.
  provenance: dict[str, Any] | None = None  # Which teacher it is: the student's teacher.json.
  # Streamed runs whose logits `cache_logits_on_disk` writes once into the workdir (the pipeline
  # reads their rows with each batch): the teacher's run; None otherwise.
  to_cache_on_disk: runs.Run | None = None
  # The adapters its features need on the student's side (`losses.adapter_name`: (in, out)).
  adapter_shapes: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
  # Its log-probabilities at T = 1 on the (padded) test split, computed once, so that every
  # evaluation measures the student's fit to it (memory pipeline; None otherwise).
  test_log_probs: jax.Array | None = None
  # `teacher_views_dir`'s folder for this run's views and teacher (`views_store`), or None.
  views_store: pathlib.Path | None = None


NO_TEACHER = Teacher(targets.no_targets, None, None)


@dataclasses.dataclass(frozen=True)
class Objective:
  """What the step optimises: its optimizer, loss, targets (the teacher) and data sampler."""

  optimizer: steps.Optimizer
  loss_fn: losses.LossFn
  teacher: Teacher
  sampler: steps.Sampler
  label_maps: jax.Array | None  # Members' own classes (an extension's): evaluation maps labels.
  student_features: tuple[str, ...] = ()  # The student's features its loss terms read.
  # The adapters a feature term trains beside the student: {name: (in features, out features)}.
  adapter_shapes: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
  mixup_p: float = 0.0  # > 0: function matching, each batch mixed up (`data.mixup`).
  independent_views: bool = False  # The teacher sees a jitter of its own.


def build(config: ml_collections.ConfigDict, run_inputs: inputs.Inputs,
          members: population.Population, mesh: jax.sharding.Mesh,
          extension: extensions.Extension | None,
          teacher_model: nn.Module | None = None, student_model: nn.Module | None = None
          ) -> Objective:
  """The optimizer, loss and targets of the config: hard labels, or distillation from its
  teacher (logits cached once when the transfer set is fixed); an extension's loss and sampler."""
  steps_per_epoch = run_inputs.num_train // config.batch_size
  if steps_per_epoch == 0:
    raise ConfigError(f"config.batch_size={config.batch_size} is larger than the "
                      f"{run_inputs.num_train} training examples.")
  loss_fn, teacher, teaching = losses.hard_label_loss, NO_TEACHER, ""
  terms, pairs = config_lib.loss_terms(config)  # Empty without a teacher.
  if config.get("teacher_workdir"):  # config_fields.is_distillation, read here with the rest.
    teaching = config.get("teaching", "consistent")
    loss_fn = losses.make_distillation_loss(
        config.soft_loss, config.teacher_ensemble, config.soft_t_squared, terms,
        {name: config.terms[name].warmup_epochs for name in terms}, steps_per_epoch, pairs)
    teacher = _teacher(config, run_inputs, mesh, members.member_batch, teacher_model, pairs,
                       student_model or models.model_from_config(config.model))
    teacher = dataclasses.replace(teacher, views_store=views_store(config, run_inputs, members,
                                                                   teacher, bool(pairs)))
  sampler, label_maps = steps.shuffled_batches, None
  if extension:  # The one place a kind of run (specialists) changes the objective.
    loss_fn, sampler, label_maps = extension.objective(config, loss_fn, sampler, members.hparams)
  student_features = tuple(dict.fromkeys(s for term in pairs.values() for s, _ in term))
  return Objective(steps.make_optimizer(config, steps_per_epoch), loss_fn, teacher, sampler,
                   label_maps, student_features, teacher.adapter_shapes,
                   mixup_p=config.mixup_p if teaching == "function_matching" else 0.0,
                   independent_views=teaching == "independent")


VIEWS_KEY_FILE = "views.json"  # In each folder of teacher_views_dir: what its key was made of.


def views_store(config: ml_collections.ConfigDict, run_inputs: inputs.Inputs,
                members: population.Population, teacher: Teacher,
                feature_terms: bool) -> pathlib.Path | None:
  """`teacher_views_dir`'s folder for this run: named by a digest of the views (the seed whose
  order, jitter and mixup the members share, the batch size, jitter, teaching mode, mixup and
  the training data's fingerprint) and the teacher (a digest of all its variables, the members
  used), so any run with the same views and teacher reads what another stored. None when unset;
  a ConfigError for a run whose teacher outputs cannot be stored this way."""
  if not config.get("teacher_views_dir"):
    return None
  refuse = lambda why: ConfigError(f"config.teacher_views_dir={config.teacher_views_dir!r} {why}.")
  if run_inputs.streamed or jax.process_count() > 1:
    raise refuse("needs the memory pipeline in one process")
  if teacher.variables is None:
    raise refuse("has nothing to store: the teacher's logits are cached once (a fixed transfer "
                 "set)")
  if feature_terms:
    raise refuse("stores logits: feature terms read the teacher's features in the step")
  if members.size > 1 and not config.data.shared_order:
    raise refuse("needs members that share their batches: one member, or data.shared_order=True")
  key = {"teacher": checkpointing.combined_digest(checkpointing.array_digests(teacher.variables)),
         "teacher_members": list(config.teacher_members),
         "views": {"seed": config.seed, "batch_size": config.batch_size,
                   "jitter": config.data.jitter, "teaching": config.teaching,
                   "mixup_p": config.mixup_p if config.teaching == "function_matching" else 0.0,
                   "train_examples": run_inputs.num_train, "data": run_inputs.fingerprint}}
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  folder = pathlib.Path(config.teacher_views_dir) / digest
  with reporting.written(folder):
    folder.mkdir(parents=True, exist_ok=True)
  if not (folder / VIEWS_KEY_FILE).exists():
    reporting.write_json(folder / VIEWS_KEY_FILE, key)
  return folder


def stored_views(folder: pathlib.Path, epoch: int) -> np.ndarray | None:
  """The teacher's outputs on epoch `epoch`'s views, as `store_views` wrote them into `folder`;
  None when they are not there, or fail the sha256 recorded beside them (with a notice)."""
  path, record = folder / f"epoch_{epoch:05d}.npy", folder / f"epoch_{epoch:05d}.json"
  try:
    sha256 = json.loads(record.read_text())["sha256"]
  except (OSError, json.JSONDecodeError, KeyError):  # Not stored, or cut off mid-write.
    return None
  if not path.exists() or records.file_digest(path)["sha256"] != sha256:
    reporting.say(f"Note: {path} is missing or does not match its recorded sha256: computing "
                  "the teacher's outputs on that epoch's views again.")
    return None
  return np.load(path)


def store_views(folder: pathlib.Path, epoch: int, outputs: np.ndarray) -> None:
  """Writes the teacher's outputs on epoch `epoch`'s views (temp file then rename) and their
  sha256 after them, so a reader sees the whole file or none."""
  path = folder / f"epoch_{epoch:05d}.npy"
  partial = path.with_suffix(".tmp.npy")
  with reporting.written(path):
    np.save(partial, outputs)
    partial.replace(path)
  reporting.write_json(folder / f"epoch_{epoch:05d}.json",
                       {"sha256": records.file_digest(path)["sha256"],
                        "shape": list(outputs.shape), "dtype": str(outputs.dtype)})


def _teacher(config: ml_collections.ConfigDict, run_inputs: inputs.Inputs,
             mesh: jax.sharding.Mesh, member_batch: int, teacher_model: nn.Module | None,
             feature_pairs: dict[str, tuple[tuple[str, str], ...]],
             student_model: nn.Module) -> Teacher:
  """Opens the teacher (all or `teacher_members` of a population) as `teacher_model` when given.

  Without jitter the transfer set is fixed, so its logits are computed once and the step
  gathers them (config.cache_teacher_logits); with jitter, or features for a loss term's
  `feature_pairs` (one teacher's), the teacher runs inside the step. Either way it runs in eval
  mode (running statistics, no dropout), unless `teacher_dropout_masks` > 0 averages the cached
  targets over dropout masks.
  """
  teacher = runs.Run.open(config.teacher_workdir, mesh=mesh, model=teacher_model,
                          members=tuple(config.teacher_members) or None)
  _check_teacher_fits(teacher, tuple(config.model.input_shape), config.model.num_classes)
  ensemble = f", an ensemble of {teacher.num_members} members" if teacher.num_members > 1 else ""
  reporting.say(f"Teacher: {teacher.describe()} from {config.teacher_workdir} (step "
                f"{teacher.step}){ensemble}.")
  finished = checkpointing.finished_step(teacher.workdir, teacher.config) == teacher.step
  if not finished:
    reporting.say(f"Warning: the teacher in {config.teacher_workdir} has not finished its "
                  f"{teacher.config.num_epochs} epochs (checkpoint step {teacher.step}); "
                  "distilling from it as it is now.")
  provenance = {"workdir": str(teacher.workdir.absolute()), "step": teacher.step,
                "members": list(config.teacher_members) or "all",
                "digest": checkpointing.combined_digest(
                    checkpointing.array_digests(teacher.variables["params"])),
                "finished": finished}
  teacher_features = tuple(dict.fromkeys(t for pairs in feature_pairs.values() for _, t in pairs))
  adapter_shapes = (_check_features(config, student_model, teacher, feature_pairs)
                    if teacher_features else {})
  cached = _cached(config, bool(teacher_features))
  if run_inputs.streamed and cached:
    return Teacher(targets.cached_targets, None, None, provenance, teacher)
  if run_inputs.streamed:
    return Teacher(targets.make_teacher_targets(teacher.model, member_batch, teacher_features),
                   teacher.variables, None, provenance, adapter_shapes=adapter_shapes)
  test_log_probs = losses.ensemble_log_probabilities(
      runs.logits_of(teacher.model, teacher.variables, run_inputs.eval_splits["test"].images,
                     run_inputs.eval_batch, mesh, member_batch), mean=config.teacher_ensemble)
  if not cached:
    return Teacher(targets.make_teacher_targets(teacher.model, member_batch, teacher_features),
                   teacher.variables, None, provenance, adapter_shapes=adapter_shapes,
                   test_log_probs=test_log_probs)
  logits = cache_logits(teacher, run_inputs.train_data["image"], run_inputs.eval_batch, mesh,
                        member_batch, config.teacher_dropout_masks, config.teacher_dropout_seed)
  return Teacher(targets.cached_targets, None, logits, provenance, test_log_probs=test_log_probs)


def _check_teacher_fits(teacher: runs.Run, input_shape: tuple[int, ...], num_classes: int) -> None:
  """Refuses a teacher that cannot read the student's images or scores other classes (trained on
  another dataset), before training: a CheckpointError naming both shapes, where the step would
  fail inside flax."""
  images = jax.ShapeDtypeStruct((2, *input_shape), jnp.float32)
  member = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype),
                        teacher.variables)
  teacher_shape = tuple(teacher.config.model.get("input_shape", input_shape))
  try:
    logits = jax.eval_shape(lambda v, x: teacher.model.apply(v, x, train=False), member, images)
    out = tuple(logits.shape)
  except Exception:  # pylint: disable=broad-except  # flax's shape errors, a module's own.
    out = None
  if teacher_shape != input_shape or out != (2, num_classes):
    classes = f"{out[-1]} classes" if out else "cannot read them"
    raise CheckpointError(
        f"The teacher in {teacher.workdir} was trained on images {teacher_shape} "
        f"({teacher.config.model.get('num_classes', '?')} classes); the student's data has images "
        f"{input_shape} and {num_classes} classes (on the student's images the teacher "
        f"{'gives ' + classes if out else classes}). Distil from a teacher of the same dataset.")


def _cached(config: ml_collections.ConfigDict, features: bool) -> bool:
  """Whether the teacher's logits are computed once (on the un-augmented transfer set) rather
  than in the step, by `config.teaching`: always for fixed, for consistent when the views are
  the images themselves (no jitter), never for independent and function_matching views; a
  ConfigError for a mode these settings cannot serve."""
  teaching = config.get("teaching", "consistent")
  refuse = lambda why: ConfigError(f"config.teaching={teaching!r} {why}.")
  if teaching == "fixed" and (not config.cache_teacher_logits or features):
    raise refuse("caches the teacher's logits: it needs cache_teacher_logits=True and no "
                 "feature terms (their features come from the teacher in the step)")
  if teaching == "independent" and not config.data.jitter:
    raise refuse("gives the teacher a jitter of its own: it needs data.jitter > 0")
  if teaching in ("independent", "function_matching") and config.teacher_dropout_masks:
    raise refuse("runs the teacher in the step: teacher_dropout_masks needs cached logits")
  if teaching == "fixed":
    return True
  return (teaching == "consistent" and not config.data.jitter and config.cache_teacher_logits
          and not features)


def _check_features(config: ml_collections.ConfigDict, student: nn.Module, teacher: runs.Run,
                    feature_pairs: dict[str, tuple[tuple[str, str], ...]]
                    ) -> dict[str, tuple[int, int]]:
  """Refuses, before training, feature terms the models cannot serve: a teacher of several
  members, a path a model does not have (ConfigError naming the field and the features there
  are), or features a term compares position by position (AT's maps, FitNets' hints) of
  different spatial sizes. Returns the shapes of the adapters FitNets trains (student channels
  to teacher channels)."""
  if teacher.num_members != 1:
    raise ConfigError(f"feature terms ({', '.join(feature_pairs)}) distil from one teacher; "
                      f"{config.teacher_workdir} has {teacher.num_members} members: pick one "
                      "with config.teacher_members=(i,).")
  images = jax.ShapeDtypeStruct((2, *config.model.input_shape), jnp.float32)
  variables = {"student": lambda x: student.init(jax.random.key(0), x, train=False),
               "teacher": lambda x: steps.take_member(teacher.variables, 0)}
  shapes = {}
  for side, model in (("student", student), ("teacher", teacher.model)):
    paths = {pair[side == "teacher"]: name for name, pairs in feature_pairs.items()
             for pair in pairs}
    try:
      shapes[side] = jax.eval_shape(lambda x, model=model, side=side: features.apply(
          model, variables[side](x), x, tuple(paths), train=False)[1], images)
    except KeyError as e:
      name = next((name for path, name in paths.items() if repr(path) in str(e)),
                  next(iter(feature_pairs)))
      raise ConfigError(f"config.terms.{name}.{side}: {e.args[0]}") from None
  adapter_shapes = {}
  for name in ("at", "fitnets"):
    for index, (student_path, teacher_path) in enumerate(feature_pairs.get(name, ())):
      s, t = shapes["student"][student_path].shape, shapes["teacher"][teacher_path].shape
      if s[1:-1] != t[1:-1]:
        raise ConfigError(f"config.terms.{name}: the student's {student_path} {s[1:]} and the "
                          f"teacher's {teacher_path} {t[1:]} differ in spatial size (the term "
                          "compares them position by position)")
      if name == "fitnets":
        adapter_shapes[losses.adapter_name(name, index)] = (s[-1], t[-1])
  return adapter_shapes


def cache_logits(teacher: runs.Run, images: jax.Array, eval_batch: int, mesh: jax.sharding.Mesh,
                 member_batch: int, masks: int = 0, dropout_seed: int = 0) -> jax.Array:
  """The teacher's logits [N, M, C] on a fixed transfer set, computed once; with `masks` > 0, in
  train mode under that many dropout masks per image ([N, M * masks, C])."""
  if masks and set(teacher.variables) != {"params"}:
    raise ConfigError(f"teacher_dropout_masks={masks} runs the teacher in train mode, which would "
                      f"also update its {sorted(set(teacher.variables) - {'params'})}: use it "
                      "with a teacher without running statistics (no BatchNorm).")
  start = time.perf_counter()
  logits = jax.block_until_ready(runs.logits_of(teacher.model, teacher.variables, images,
                                                eval_batch, mesh, member_batch, masks,
                                                dropout_seed))
  under = f" under {masks} dropout masks each" if masks else ""
  reporting.say(f"Cached the teacher's logits on the {images.shape[0]} training images{under} in "
                f"{time.perf_counter() - start:.1f}s.")
  return logits


def cache_logits_on_disk(workdir: pathlib.Path, teacher: Teacher, run_inputs: inputs.Inputs,
                         mesh: jax.sharding.Mesh, member_batch: int) -> pathlib.Path:
  """A streamed run's teacher logits on its training records, computed once into
  WORKDIR/teacher_logits.npy ([records, M, C], rows keyed by record index, read by the pipeline
  with each batch; never on the devices whole), with teacher_logits.json naming the teacher and
  data that made them and the file's sha256: reused on resume when all three match (process 0
  decides for all); a file that fails its sha256 is computed again, with a notice."""
  from kd_jax.data import streaming  # pylint: disable=g-import-not-at-top  # grain: only here.
  path = workdir / rundir.TEACHER_LOGITS_FILE
  record = workdir / rundir.TEACHER_LOGITS_RECORD
  made_by = {"teacher": teacher.provenance["digest"], "data": run_inputs.fingerprint["train"]}
  cached = False
  if reporting.is_main_process():
    try:
      recorded = json.loads(record.read_text())
    except (OSError, json.JSONDecodeError):  # Missing or half-written: computed again.
      recorded = {}
    if path.exists() and {k: recorded.get(k) for k in made_by} == made_by:
      cached = recorded.get("sha256") == records.file_digest(path)["sha256"]
      if not cached:
        reporting.say(f"Note: {path} does not match the sha256 recorded in {record} when it was "
                      "written (changed or corrupted): computing the teacher's logits again.")
  if parallelism.broadcast_from_main(cached):
    reporting.say(f"Teacher logits: {path} (cached earlier).")
    return path
  run = teacher.to_cache_on_disk
  logits_fn = runs.logits_fn(run.model, run_inputs.eval_batch, mesh, member_batch, 0, 0)
  split = streaming.StreamedSplit.of(run_inputs.prepared, "train", run_inputs.eval_batch,
                                     run_inputs.train_records)
  start, rows, partial = time.perf_counter(), None, path.with_suffix(".tmp.npy")
  try:
    for keys, logits in streaming.stream_logits(
        split, lambda images: logits_fn(run.variables, images), mesh):
      if rows is None and reporting.is_main_process():
        rows = _allocated_memmap(partial, logits.dtype, (
            run_inputs.prepared.splits["train"]["num_examples"],) + logits.shape[1:])
      if rows is not None:
        rows[keys] = logits
    if rows is not None:
      rows.flush()
      del rows
      partial.replace(path)
  except OSError as e:
    raise CheckpointError(f"could not write the teacher's logits to {partial} ({e.strerror or e}); "
                          "is the disk full or read-only?") from e
  if reporting.is_main_process():
    reporting.write_json(record, {**made_by, "sha256": records.file_digest(path)["sha256"]})
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
