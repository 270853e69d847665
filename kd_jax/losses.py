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


def mixed_cross_entropy(logits: jax.Array, batch: dict) -> jax.Array:
  """The hard-label term of a batch, mixed as its images were (`batch['mix_weight']` a of each
  image's own label, 1 - a of its neighbour's, `batch['mix_label']`), or plain."""
  hard = hard_cross_entropy(logits, batch["label"])
  if "mix_weight" not in batch:
    return hard
  weight = batch["mix_weight"]
  return weight * hard + (1 - weight) * hard_cross_entropy(logits, batch["mix_label"])


def distillation_loss(student_logits: jax.Array, teacher_logits: jax.Array, labels: jax.Array,
                      *, temperature: float | jax.Array, alpha: float | jax.Array,
                      soft_loss_name: str = "soft_cross_entropy",
                      ensemble: str = "arithmetic", t_squared: bool = True,
                      hard: jax.Array | None = None) -> tuple[jax.Array, dict]:
  """alpha * soft + (1 - alpha) * hard (the cross-entropy on `labels`, unless `hard` gives it:
  a mixed batch's); returns the total and both parts for logging."""
  soft = soft_loss(soft_loss_name, student_logits, teacher_logits, temperature, ensemble,
                   t_squared)
  hard = hard_cross_entropy(student_logits, labels) if hard is None else hard
  return alpha * soft + (1.0 - alpha) * hard, {"soft_loss": soft, "hard_loss": hard}


def hard_label_loss(logits: jax.Array, batch: dict, targets: Any,
                    hparams: dict) -> tuple[jax.Array, dict]:
  """Cross-entropy on the batch's labels; a `LossFn` that ignores targets and hparams."""
  del targets, hparams
  return hard_cross_entropy(logits, batch["label"]), {}


def make_distillation_loss(soft_loss_name: str = "soft_cross_entropy",
                           ensemble: str = "arithmetic", t_squared: bool = True,
                           terms: tuple[str, ...] = (), warmup_epochs: dict[str, int] | None = None,
                           steps_per_epoch: int = 1,
                           feature_pairs: dict[str, tuple[tuple[str, str], ...]] | None = None
                           ) -> LossFn:
  """A `LossFn` mixing the soft term against teacher logits with the hard-label term, plus each
  loss term of `terms` (`LOGIT_TERMS`, `FEATURE_TERMS`) as hparams['terms.NAME.weight'] * its
  warm-up * the term (its other numbers from hparams['terms.NAME.*']); every term's value is
  logged as '<name>_loss'. The warm-up is mdistiller's: min(epoch / warmup_epochs[name], 1),
  epochs counted from 1 (0 or absent: none), the epoch from hparams['step'] and
  `steps_per_epoch`. A feature term reads its (student path, teacher path) pairs of
  `feature_pairs` in the student's `features` and the targets' (then {'logits', 'features'}:
  one teacher's, [B, 1, ...]); FitNets projects each student feature first by its adapter
  (`adapters[adapter_name('fitnets', i)]`, trained with the student)."""
  warmup_epochs, feature_pairs = warmup_epochs or {}, feature_pairs or {}

  def loss_fn(logits, batch, targets, hparams, features=None, adapters=None):
    teacher_logits = targets["logits"] if feature_pairs else targets
    loss, parts = distillation_loss(logits, teacher_logits, batch["label"],
                                    temperature=hparams["temperature"], alpha=hparams["alpha"],
                                    soft_loss_name=soft_loss_name, ensemble=ensemble,
                                    t_squared=t_squared, hard=mixed_cross_entropy(logits, batch))
    for name in terms:
      term_hparams = {key.split(".")[-1]: value for key, value in hparams.items()
                      if key.startswith(f"terms.{name}.")}
      weight = term_hparams.pop("weight")
      if name in LOGIT_TERMS:
        value = LOGIT_TERMS[name](logits, teacher_logits, batch["label"], ensemble,
                                  **term_hparams)
      else:
        adapt = lambda x, index, name=name: (
            adapt_feature(x, adapters[adapter_name(name, index)]) if name in ADAPTED_TERMS
            else x)
        value = FEATURE_TERMS[name](
            [(adapt(features[student], index), targets["features"][teacher][:, 0])
             for index, (student, teacher) in enumerate(feature_pairs[name])], **term_hparams)
      if warmup_epochs.get(name):
        epoch = hparams["step"] // steps_per_epoch + 1
        weight = weight * jnp.minimum(epoch / warmup_epochs[name], 1.0)
      loss, parts[f"{name}_loss"] = loss + weight * value, value
    return loss, parts

  return loss_fn


def ensemble_logits(teacher_logits: jax.Array, temperature: float | jax.Array,
                    ensemble: str = "arithmetic") -> jax.Array:
  """[B, M, C] teachers -> [B, C] logits whose softmax at `temperature` is the ensemble's
  (`ensemble_log_probabilities` x T): one teacher's own logits up to a shift, which no softmax
  sees. How a term written for one teacher's logits distils from an ensemble."""
  return temperature * ensemble_log_probabilities(teacher_logits, temperature, ensemble)


