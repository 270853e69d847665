"""The shipped configs, installed with kd_jax as `kd_jax.configs` (this folder is mapped to it).

Each `NAME.py` here has `get_config()` (some take an argument, e.g. `reproduce.py:tiny`). Find them
by name from Python or from any command's `--config`.

Example:
    ```python
    config = kd_jax.configs.get("quick_teacher", num_epochs=2)   # overrides: field=value
    kd_jax.configs.names()                                      # ('distill', 'notebook', ...)
    ```

    ```bash
    python -m kd_jax.train --config teacher --workdir runs/t     # or --config path/to/file.py
    ```
"""

from __future__ import annotations

import importlib
import importlib.resources
import pathlib
from typing import Any

import ml_collections


def names() -> tuple[str, ...]:
  """The names of the shipped configs, sorted."""
  return tuple(sorted(entry.name[:-3] for entry in importlib.resources.files(__name__).iterdir()
                      if entry.name.endswith(".py") and not entry.name.startswith("_")))


def path(name: str) -> pathlib.Path:
  """The file of the shipped config `name` (where this installation keeps it)."""
  if name not in names():
    raise KeyError(f"no shipped config named {name!r}; shipped: {', '.join(names())}")
  return pathlib.Path(str(importlib.resources.files(__name__) / f"{name}.py"))


def module(name: str):
  """The module of the shipped config `name` (its get_config, and PROFILES where it has them)."""
  path(name)  # The KeyError naming the shipped configs.
  return importlib.import_module(f"{__name__}.{name}")


def resolve(spec: str) -> str:
  """A --config value as a file path: `NAME[:ARG]` of a shipped config becomes its installed
  path (ARG kept); anything else (a path) is returned unchanged."""
  name, colon, argument = spec.partition(":")
  if name in names() and not pathlib.Path(name).exists():
    return f"{path(name)}{colon}{argument}"
  return spec


def get(name: str, *args: Any, **overrides: Any) -> ml_collections.ConfigDict:
  """The shipped config `name` (`get_config(*args)`), with `overrides` applied: a field per
  keyword, nested fields with '__' (`model__hidden_sizes=(300, 300)`) or as a dict
  (`**{"model.hidden_sizes": (300, 300)}`). An unknown field is a KeyError naming it."""
  if ":" in name and not args:
    name, argument = name.split(":", 1)
    args = (argument,)
  config = module(name).get_config(*args)
  return override(config, **overrides)


def override(config: ml_collections.ConfigDict, **overrides: Any) -> ml_collections.ConfigDict:
  """`config` with fields set from `overrides` (dotted or '__'-separated names), in place."""
  for field, value in overrides.items():
    *parents, leaf = field.replace("__", ".").split(".")
    holder = config
    for parent in parents:
      holder = holder[parent]
    if leaf not in holder:
      raise KeyError(f"config has no field {field!r}")
    holder[leaf] = value
  return config
