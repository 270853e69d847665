"""kd_jax: knowledge distillation (Hinton, Vinyals & Dean, 2015) in JAX/Flax.

  import kd_jax
  teacher = kd_jax.train(kd_jax.configs.get("quick_teacher"), workdir="runs/t")
  student = kd_jax.distill(kd_jax.configs.get("quick_distill"), teacher=teacher, workdir="runs/s")
  student.evaluate()["test_errors"]; student.predict(images)   # [B, 10] probabilities
  kd_jax.load("runs/s")                                         # the same Run, from disk

The public API is what this module exports (see `kd_jax.api`); the shipped configs are
`kd_jax.configs` (`get(name, **overrides)`, `names()`). The paper's experiments live in
`kd_jax.paper`, which builds on the library and is never imported by it.
"""

import sys as _sys

__version__ = "0.1.0"

if _sys.argv[:1] == ["-m"]:  # `python -m kd_jax.<command>`, before the command imports jax:
  from kd_jax import preemption as _preemption  # a scheduler's SIGTERM during imports, data

  _preemption.install()  # loading or compilation then also ends with exit code 75.

# pylint: disable=g-import-not-at-top,wrong-import-position
from kd_jax import configs
from kd_jax.api import Run, distill, load, train, use_deterministic_kernels
from kd_jax.errors import (CheckpointError, ConfigError, DataError, KdJaxError,
                           TrainingDivergedError)
from kd_jax.preemption import Preempted

__all__ = ["CheckpointError", "ConfigError", "DataError", "KdJaxError", "Preempted", "Run",
           "TrainingDivergedError", "configs", "distill", "load", "train",
           "use_deterministic_kernels"]