# ----------------------------------------------------------------------------- methods beyond the
# paper: logit terms (DKD, DIST) and feature terms (FitNets, attention transfer, RKD). Each is the
# method's distillation term alone, as its authors' code computes it, averaged over the batch; the
# weighted sum with the hard-label term (and any warm-up) is the objective's.


def _xlogy_kl(p: jax.Array, log_q: jax.Array) -> jax.Array:
  """sum p * (log p - log q) over the last axis, with 0 * log 0 = 0 (torch's kl_div)."""
  return jnp.sum(jax.scipy.special.xlogy(p, p) - p * log_q, axis=-1)


def dkd(student_logits: jax.Array, teacher_logits: jax.Array, labels: jax.Array, *,
        alpha: float | jax.Array, beta: float | jax.Array,
        temperature: float | jax.Array) -> jax.Array:
  """Decoupled KD (Zhao et al. 2022): alpha * TCKD + beta * NCKD, batch means, each x T^2.

  TCKD is the KL between the binary (target class, all others) distributions of teacher and
  student at T; NCKD the KL between their distributions over the non-target classes, computed
  as mdistiller's `dkd_loss` does (the target logit pushed down by 1000 before the softmax).
  Logits [B, C] (an ensemble's: pass its mean logits), labels [B]."""
  chex.assert_equal_shape([student_logits, teacher_logits])
  chex.assert_shape(labels, student_logits.shape[:1])
  teacher_logits = jax.lax.stop_gradient(teacher_logits)
  target = jax.nn.one_hot(labels, student_logits.shape[-1], dtype=student_logits.dtype)
  binary = lambda p: jnp.stack([jnp.sum(p * target, -1), jnp.sum(p * (1 - target), -1)], -1)
  p_student = binary(jax.nn.softmax(student_logits / temperature, axis=-1))
  p_teacher = binary(jax.nn.softmax(teacher_logits / temperature, axis=-1))
  tckd = _xlogy_kl(p_teacher, jnp.log(p_student)).mean() * temperature**2
  masked = lambda logits: logits / temperature - 1000.0 * target
  nckd = _xlogy_kl(jax.nn.softmax(masked(teacher_logits), axis=-1),
                   jax.nn.log_softmax(masked(student_logits), axis=-1)).mean() * temperature**2
  return alpha * tckd + beta * nckd


def _norm(x: jax.Array, keepdims: bool = False) -> jax.Array:
  """The L2 norm over the last axis, whose gradient at a zero vector is 0 (as torch's), not
  jnp.linalg.norm's NaN."""
  squares = jnp.sum(jnp.square(x), axis=-1, keepdims=keepdims)
  positive = squares > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, squares, 1.0)), 0.0)


def _pearson_rows(a: jax.Array, b: jax.Array, eps: float = 1e-8) -> jax.Array:
  """Pearson correlation of each row of a with the same row of b (DIST's, with its eps)."""
  a, b = a - a.mean(-1, keepdims=True), b - b.mean(-1, keepdims=True)
  return jnp.sum(a * b, -1) / (_norm(a) * _norm(b) + eps)


def dist(student_logits: jax.Array, teacher_logits: jax.Array, *, beta: float | jax.Array = 1.0,
         gamma: float | jax.Array = 1.0, temperature: float | jax.Array = 1.0) -> jax.Array:
  """DIST (Huang et al. 2022): beta * inter-class + gamma * intra-class relation, each x T^2.

  Inter-class: 1 - the mean over examples of the Pearson correlation between the student's and
  the teacher's class probabilities at T; intra-class: the same over classes of the columns
  (each class's probabilities across the batch). Logits [B, C]."""
  chex.assert_equal_shape([student_logits, teacher_logits])
  p_student = jax.nn.softmax(student_logits / temperature, axis=-1)
  p_teacher = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits) / temperature, axis=-1)
  inter = 1 - _pearson_rows(p_student, p_teacher).mean()
  intra = 1 - _pearson_rows(p_student.T, p_teacher.T).mean()
  return temperature**2 * (beta * inter + gamma * intra)


def fitnets(student_features: jax.Array, teacher_features: jax.Array) -> jax.Array:
  """FitNets' hint loss (Romero et al. 2015): the mean squared error between the student's
  features, projected to the teacher's shape (the objective's adapter), and the teacher's."""
  chex.assert_equal_shape([student_features, teacher_features])
  return jnp.mean(jnp.square(student_features - jax.lax.stop_gradient(teacher_features)))


def attention_map(features: jax.Array, p: float = 2.0, eps: float = 1e-12) -> jax.Array:
  """Attention transfer's map of NHWC features [B, H, W, C] (or [B, D]): the mean over channels
  of |f|^p, flattened per example and L2-normalised (torch's F.normalize, eps 1e-12)."""
  maps = jnp.mean(jnp.abs(features) ** p, axis=-1).reshape(features.shape[0], -1)
  return maps / jnp.maximum(_norm(maps, keepdims=True), eps)


