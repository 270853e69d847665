"""Hard-label and distillation losses (Hinton, Vinyals & Dean 2015, section 2).

All losses average over the batch. The soft term ("soft_cross_entropy", the paper's) is computed
and reported as KL(teacher || student) at temperature T, which has the cross-entropy's gradients
(they differ by the teacher's entropy, a constant) and falls to 0 as the student matches the
teacher; it is multiplied by T^2 so that its gradients keep the same scale as the temperature
changes (the paper's section 2 remark). Logit matching is its high-temperature limit, scaled to
match: its gradient is (z_i - v_i) / N.

Teacher outputs arrive as logits [B, M, C] from M teachers (M = 1 for a single teacher): the soft
targets are the ensemble's tempered probabilities, their arithmetic mean by default or their
normalised geometric mean (which is the softmax of the mean logit, at any temperature).

The train step takes its loss as a function `loss_fn(logits, batch, targets, hparams) -> (loss,
parts)`: `hard_label_loss`, or one built by `make_distillation_loss`. `hparams` holds the member's
(possibly swept) `temperature` and `alpha` as traced scalars.
"""

from __future__ import annotations

from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import optax

DISTILL_LOSSES = ("soft_cross_entropy", "logit_matching", "softmax_mse")
ENSEMBLE_MEANS = ("arithmetic", "geometric")
LossFn = Callable[[jax.Array, dict, Any, dict], tuple[jax.Array, dict]]


def tempered_softmax(logits: jax.Array, temperature: float | jax.Array) -> jax.Array:
  return jax.nn.softmax(logits / temperature, axis=-1)


def ensemble_log_probabilities(member_logits: jax.Array, temperature: float | jax.Array = 1.0,
                               mean: str = "arithmetic") -> jax.Array:
  """[B, M, C] logits of M models -> [B, C] log-probabilities of their ensemble at
  `temperature`: the log of the mean of their probabilities (stably), or for `mean="geometric"`
  their renormalised geometric mean, which is the softmax of the mean logit. The one ensemble of
  kd_jax: soft targets, evaluation, export and predictions all use it."""
  chex.assert_rank(member_logits, 3)
  if mean == "geometric":
    return jax.nn.log_softmax(member_logits.mean(axis=1) / temperature, axis=-1)
  log_probs = jax.nn.log_softmax(member_logits / temperature, axis=-1)
  return jax.nn.logsumexp(log_probs, axis=1) - jnp.log(member_logits.shape[1])


def hard_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  chex.assert_rank(logits, 2)
  chex.assert_shape(labels, (logits.shape[0],))
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def soft_kl_divergence(student_logits: jax.Array, teacher_log_probs: jax.Array,
                       temperature: float | jax.Array, t_squared: bool = True) -> jax.Array:
  """T^2 * KL(teacher || softmax(student / T)), averaged over the batch; `teacher_log_probs` are
  the teacher's log-probabilities at T. It differs from the paper's soft cross-entropy only by
  the teacher's entropy, a constant: the gradients are the same, and the value goes to 0 as the
  student matches the teacher (the cross-entropy never falls below T^2 * H, ~800 at T = 20).
  `t_squared=False` drops the T^2 factor (an ablation: the soft term's gradients then shrink
  as 1/T^2 against the hard term's)."""
  chex.assert_equal_shape([student_logits, teacher_log_probs])
  log_probs = jax.nn.log_softmax(student_logits / temperature, axis=-1)
  scale = temperature**2 if t_squared else 1.0
  kl = jnp.sum(jnp.exp(teacher_log_probs) * (teacher_log_probs - log_probs), axis=-1)
  return scale * kl.mean()


def logit_matching(student_logits: jax.Array, teacher_logits: jax.Array) -> jax.Array:
  """0.5 * mean over classes of (z - v)^2: the T -> infinity limit of `soft_kl_divergence`."""
  chex.assert_equal_shape([student_logits, teacher_logits])
  return 0.5 * jnp.mean(jnp.square(student_logits - teacher_logits), axis=-1).mean()


def softmax_mse(student_logits: jax.Array, soft_targets: jax.Array,
                temperature: float | jax.Array) -> jax.Array:
  """The reference notebook's loss: MSE between tempered softmaxes, without T^2."""
  chex.assert_equal_shape([student_logits, soft_targets])
  return jnp.mean(jnp.square(tempered_softmax(student_logits, temperature) - soft_targets))


def soft_loss(name: str, student_logits: jax.Array, teacher_logits: jax.Array,
              temperature: float | jax.Array, ensemble: str = "arithmetic",
              t_squared: bool = True) -> jax.Array:
  """The soft term `name` against teacher logits [B, M, C] (an ensemble of M >= 1 teachers)."""
  if name == "logit_matching":
    return logit_matching(student_logits, teacher_logits.mean(axis=1))
  teacher_log_probs = ensemble_log_probabilities(teacher_logits, temperature, ensemble)
  if name == "softmax_mse":
    return softmax_mse(student_logits, jnp.exp(teacher_log_probs), temperature)
  return soft_kl_divergence(student_logits, teacher_log_probs, temperature, t_squared)


def distillation_loss(student_logits: jax.Array, teacher_logits: jax.Array, labels: jax.Array,
                      *, temperature: float | jax.Array, alpha: float | jax.Array,
                      soft_loss_name: str = "soft_cross_entropy",
                      ensemble: str = "arithmetic",
                      t_squared: bool = True) -> tuple[jax.Array, dict]:
  """alpha * soft + (1 - alpha) * hard; returns the total and both parts for logging."""
  soft = soft_loss(soft_loss_name, student_logits, teacher_logits, temperature, ensemble,
                   t_squared)
  hard = hard_cross_entropy(student_logits, labels)
  return alpha * soft + (1.0 - alpha) * hard, {"soft_loss": soft, "hard_loss": hard}


def hard_label_loss(logits: jax.Array, batch: dict, targets: Any,
                    hparams: dict) -> tuple[jax.Array, dict]:
  """Cross-entropy on the batch's labels; a `LossFn` that ignores targets and hparams."""
  del targets, hparams
  return hard_cross_entropy(logits, batch["label"]), {}


def make_distillation_loss(soft_loss_name: str = "soft_cross_entropy",
                           ensemble: str = "arithmetic", t_squared: bool = True) -> LossFn:
  """A `LossFn` mixing the soft term against teacher logits with the hard-label term."""

  def loss_fn(logits, batch, teacher_logits, hparams):
    return distillation_loss(logits, teacher_logits, batch["label"],
                             temperature=hparams["temperature"], alpha=hparams["alpha"],
                             soft_loss_name=soft_loss_name, ensemble=ensemble,
                             t_squared=t_squared)

  return loss_fn
