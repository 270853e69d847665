"""Config defaults shared by the files under configs/, and their validation.

Every training config has num_epochs, batch_size (global, across all devices), learning_rate and
seed at the top level; distillation configs add temperature, alpha, soft_loss and
teacher_workdir. A config with a non-empty teacher_workdir is a distillation run, whichever
command runs it. `validate` turns every bad value into a ConfigError naming the field.

A run is a population: `members` seeds (seed, seed + 1, ...) for each point of the grid spanned by
the non-empty tuples of `sweep` (temperature, alpha, learning_rate); `kd_jax.population` lists
them. The default, one member and no sweep, is a single model.

Each field is declared once, in `kd_jax.config_fields.FIELDS`: default, type, the check of its
value alone, meaning and readers. base_config(), add_distillation() and validate()'s per-field
checks derive from it; checks that relate fields are code in validate().
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import ml_collections

from kd_jax import data, extensions, losses
from kd_jax.config_fields import (FIELDS, TERM_FIELDS, TERM_NAMES, is_class_tuple,
                                  is_distillation)
from kd_jax.errors import ConfigError


def get_path(config: ml_collections.ConfigDict, name: str, default: Any = None) -> Any:
  """config's value at dotted `name` ('terms.dkd.beta'), or `default` where it has none."""
  for part in name.split("."):
    if not isinstance(config, (dict, ml_collections.ConfigDict)) or part not in config:
      return default
    config = config[part]
  return config


