"""Intermediate features of any Flax module, picked by path, inside the pure step.

A feature is named by a path: a submodule's path joined by '/' ('conv_1', 'encoder/block_2'),
whose output flax's `capture_intermediates` records without any edit to the module, or a value
the module sows into the 'intermediates' collection (the registry CNN sows each block's pooled
output as 'block_i'). `apply` runs the model once and returns its logits, the features and its
updated state; the values are the module's own, so gradients flow through them to the student.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax

INTERMEDIATES = "intermediates"


def capture_filter(paths: Sequence[str]):
  """flax's `capture_intermediates` filter: the `__call__` of a submodule named in `paths`."""
  wanted = set(paths)
  return lambda module, method: method == "__call__" and "/".join(module.path) in wanted


def pick(intermediates: dict[str, Any], path: str) -> jax.Array:
  """The feature at `path` in an 'intermediates' collection: a captured `__call__` output or a
  sown value (the first, when sown more than once); a KeyError naming what there is if absent."""
  node = intermediates
  for part in path.split("/"):
    if not isinstance(node, dict) or part not in node:
      raise KeyError(f"no feature {path!r}: name a submodule by its path ('conv_1', "
                     f"'encoder/block_2') or a value the model sows "
                     f"({', '.join(sorted(names(intermediates))) or 'it sows none'})")
    node = node[part]
  if isinstance(node, dict):
    if "__call__" not in node:
      raise KeyError(f"{path!r} is a module with features inside it: "
                     f"{sorted(n for n in names(intermediates) if n.startswith(path + '/'))}")
    node = node["__call__"]
  return node[0] if isinstance(node, tuple) else node


def names(intermediates: dict[str, Any], prefix: str = "") -> list[str]:
  """Every path `pick` can read in an 'intermediates' collection."""
  found = []
  for key, value in intermediates.items():
    if key == "__call__":
      found.append(prefix.rstrip("/"))
    elif isinstance(value, dict):
      found += names(value, f"{prefix}{key}/")
    else:
      found.append(f"{prefix}{key}")
  return found


def apply(model: nn.Module, variables: dict[str, Any], images: jax.Array, paths: Sequence[str],
          *, train: bool, rngs: dict[str, jax.Array] | None = None,
          mutable: Sequence[str] = ()) -> tuple[jax.Array, dict[str, jax.Array], dict[str, Any]]:
  """The model's logits on `images`, its features at `paths` ({path: array}) and the updated
  collections in `mutable` (BatchNorm's statistics in training; {} otherwise)."""
  logits, state = model.apply(variables, images, train=train, rngs=rngs or {},
                              capture_intermediates=capture_filter(paths),
                              mutable=[*mutable, INTERMEDIATES])
  state = dict(state)
  intermediates = state.pop(INTERMEDIATES, {})
  return logits, {path: pick(intermediates, path) for path in paths}, state
