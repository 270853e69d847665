"""Run extensions: what a kind of run changes in the library's set-up, behind one hook.

A config names its extension in `config.extension` as "package.module:NAME" (empty: none). The
library imports it by that path when it reads or trains the run, so a project (the paper's
specialists: `kd_jax.paper.specialist_lib:SPECIALISTS`) adds behaviour without the library
importing the project. An extension may add per-member settings to the population, per-member
arrays to the step's hyperparameters, change the loss and the batch sampler, give each member
labels of its own, and set the members' starting state.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Any, Callable

import ml_collections

from kd_jax.errors import ConfigError

Config = ml_collections.ConfigDict


@dataclasses.dataclass(frozen=True)
class Extension:
  """The hooks of a kind of run; each has the library's default behaviour as its default."""

  name: str
  # Raises ConfigError for the extension's own fields (after the library's validation).
  validate: Callable[[Config], None] = lambda config: None
  # The population: the library's members (seeds x sweeps) -> the run's, each with an "index".
  members: Callable[[Config, list[dict[str, Any]]], list[dict[str, Any]]] = (
      lambda config, members: members)
  # Extra per-member arrays for the step's hparams, [P, ...] each.
  hparams: Callable[[Config, list[dict[str, Any]]], dict[str, Any]] = (
      lambda config, members: {})
  # (loss_fn, sampler, label_maps) from the library's (loss_fn, sampler) and the hparams;
  # label_maps [P, C] score member p on label_maps[p][labels] (and leave no ensemble).
  objective: Callable[[Config, Any, Any, dict[str, Any]], tuple[Any, Any, Any]] = (
      lambda config, loss_fn, sampler, hparams: (loss_fn, sampler, None))
  # The members' fresh state (TrainState, members, mesh) -> TrainState.
  initial_state: Callable[[Config, Any, list[dict[str, Any]], Any], Any] = (
      lambda config, state, members, mesh: state)
  # Why `kd_jax.evaluate` cannot score such a run on its own, or "" when it can.
  evaluate_elsewhere: str = ""


@functools.cache
def _load(path: str) -> Extension:
  module_name, _, attribute = path.partition(":")
  try:
    extension = getattr(importlib.import_module(module_name), attribute)
  except (ImportError, AttributeError, ValueError) as e:
    raise ConfigError(f"config.extension={path!r} cannot be imported ({e}).") from e
  if not isinstance(extension, Extension):
    raise ConfigError(f"config.extension={path!r} is not a kd_jax.extensions.Extension.")
  return extension


def of(config: Config) -> Extension | None:
  """The config's extension, or None for a plain run."""
  path = config.get("extension") or ""
  return _load(path) if path else None
