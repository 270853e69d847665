"""The paper's networks: MLPs with ReLU, dropout and an optional max-norm constraint."""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from kd_jax.data import IMAGE_SHAPE, NUM_CLASSES


DROPOUT_LEVELS = 256  # A dropout decision compares one random byte with a threshold.


def keep_threshold(rate: float) -> int:
  """Bytes below this value keep their unit: keep probability threshold / 256, within 1/512 of
  1 - rate (exact for 0, 0.25, 0.5, ...). Outputs are scaled by 256 / threshold, the inverse of
  the probability actually used, so the expected activation is unchanged."""
  return max(1, round((1.0 - rate) * DROPOUT_LEVELS))


def dropout(key: jax.Array, x: jax.Array, rate: float) -> jax.Array:
  """Inverted dropout on [B, F] with one random byte per unit: each 32-bit draw serves 4 units.

  flax's nn.Dropout draws 32 random bits per unit (a float uniform), and on CPU the threefry
  generator, not the matmuls, then dominates a dropout MLP's step. The bits are drawn for the
  whole [B, F] array with the batch leading, so the mask does not depend on how the batch is
  sharded, and it is a pure function of the key (resumed runs redraw the same masks).
  """
  if rate == 0.0:
    return x
  batch, features = x.shape
  words = jax.random.bits(key, (batch, -(-features // 4)), jnp.uint32)
  random_bytes = jax.lax.bitcast_convert_type(words, jnp.uint8).reshape(batch, -1)[:, :features]
  threshold = keep_threshold(rate)
  keep = random_bytes < threshold
  return jnp.where(keep, x * (DROPOUT_LEVELS / threshold), 0.0).astype(x.dtype)


class MLP(nn.Module):
  """Flattened images (784 for MNIST) -> hidden_sizes (ReLU, dropout) -> num_classes logits.

  The teacher is MLP((1200, 1200), input_dropout=0.2, hidden_dropout=0.5); students are the same
  module with smaller sizes and usually no dropout.
  """

  hidden_sizes: Sequence[int]
  num_classes: int = NUM_CLASSES
  input_shape: Sequence[int] = IMAGE_SHAPE  # Of one image; the input is it flattened.
  input_dropout: float = 0.0
  hidden_dropout: float = 0.0
  dtype: Any = jnp.float32  # Of the matmuls and activations; parameters stay float32.

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    drop = lambda x, rate: dropout(self.make_rng("dropout"), x, rate) if train and rate else x
    x = drop(x.reshape((x.shape[0], -1)), self.input_dropout)
    for i, size in enumerate(self.hidden_sizes):
      x = drop(nn.relu(nn.Dense(size, dtype=self.dtype, name=f"hidden_{i}")(x)),
               self.hidden_dropout)
    return nn.Dense(self.num_classes, dtype=self.dtype, name="output")(x).astype(jnp.float32)


COMPUTE_DTYPES = ("float32", "bfloat16")


def compute_dtype(model_config: ml_collections.ConfigDict) -> Any:
  """The matmul dtype of a model config (float32 for configs saved before the option)."""
  return jnp.dtype(model_config.get("compute_dtype", "float32"))


def dummy_input(model: MLP) -> jax.Array:
  """A batch of one zero input of the model's size, for `model.init`."""
  return jnp.zeros((1, math.prod(model.input_shape)), jnp.float32)


def model_from_config(model_config: ml_collections.ConfigDict) -> MLP:
  return MLP(hidden_sizes=tuple(model_config.hidden_sizes),
             num_classes=model_config.get("num_classes", NUM_CLASSES),
             input_shape=tuple(model_config.get("input_shape", IMAGE_SHAPE)),
             input_dropout=float(model_config.input_dropout),
             hidden_dropout=float(model_config.hidden_dropout),
             dtype=compute_dtype(model_config))


def describe(model_config: ml_collections.ConfigDict) -> str:
  """A one-line description such as 'MLP 784-1200-1200-10, dropout 0.2/0.5, max-norm 3.5'."""
  model = model_from_config(model_config)
  sizes = "-".join(str(s) for s in (math.prod(model.input_shape), *model.hidden_sizes,
                                    model.num_classes))
  text = f"MLP {sizes}"
  if model_config.input_dropout or model_config.hidden_dropout:
    text += f", dropout {model_config.input_dropout:g}/{model_config.hidden_dropout:g}"
  if model_config.max_norm:
    text += f", max-norm {model_config.max_norm:g}"
  if compute_dtype(model_config) != jnp.float32:
    text += f", {compute_dtype(model_config).name} matmuls"
  return text


def apply_max_norm(params: Any, max_norm: float | None) -> Any:
  """Rescales each hidden unit's incoming weight vector to norm <= max_norm.

  Flax kernels are [fan_in, fan_out], so unit j's incoming vector is kernel[:, j]. Only hidden
  layers (named hidden_*) are constrained, as in Srivastava et al. (2014).
  """
  if not max_norm:
    return params

  def constrain(path, leaf):
    names = [getattr(p, "key", None) for p in path]
    if names[-1] != "kernel" or not any(str(n).startswith("hidden_") for n in names):
      return leaf
    norms = jnp.linalg.norm(leaf, axis=0, keepdims=True)
    return leaf * jnp.minimum(1.0, max_norm / jnp.maximum(norms, 1e-12))

  return jax.tree_util.tree_map_with_path(constrain, params)
