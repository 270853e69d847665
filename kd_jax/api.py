"""The Python API: train a run, distil one from a teacher, load one, and use it.

The commands (`python -m kd_jax.train`, `distill`, `pipeline`, ...) call these functions, so the
command line and Python behave alike: the same validation, resume, refusals and files.

Example:
    ```python
    import kd_jax

    teacher = kd_jax.train(kd_jax.configs.get("quick_teacher"), workdir="runs/t")
    student = kd_jax.distill(kd_jax.configs.get("quick_distill"), teacher=teacher,
                             workdir="runs/s")
    report = student.evaluate()      # eval.json's content
    probs = student.predict(images)  # [B, num_classes]; a population's ensemble
    same = kd_jax.load("runs/s")     # the same Run, from disk
    ```
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kd_jax import (config_lib, data, evaluate, losses, models, population, reporting, rundir,
                    runs, runtime, trainer)
from kd_jax.errors import ConfigError
from kd_jax.runtime import use_deterministic_kernels  # Re-exported: part of the API.

__all__ = ["Run", "distill", "load", "train", "use_deterministic_kernels"]


@dataclasses.dataclass(frozen=True)
class Run(runs.Run):
  """A trained run: its directory, config, model and variables on this process's devices.

  `variables` holds every collection of the model ({'params': ..., and e.g. 'batch_stats'}), each
  leaf stacked on a leading member axis (P = 1 for one model). Build one with `train`, `distill`
  or `load`.
  """

  teacher_model: nn.Module | None = None  # A user's teacher module its config cannot rebuild.

  @property
  def params(self) -> Any:
    """The members' parameters, member axis first."""
    return self.variables["params"]

  @property
  def members(self) -> list[dict[str, Any]]:
    """The members: {index, seed, learning_rate[, temperature, alpha]} each (population.json)."""
    return population.members(self.config)

  @property
  def metrics(self) -> list[dict[str, Any]]:
    """The per-epoch records of metrics.jsonl (empty for a run that logged none)."""
    path = self.workdir / rundir.METRICS_FILE
    return reporting.read_metrics(path) if path.exists() else []

  def evaluate(self, step: int | None = None, ensemble: str = "arithmetic") -> dict[str, Any]:
    """Scores the checkpoint (latest or `step`) on the test set; writes and returns eval.json's
    content (a population: every member and their `ensemble`, arithmetic or geometric)."""
    return evaluate.evaluate_checkpoint(self.workdir, step, ensemble=ensemble, model=self.model,
                                        teacher_model=self.teacher_model)

  def predict(self, images: Any, member: int | None = None) -> np.ndarray:
    """Class probabilities [B, num_classes] at T = 1 for images [B, H, W]: uint8 pixels as
    stored, or floats in [0, 1]. A population gives its ensemble (the average of its members'
    probabilities) unless `member` picks one. Any batch size; eval mode (no dropout, BatchNorm's
    running statistics)."""
    images = data.check_images(images, tuple(self.config.model.input_shape))
    run = self
    if member is not None:
      if not 0 <= member < self.num_members:
        raise ValueError(f"member={member}: this run has {self.num_members} member(s).")
      run = dataclasses.replace(self, variables=jax.tree.map(
          lambda leaf: leaf[member:member + 1], self.variables))
    return np.asarray(jnp.exp(losses.ensemble_log_probabilities(run.logits(images))))

  def __repr__(self) -> str:
    population_size = f", {len(self.members)} members" if len(self.members) > 1 else ""
    return f"Run({str(self.workdir)!r}, {self.describe()}{population_size}, step {self.step})"


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
  with runtime.quiet_logs():
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
  with runtime.quiet_logs():
    return Run.open(workdir, step=step, model=model, teacher_model=teacher_model)
