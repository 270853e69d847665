"""Cached teacher targets under dropout masks (config.teacher_dropout_masks)."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import config_lib, models, objective, parallelism, runs, steps
from kd_jax.errors import ConfigError

MESH = parallelism.make_mesh(jax.devices()[:1])
IMAGES = jnp.asarray(np.random.default_rng(0).integers(0, 256, (60, 28, 28), dtype=np.uint8))


def _teacher(dropout: float, members: int = 2):
  model = models.MLP((24, 24), input_dropout=dropout, hidden_dropout=dropout)
  variables = steps.stack_members([models.init_variables(model, jax.random.PRNGKey(seed),
                                                         (28, 28)) for seed in range(members)])
  return model, variables


def _logits(model, variables, masks=0, seed=0):
  return np.asarray(runs.logits_of(model, variables, IMAGES, 20, MESH, None, masks, seed))


def test_one_mask_without_dropout_is_the_eval_mode_cache():
  model, variables = _teacher(dropout=0.0)
  np.testing.assert_array_equal(_logits(model, variables, masks=1), _logits(model, variables))


def test_dropout_masks_are_members_drawn_from_a_fixed_key():
  model, variables = _teacher(dropout=0.3)
  eval_mode = _logits(model, variables)
  masked = _logits(model, variables, masks=4)
  assert eval_mode.shape == (60, 2, 10) and masked.shape == (60, 8, 10)  # Teacher-major: [M*K].
  np.testing.assert_array_equal(masked, _logits(model, variables, masks=4))  # Same key, same.
  assert not np.allclose(masked, _logits(model, variables, masks=4, seed=1))
  by_teacher = masked.reshape(60, 2, 4, 10)
  assert not np.allclose(by_teacher[:, :, 0], by_teacher[:, :, 1])  # Each mask its own.
  same_images = jnp.tile(IMAGES[:20], (3, 1, 1))  # Three batches of the same 20 images.
  repeated = np.asarray(runs.logits_of(model, variables, same_images, 20, MESH, None, 4, 0))
  assert not np.allclose(repeated[:20], repeated[20:40])  # Each batch draws its own masks.
  assert not np.allclose(by_teacher[:, 0], eval_mode[:, :1])  # Train mode: not eval's.

def test_dropout_masks_need_a_fixed_transfer_set_and_no_running_statistics():
  config = config_lib.add_distillation(config_lib.base_config())
  config.teacher_workdir = "runs/t"
  config.teacher_dropout_masks = 2
  config_lib.validate(config)
  config.data.jitter = 2
  with pytest.raises(ConfigError, match="teacher_dropout_masks"):
    config_lib.validate(config)
  config.data.jitter = 0
  cnn = models.CNN(conv_features=(2,), hidden_sizes=(8,))
  variables = steps.stack_members([models.init_variables(cnn, jax.random.PRNGKey(0), (28, 28))])
  with pytest.raises(ConfigError, match="running statistics"):
    objective.cache_logits(runs.Run(pathlib.Path("runs/t"), config, cnn, variables, 0), IMAGES, 20,
                           MESH, 1, masks=config.teacher_dropout_masks)
