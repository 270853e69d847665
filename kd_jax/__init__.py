"""kd_jax: Knowledge distillation (Hinton, Vinyals & Dean, 2015) in JAX/Flax."""

__version__ = "0.1.0"