def active_terms(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The loss terms a distillation config adds (`TERM_NAMES` with a weight, or a swept one)."""
  return tuple(name for name in TERM_NAMES if is_distillation(config) and (
      get_path(config, f"terms.{name}.weight", 0.0)
      or any(get_path(config, f"sweep.terms.{name}.weight", ()))))


def loss_terms(config: ml_collections.ConfigDict) -> tuple[tuple[str, ...], dict[str, Any]]:
  """The active terms, and per active feature term its (student path, teacher path) pairs."""
  terms = active_terms(config)
  return terms, {name: tuple(zip(config.terms[name].student, config.terms[name].teacher))
                 for name in terms if name in losses.FEATURE_TERMS}


def term_hparam_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The per-member hyperparameters of the config's active terms ('terms.dkd.beta', ...)."""
  return tuple(name for name, field in FIELDS.items() if field.sweepable
               and name.split(".")[1] in active_terms(config))


def _set_defaults(config: ml_collections.ConfigDict, distillation: bool,
                  **values: Any) -> ml_collections.ConfigDict:
  for field in FIELDS.values():
    if field.distillation == distillation:
      *parents, leaf = field.name.split(".")
      node = config
      for parent in parents:
        if parent not in node:
          node[parent] = ml_collections.ConfigDict()
        node = node[parent]
      node[leaf] = values.get(field.name, field.default)
  return config


def base_config() -> ml_collections.ConfigDict:
  """Hard-label training of a 2x800 MLP with no regularisation (the paper's small net)."""
  return _set_defaults(ml_collections.ConfigDict(), distillation=False)


def add_distillation(config: ml_collections.ConfigDict,
                     temperature: float = FIELDS["temperature"].default,
                     alpha: float = FIELDS["alpha"].default) -> ml_collections.ConfigDict:
  """Adds the distillation fields; alpha weights the soft term, (1 - alpha) the hard term."""
  return _set_defaults(config, distillation=True, temperature=temperature, alpha=alpha)


def check_field(config: ml_collections.ConfigDict, field: str, ok: Callable[[Any], bool],
                expected: str) -> None:
  """Raises ConfigError naming `field` (dotted) when it is missing or `ok(value)` is False."""
  value = config
  for part in field.split("."):
    if part not in value:
      raise ConfigError(f"config.{field} is missing (expected {expected}).")
    value = value[part]
  try:
    good = ok(value)
  except TypeError:
    good = False
  if not good:
    raise ConfigError(f"config.{field}={value!r} is invalid: expected {expected}.")


def validate(config: ml_collections.ConfigDict, require_teacher: bool = False) -> None:
  """Raises ConfigError for the first value that is missing, mistyped or out of range.

  Distillation fields are checked whenever the config names a teacher; `require_teacher` (the
  distill command) also insists that it does.
  """
  check = functools.partial(check_field, config)

  def each_alone(distillation: bool) -> None:  # The table's checks, in its order.
    for field in FIELDS.values():
      if field.distillation == distillation and field.check and (
          field.when is None or field.when(config)):
        check(field.name, *field.check)

  # The training fields, then the rules that relate them (to fields already valid alone).
  each_alone(distillation=False)
  again = lambda name, ok: check(name, ok, FIELDS[name].check[1])  # In the field's own words.
  again("seed", lambda v: v + config.members <= 2**32)
  check("lr_warmup_epochs", lambda v: v < config.num_epochs and not (
      v and config.optimizer == "sgd_momentum"), f"fewer than num_epochs ({config.num_epochs}), "
        "and 0 with optimizer='sgd_momentum' (its recipe has its own schedule)")
  if config.model.name == "mlp":
    check("model.hidden_sizes", bool, "a non-empty tuple of positive integers")
  known_shapes = {"mnist": (data.IMAGE_SHAPE, data.NUM_CLASSES),
                  "mnist_pairs": ((28, 28 * 2), data.PAIR_BASE**2)}
  if config.data.name in known_shapes:
    shape, classes = known_shapes[config.data.name]
    check("model.input_shape", lambda v: tuple(v) == shape,
          f"{shape}, the shape of {config.data.name} images")
    if not config.get("extension"):  # An extension may give members classes of their own.
      check("model.num_classes", lambda v: v == classes,
            f"{classes}, the number of {config.data.name} classes")
  again("data.train_classes", lambda v: is_class_tuple(config, v))
  if config.data.pipeline == "grain":
    check("data.records_dir", bool, "a folder made by `python -m kd_jax.data.prepare --name "
          f"{config.data.name} --out DIR`: the grain pipeline streams prepared ArrayRecord shards")
    check("extension", lambda v: not v, "'' with data.pipeline='grain' (an extension's sampler "
          "draws batches on the device, from a dataset held there)")
    if config.get("teacher_dropout_masks", 0):
      check("teacher_dropout_masks", lambda v: False, "0 with data.pipeline='grain' (the masks "
            "are drawn per batch of the memory pipeline's cache)")
  else:
    check("checkpoint.every_steps", lambda v: v == 0, "0 with data.pipeline='memory' (its "
          "epoch is one compiled call; checkpoints fall between epochs)")
    for name in ("data.grain_workers", "data.prefetch", "data.steps_per_call"):  # Not ignored.
      default = FIELDS[name].default
      check(name, lambda v, default=default: v == default,
            f"{default!r} with data.pipeline='memory' (it sets the grain pipeline)")
  check("data.shared_order", lambda v: not (v and config.get("extension")), "False with an "
        "extension (its sampler may give each member batches of its own)")
  if require_teacher or is_distillation(config):  # The same for the distillation fields.
    each_alone(distillation=True)
    for name in active_terms(config):
      if name in losses.FEATURE_TERMS:
        term = config.terms[name]
        check(f"terms.{name}.student", bool, f"the student's features for terms.{name} (its "
              "weight is > 0): a tuple of feature paths ('block_1', 'encoder/conv_0')")
        check(f"terms.{name}.teacher", lambda v, n=len(term.student): len(v) == n,
              f"one teacher feature per student feature ({len(term.student)})")
    if config.teacher_dropout_masks:
      check("teacher_dropout_masks",
            lambda v: not config.data.jitter and config.cache_teacher_logits,
            "0 unless the teacher's logits are cached once (data.jitter=0, "
            "cache_teacher_logits=True): masks are drawn once per image of a fixed transfer set")
  else:
    for name in ("temperature", "alpha", *(f.name for f in TERM_FIELDS if f.sweepable)):
      check(f"sweep.{name}", lambda v: not v,
            "an empty tuple: only a distillation run (one with config.teacher_workdir) has a "
            f"{name} to sweep")
  extension = extensions.of(config)
  if extension:
    extension.validate(config)
