"""The Python API: train a run, distil one from a teacher, load one, and use it.

  import kd_jax
  teacher = kd_jax.train(kd_jax.configs.get("quick_teacher"), workdir="runs/t")
  student = kd_jax.distill(kd_jax.configs.get("quick_distill"), teacher=teacher, workdir="runs/s")
  report = student.evaluate()            # eval.json's content
  probs = student.predict(images)        # [B, num_classes]; a population's ensemble
  same = kd_jax.load("runs/s")           # the same Run, from disk

The commands (`python -m kd_jax.train`, `distill`, `pipeline`, ...) call these functions, so the
command line and Python behave alike: the same validation, resume, refusals and files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
from typing import Any, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from kd_jax import (checkpointing, config_lib, evaluation, losses, models, parallelism, reporting,
                    trainer)
from kd_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Run:
  """A trained run: its directory, config, model and variables on this process's devices.

  `variables` holds every collection of the model ({'params': ..., and e.g. 'batch_stats'}), each
  leaf stacked on a leading member axis (P = 1 for one model). Build one with `train`, `distill`
  or `load`.
  """

  workdir: pathlib.Path
  config: ml_collections.ConfigDict
  model: nn.Module
  variables: dict[str, Any]
  step: int
  teacher_model: nn.Module | None = None  # A user's teacher module its config cannot rebuild.

  @property
  def params(self) -> Any:
    """The members' parameters, member axis first."""
    return self.variables["params"]

  @property
  def members(self) -> list[dict[str, Any]]:
    """The members: {index, seed, learning_rate[, temperature, alpha]} each (population.json)."""
    return config_lib.population_members(self.config)

  @property
  def metrics(self) -> list[dict[str, Any]]:
    """The per-epoch records of metrics.jsonl (empty for a run that logged none)."""
    path = self.workdir / checkpointing.METRICS_FILE
    return reporting.read_metrics(path) if path.exists() else []

  def evaluate(self, step: int | None = None, ensemble: str = "arithmetic") -> dict[str, Any]:
    """Scores the checkpoint (latest or `step`) on the test set; writes and returns eval.json's
    content (a population: every member and their `ensemble`, arithmetic or geometric)."""
    with quiet_logs():
      return evaluation.evaluate_checkpoint(self.workdir, step, ensemble=ensemble,
                                            model=self.model, teacher_model=self.teacher_model)

  def predict(self, images: Any, member: int | None = None) -> np.ndarray:
    """Class probabilities [B, num_classes] at T = 1 for images [B, H, W]: uint8 pixels as
    stored, or floats in [0, 1]. A population gives its ensemble (the average of its members'
    probabilities) unless `member` picks one. Any batch size; eval mode (no dropout, BatchNorm's
    running statistics)."""
    images = check_images(images, tuple(self.config.model.input_shape))
    num_members = len(self.members)
    variables = self.variables
    if member is not None:
      if not 0 <= member < num_members:
        raise ValueError(f"member={member}: this run has {num_members} member(s).")
      variables = jax.tree.map(lambda leaf: leaf[member:member + 1], variables)
    mesh = parallelism.make_mesh()
    logits = evaluation.logits_of(
        self.model, variables, jnp.asarray(images),
        parallelism.eval_batch_size(self.config.eval_batch_size, mesh), mesh,
        parallelism.member_batch(self.config.member_batch, jax.tree.leaves(variables)[0].shape[0]))
    return np.asarray(jnp.exp(losses.ensemble_log_probabilities(logits)))

  def __repr__(self) -> str:
    population = f", {len(self.members)} members" if len(self.members) > 1 else ""
    return (f"Run({str(self.workdir)!r}, {models.describe(self.config.model)}{population}, "
            f"step {self.step})")


def check_images(images: Any, image_shape: tuple[int, ...]) -> np.ndarray:
  """`images` as a host array a model takes: uint8 pixels, or floats in [0, 1] (as float32), of
  shape [B, *image_shape]; anything else is a ValueError saying what was expected."""
  images = np.asarray(images)
  if tuple(images.shape[1:]) != image_shape:
    raise ValueError(f"images of shape {images.shape}: expected [batch, "
                     f"{', '.join(map(str, image_shape))}].")
  if images.dtype == np.uint8:
    return images
  if not np.issubdtype(images.dtype, np.floating):
    raise ValueError(f"images of dtype {images.dtype}: expected uint8 pixels (0-255) or floats "
                     "in [0, 1].")
  if images.size and (not np.isfinite(images).all() or images.min() < 0 or images.max() > 1):
    raise ValueError(f"float images must lie in [0, 1] (these span {images.min():g} to "
                     f"{images.max():g}); give uint8 pixels as they are, or divide by 255.")
  return images.astype(np.float32)


