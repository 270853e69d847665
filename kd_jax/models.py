"""The paper's networks: MLPs with ReLU, dropout and an optional max-norm constraint."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from kd_jax.data import NUM_CLASSES


class MLP(nn.Module):
  """784 -> hidden_sizes (ReLU, dropout) -> num_classes logits.

  The teacher is MLP((1200, 1200), input_dropout=0.2, hidden_dropout=0.5); students are the same
  module with smaller sizes and usually no dropout.
  """

  hidden_sizes: Sequence[int]
  num_classes: int = NUM_CLASSES
  input_dropout: float = 0.0
  hidden_dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = x.reshape((x.shape[0], -1))
    x = nn.Dropout(self.input_dropout, deterministic=not train)(x)
    for i, size in enumerate(self.hidden_sizes):
      x = nn.relu(nn.Dense(size, name=f"hidden_{i}")(x))
      x = nn.Dropout(self.hidden_dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name="output")(x)


def model_from_config(model_config: ml_collections.ConfigDict) -> MLP:
  return MLP(hidden_sizes=tuple(model_config.hidden_sizes),
             input_dropout=float(model_config.input_dropout),
             hidden_dropout=float(model_config.hidden_dropout))


def describe(model_config: ml_collections.ConfigDict) -> str:
  """A one-line description such as 'MLP 784-1200-1200-10, dropout 0.2/0.5, max-norm 3.5'."""
  sizes = "-".join(str(s) for s in (784, *model_config.hidden_sizes, NUM_CLASSES))
  text = f"MLP {sizes}"
  if model_config.input_dropout or model_config.hidden_dropout:
    text += f", dropout {model_config.input_dropout:g}/{model_config.hidden_dropout:g}"
  if model_config.max_norm:
    text += f", max-norm {model_config.max_norm:g}"
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