def attention_transfer(student_features: jax.Array, teacher_features: jax.Array,
                       p: float = 2.0) -> jax.Array:
  """Attention transfer (Zagoruyko & Komodakis 2017): the mean squared difference of the two
  attention maps (`attention_map`); the spatial sizes must agree, the channels need not."""
  chex.assert_equal_shape_prefix([student_features, teacher_features],
                                 student_features.ndim - 1)
  return jnp.mean(jnp.square(attention_map(student_features, p)
                             - attention_map(jax.lax.stop_gradient(teacher_features), p)))


def _pairwise_distances(embeddings: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Euclidean distances [B, B] between rows, clamped at eps before the root, diagonal 0."""
  squares = jnp.sum(embeddings**2, -1)
  squared = squares[:, None] + squares[None, :] - 2 * embeddings @ embeddings.T
  distances = jnp.sqrt(jnp.maximum(squared, eps))
  return distances * (1 - jnp.eye(embeddings.shape[0], dtype=distances.dtype))


def _smooth_l1(a: jax.Array, b: jax.Array) -> jax.Array:
  """torch's smooth_l1_loss (beta 1), mean over elements."""
  difference = jnp.abs(a - b)
  return jnp.mean(jnp.where(difference < 1, 0.5 * difference**2, difference - 0.5))


def rkd(student_features: jax.Array, teacher_features: jax.Array, *,
        distance_weight: float | jax.Array = 25.0,
        angle_weight: float | jax.Array = 50.0) -> jax.Array:
  """Relational KD (Park et al. 2019): distance_weight * the smooth-L1 gap between the two
  batches' pairwise distances, each normalised by its mean off-diagonal distance, plus
  angle_weight * the smooth-L1 gap between the cosines of the angles every triplet of examples
  makes; features [B, ...] flattened per example, their sizes free to differ."""
  student = student_features.reshape(student_features.shape[0], -1)
  teacher = jax.lax.stop_gradient(teacher_features).reshape(teacher_features.shape[0], -1)
  chex.assert_equal_shape_prefix([student, teacher], 1)
  count = student.shape[0] * (student.shape[0] - 1)  # Off-diagonal pairs (all positive).
  normalised = lambda d: d / (jnp.sum(d) / count)
  distance = _smooth_l1(normalised(_pairwise_distances(student)),
                        normalised(_pairwise_distances(teacher)))

  def cosines(embeddings):
    differences = embeddings[None, :, :] - embeddings[:, None, :]  # [B, B, D]: e_j - e_i.
    unit = differences / jnp.maximum(_norm(differences, keepdims=True), 1e-12)
    return jnp.einsum("ijd,ikd->ijk", unit, unit)

  angle = _smooth_l1(cosines(student), cosines(teacher))
  return distance_weight * distance + angle_weight * angle


# The logit terms a config adds by name (config.terms.NAME.*): (student logits [B, C], teacher
# logits [B, M, C], labels [B], the ensemble's mean, the term's numbers) -> the term.
LOGIT_TERMS: dict[str, Callable[..., jax.Array]] = {
    "dkd": lambda student, teachers, labels, ensemble, *, alpha, beta, temperature: dkd(
        student, ensemble_logits(teachers, temperature, ensemble), labels, alpha=alpha,
        beta=beta, temperature=temperature),
    "dist": lambda student, teachers, labels, ensemble, *, beta, gamma, temperature: dist(
        student, ensemble_logits(teachers, temperature, ensemble), beta=beta, gamma=gamma,
        temperature=temperature),
}
def adapter_name(term: str, index: int) -> str:
  """The name of the adapter of pair `index` of feature term `term` ('fitnets_0')."""
  return f"{term}_{index}"


def adapt_feature(features: jax.Array, adapter: dict[str, jax.Array]) -> jax.Array:
  """A learned linear map of the last axis (a 1x1 convolution of NHWC features): FitNets'
  regressor, from the student's channels to the teacher's."""
  return features @ adapter["kernel"] + adapter["bias"]


ADAPTED_TERMS = ("fitnets",)  # Feature terms whose student features pass through an adapter.
# The feature terms (config.terms.NAME.student / .teacher name the features): ([(student feature,
# teacher feature), ...], the term's numbers) -> the sum of the term over the pairs.
FEATURE_TERMS: dict[str, Callable[..., jax.Array]] = {
    "fitnets": lambda pairs: sum(fitnets(s, t) for s, t in pairs),
    "at": lambda pairs, *, p: sum(attention_transfer(s, t, p) for s, t in pairs),
    "rkd": lambda pairs, *, distance_weight, angle_weight: sum(
        rkd(s, t, distance_weight=distance_weight, angle_weight=angle_weight) for s, t in pairs),
}
