"""kd_jax: knowledge distillation (Hinton, Vinyals & Dean, 2015) in JAX/Flax.

The public API is what this module exports (see `kd_jax.api`); the shipped configs are
`kd_jax.configs` (`get(name, **overrides)`, `names()`). The paper's experiments live in
`kd_jax.paper`, which builds on the library and is never imported by it.

Its names load on first use, so `import kd_jax.losses` or `kd_jax.models` stays light (no
orbax, grain or trainer).

Example:
    ```python
    import kd_jax

    teacher = kd_jax.train(kd_jax.configs.get("quick_teacher"), workdir="runs/t")
    student = kd_jax.distill(kd_jax.configs.get("quick_distill"), teacher=teacher,
                             workdir="runs/s")
    student.evaluate()["test_errors"]
    student.predict(images)  # [B, 10] probabilities
    kd_jax.load("runs/s")    # the same Run, from disk
    ```
"""

import sys as _sys

__version__ = "0.1.0"

if _sys.argv[:1] == ["-m"]:  # `python -m kd_jax.<command>`, before the command imports jax:
  from kd_jax import preemption as _preemption  # a scheduler's SIGTERM during imports, data

  _preemption.install()  # loading or compilation then also ends with exit code 75.

# pylint: disable=g-import-not-at-top,wrong-import-position
import importlib as _importlib

from kd_jax.errors import (CheckpointError, ConfigError, DataError, KdJaxError,
                           TrainingDivergedError)
from kd_jax.preemption import Preempted

# PEP 562: these load on first use (kd_jax.api brings the trainer, orbax and the data pipelines).
_LAZY = {"Run": "kd_jax.api", "distill": "kd_jax.api", "load": "kd_jax.api",
         "train": "kd_jax.api", "use_deterministic_kernels": "kd_jax.runtime",
         "configs": None}  # None: the subpackage kd_jax.configs itself.

__all__ = ["CheckpointError", "ConfigError", "DataError", "KdJaxError", "Preempted", "Run",
           "TrainingDivergedError", "configs", "distill", "load", "train",
           "use_deterministic_kernels"]


def __getattr__(name: str):
  if name not in _LAZY:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  module = _LAZY[name]
  value = (_importlib.import_module(f"{__name__}.{name}") if module is None else
           getattr(_importlib.import_module(module), name))
  globals()[name] = value  # Once: later lookups are plain attributes.
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__))
