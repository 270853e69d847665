"""kd_jax: Knowledge distillation (Hinton, Vinyals & Dean, 2015) in JAX/Flax."""

import sys as _sys

__version__ = "0.1.0"

if _sys.argv[:1] == ["-m"]:  # `python -m kd_jax.<command>`, before the command imports jax:
  from kd_jax import preemption as _preemption  # a scheduler's SIGTERM during imports, data

  _preemption.install()  # loading or compilation then also ends with exit code 75.