VERBOSE_ENV = "KD_JAX_VERBOSE"


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
  """orbax's logs hidden for the duration (our own lines say what happened, and its ERROR pages
  precede an exception that says it in one line), the previous verbosity restored after;
  `KD_JAX_VERBOSE=1` (or a command's --debug) keeps them."""
  if os.environ.get(VERBOSE_ENV):
    yield
    return
  previous = logging.get_verbosity()
  logging.set_verbosity(logging.FATAL)
  try:
    yield
  finally:
    logging.set_verbosity(previous)


def use_deterministic_kernels() -> bool:
  """Asks XLA for deterministic GPU kernels (--xla_gpu_deterministic_ops), so a resumed run
  matches an uninterrupted one on GPUs too (CPU runs are deterministic anyway). The commands do
  this unless --nodeterministic; from Python, call it before the first jax computation. Returns
  False, changing nothing, when jax's backend has already started (too late for the flag)."""
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  if xla_bridge.backends_are_initialized():
    return False
  flag = "--xla_gpu_deterministic_ops=true"
  if flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), flag]).strip()
  return True


def _own_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """An unlocked copy, so recording the model or the teacher never changes the caller's config."""
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"config must be an ml_collections.ConfigDict (kd_jax.configs.get(NAME)), "
                      f"not {type(config).__name__}.")
  return ml_collections.ConfigDict(config.copy_and_resolve_references().to_dict())


def _fit(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
         model: nn.Module | None, overwrite: bool, teacher_model: nn.Module | None = None,
         require_teacher: bool = False, restart_on_new_teacher: bool = False) -> Run:
  if model is not None:
    models.record_model(config.model, model)
  config_lib.validate(config, require_teacher=require_teacher)
  with quiet_logs():
    trainer.train_and_evaluate(config, workdir, overwrite, restart_on_new_teacher, model=model,
                               teacher_model=teacher_model)
  return load(workdir, model=model, teacher_model=teacher_model)


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
          model: nn.Module | None = None, overwrite: bool = False) -> Run:
  """Trains `config` into `workdir` and returns the Run (a config naming a teacher distils).

  The config is validated first (one ConfigError naming the field). A workdir holding this run
  resumes from its latest intact checkpoint, or is returned as it is when finished; one holding a
  different run is refused unless `overwrite`. `model` is a Flax module of your own, used instead
  of `config.model.name`'s and recorded in the run (by import path, with its fields) so `load`
  can rebuild it; a module defined in a notebook must be passed to `load` again. Ctrl-C or
  SIGTERM stops after the epoch in flight with a checkpoint and raises `kd_jax.Preempted`; call
  `train` again to resume.
  """
  return _fit(_own_config(config), workdir, model=model, overwrite=overwrite)


def distill(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
            teacher: Run | str | os.PathLike, model: nn.Module | None = None,
            overwrite: bool = False, restart_on_new_teacher: bool = False) -> Run:
  """Distils the student of `config` from `teacher` (a Run, or a run directory) into `workdir`.

  The teacher runs in eval mode and is built from its own run (a Run's model, else its config);
  a population teacher is the ensemble of its members (`config.teacher_members` picks some).
  `restart_on_new_teacher` replaces a student distilled from another teacher instead of refusing
  it. Otherwise as `train`.
  """
  config = _own_config(config)
  teacher_dir = teacher.workdir if isinstance(teacher, Run) else pathlib.Path(teacher)
  if config.get("teacher_workdir") not in ("", None, str(teacher_dir)):
    raise ConfigError(f"config.teacher_workdir={config.teacher_workdir} contradicts "
                      f"teacher={teacher_dir}; give the teacher once.")
  if "teacher_workdir" not in config:
    raise ConfigError("the config has no distillation fields (temperature, alpha, ...): start "
                      "from a distillation config such as kd_jax.configs.get('quick_distill').")
  config.teacher_workdir = str(teacher_dir)
  return _fit(config, workdir, model=model, overwrite=overwrite, require_teacher=True,
              teacher_model=teacher.model if isinstance(teacher, Run) else None,
              restart_on_new_teacher=restart_on_new_teacher)


def load(workdir: str | os.PathLike, *, model: nn.Module | None = None,
         teacher_model: nn.Module | None = None, step: int | None = None) -> Run:
  """The run in `workdir` (its latest checkpoint, or `step`), restored on this process's devices
  whatever layout wrote it. `model` is needed only for a module the run cannot rebuild by itself
  (one defined in a notebook)."""
  workdir = pathlib.Path(workdir)
  with quiet_logs():
    variables, config, step = checkpointing.restore_variables(
        workdir, parallelism.make_mesh(), step, model=model)
  model = models.model_from_config(config.model) if model is None else model
  return Run(workdir=workdir, config=config, model=model, variables=variables, step=step,
             teacher_model=teacher_model)
