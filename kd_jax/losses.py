"""Hard-label and distillation losses (Hinton, Vinyals & Dean 2015, section 2).

All losses average over the batch. The soft-target cross-entropy is multiplied by T^2 so that its
gradients keep the same scale as the temperature changes (the paper's section 2 remark); logit
matching is its high-temperature limit, scaled to match: its gradient is (z_i - v_i) / N.
"""

from __future__ import annotations

from typing import Callable

import chex
import jax
import jax.numpy as jnp
import optax

DISTILL_LOSSES = ("soft_cross_entropy", "logit_matching", "softmax_mse")


def tempered_softmax(logits: jax.Array, temperature: float) -> jax.Array:
  return jax.nn.softmax(logits / temperature, axis=-1)


def hard_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  chex.assert_rank(logits, 2)
  chex.assert_shape(labels, (logits.shape[0],))
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def soft_cross_entropy(student_logits: jax.Array, teacher_logits: jax.Array,
                       temperature: float) -> jax.Array:
  """T^2 * CE(softmax(teacher / T), softmax(student / T))."""
  chex.assert_equal_shape([student_logits, teacher_logits])
  soft_targets = tempered_softmax(teacher_logits, temperature)
  log_probs = jax.nn.log_softmax(student_logits / temperature, axis=-1)
  return temperature**2 * -(soft_targets * log_probs).sum(axis=-1).mean()


def logit_matching(student_logits: jax.Array, teacher_logits: jax.Array,
                   temperature: float = 1.0) -> jax.Array:
  """0.5 * mean over classes of (z - v)^2: the T -> infinity limit of `soft_cross_entropy`.

  `temperature` is accepted for a uniform signature and ignored.
  """
  del temperature
  chex.assert_equal_shape([student_logits, teacher_logits])
  return 0.5 * jnp.mean(jnp.square(student_logits - teacher_logits), axis=-1).mean()


def softmax_mse(student_logits: jax.Array, teacher_logits: jax.Array,
                temperature: float) -> jax.Array:
  """The reference notebook's loss: MSE between tempered softmaxes, without T^2."""
  chex.assert_equal_shape([student_logits, teacher_logits])
  diff = tempered_softmax(student_logits, temperature) - tempered_softmax(teacher_logits,
                                                                          temperature)
  return jnp.mean(jnp.square(diff))


def soft_loss_fn(name: str) -> Callable[[jax.Array, jax.Array, float], jax.Array]:
  return {"soft_cross_entropy": soft_cross_entropy, "logit_matching": logit_matching,
          "softmax_mse": softmax_mse}[name]


def distillation_loss(student_logits: jax.Array, teacher_logits: jax.Array, labels: jax.Array,
                      *, temperature: float, alpha: float,
                      soft_loss: str = "soft_cross_entropy") -> tuple[jax.Array, dict]:
  """alpha * soft + (1 - alpha) * hard; returns the total and both parts for logging."""
  soft = soft_loss_fn(soft_loss)(student_logits, teacher_logits, temperature)
  hard = hard_cross_entropy(student_logits, labels)
  return alpha * soft + (1.0 - alpha) * hard, {"soft_loss": soft, "hard_loss": hard}
