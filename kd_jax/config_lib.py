"""Config defaults shared by the files under configs/, and their validation.

Every training config has num_epochs, batch_size (global, across all devices), learning_rate and
seed at the top level; distillation configs add temperature, alpha, soft_loss and
teacher_workdir. `validate` turns every bad value into a ConfigError naming the field.
"""

from __future__ import annotations

import ml_collections

from kd_jax import losses
from kd_jax.errors import ConfigError

LR_SCHEDULES = ("constant", "cosine")


def base_config() -> ml_collections.ConfigDict:
  """Hard-label training of a 2x800 MLP with no regularisation (the paper's small net)."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_epochs = 30
  config.batch_size = 128
  config.learning_rate = 1e-3
  config.lr_schedule = "cosine"
  config.eval_batch_size = 1000

  config.model = ml_collections.ConfigDict()
  config.model.hidden_sizes = (800, 800)
  config.model.input_dropout = 0.0
  config.model.hidden_dropout = 0.0
  config.model.max_norm = 0.0  # 0 disables the constraint.

  config.data = ml_collections.ConfigDict()
  config.data.mnist_dir = ""  # Empty: $KD_JAX_MNIST_DIR, else tensorflow-datasets.
  config.data.tfds_data_dir = ""  # Empty: TFDS's default (~/tensorflow_datasets).
  config.data.tfds_manual_dir = ""  # The four original .gz files, for TFDS to prepare offline.
  config.data.validation_size = 0
  config.data.jitter = 0  # Max shift in pixels (the paper's teacher uses 2).
  config.data.check_counts = True  # False accepts IDX folders smaller than MNIST (tests).

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_epochs = 1
  config.checkpoint.max_to_keep = 3
  return config


def paper_teacher() -> ml_collections.ConfigDict:
  """The paper's teacher: 784-1200-1200-10, dropout 0.2 (input) / 0.5 (hidden), max-norm, jitter."""
  config = base_config()
  config.num_epochs = 60
  config.model.hidden_sizes = (1200, 1200)
  config.model.input_dropout = 0.2
  config.model.hidden_dropout = 0.5
  config.model.max_norm = 4.0
  config.data.jitter = 2
  return config


def add_distillation(config: ml_collections.ConfigDict, temperature: float = 20.0,
                     alpha: float = 0.9) -> ml_collections.ConfigDict:
  """Adds the distillation fields; alpha weights the soft term, (1 - alpha) the hard term."""
  config.teacher_workdir = ""
  config.temperature = temperature
  config.alpha = alpha
  config.soft_loss = "soft_cross_entropy"
  return config


def validate(config: ml_collections.ConfigDict, distill: bool = False) -> None:
  """Raises ConfigError for the first value that is missing, mistyped or out of range."""

  def check(field, ok, expected):
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

  is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)
  is_num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
  check("num_epochs", lambda v: is_int(v) and v > 0, "a positive integer")
  check("batch_size", lambda v: is_int(v) and v > 0, "a positive integer")
  check("eval_batch_size", lambda v: is_int(v) and v > 0, "a positive integer")
  check("learning_rate", lambda v: is_num(v) and v > 0, "a positive number")
  check("lr_schedule", lambda v: v in LR_SCHEDULES, f"one of {LR_SCHEDULES}")
  check("seed", is_int, "an integer")
  check("model.hidden_sizes", lambda v: len(v) > 0 and all(is_int(s) and s > 0 for s in v),
        "a non-empty tuple of positive integers")
  check("model.input_dropout", lambda v: is_num(v) and 0 <= v < 1, "a number in [0, 1)")
  check("model.hidden_dropout", lambda v: is_num(v) and 0 <= v < 1, "a number in [0, 1)")
  check("model.max_norm", lambda v: is_num(v) and v >= 0, "a number >= 0 (0 disables it)")
  check("data.validation_size", lambda v: is_int(v) and v >= 0, "an integer >= 0")
  check("data.jitter", lambda v: is_int(v) and 0 <= v < 14,
        "an integer number of pixels in [0, 14)")
  check("checkpoint.every_epochs", lambda v: is_int(v) and v > 0, "a positive integer")
  check("checkpoint.max_to_keep", lambda v: is_int(v) and v > 0, "a positive integer")
  if distill:
    check("temperature", lambda v: is_num(v) and v > 0, "a number > 0")
    check("alpha", lambda v: is_num(v) and 0 <= v <= 1, "a number in [0, 1]")
    check("soft_loss", lambda v: v in losses.DISTILL_LOSSES, f"one of {losses.DISTILL_LOSSES}")
    check("teacher_workdir", lambda v: isinstance(v, str) and v,
          "the workdir of a trained teacher (--config.teacher_workdir=RUN_T)")
