"""The distillation losses, including the paper's claims about T^2 and the high-T limit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import losses


def _logits(seed, shape=(1, 10), scale=1.0):
  return scale * jax.random.normal(jax.random.PRNGKey(seed), shape)


def _soft_ce(student_logits, teacher_logits, temperature):
  """The soft term against one teacher's logits (the loss takes its log-probabilities at T)."""
  return losses.soft_kl_divergence(student_logits,
                                   jax.nn.log_softmax(teacher_logits / temperature), temperature)


def _paper_cross_entropy(student, teacher, t):
  """The paper's soft term as written: T^2 * CE(p_teacher, q_student) at T."""
  p = jax.nn.softmax(teacher / t)
  return t**2 * jnp.mean(-(p * jax.nn.log_softmax(student / t)).sum(-1))


def test_soft_term_is_kl_times_t_squared_with_the_cross_entropys_gradients():
  student, teacher = _logits(0, (4, 10)), _logits(1, (4, 10))
  t = 5.0
  p = np.exp(teacher / t) / np.exp(teacher / t).sum(-1, keepdims=True)
  log_q = student / t - np.log(np.exp(student / t).sum(-1, keepdims=True))
  expected = t**2 * np.mean((p * (np.log(p) - log_q)).sum(-1))
  np.testing.assert_allclose(_soft_ce(student, teacher, t), expected, rtol=1e-5)
  # The paper's cross-entropy minus the teacher's (T^2-scaled) entropy: the same gradients.
  entropy = t**2 * np.mean(-(p * np.log(p)).sum(-1))
  np.testing.assert_allclose(_paper_cross_entropy(student, teacher, t),
                             expected + entropy, rtol=1e-5)
  np.testing.assert_allclose(jax.grad(_soft_ce)(student, teacher, t),
                             jax.grad(_paper_cross_entropy)(student, teacher, t), atol=1e-6)
  # A student that matches its teacher reports 0, at any temperature and through the full loss.
  for temperature in (1.0, 4.0, 20.0):
    assert abs(float(_soft_ce(teacher, teacher, temperature))) < 1e-4
  loss, parts = losses.make_distillation_loss()(teacher, {"label": jnp.argmax(teacher, -1)},
                                                teacher[:, None], {"temperature": 20.0,
                                                                   "alpha": 1.0})
  assert abs(float(loss)) < 1e-3 and abs(float(parts["soft_loss"])) < 1e-3


def test_t_squared_keeps_gradient_magnitude_across_temperatures():
  """Without the T^2 factor the gradient would shrink by 400x from T=1 to T=20."""
  student, teacher = _logits(0, scale=0.5), _logits(1, scale=0.5)
  grad = jax.grad(_soft_ce)
  norms = [float(jnp.linalg.norm(grad(student, teacher, t))) for t in (1.0, 2.0, 5.0, 10.0, 20.0)]
  assert max(norms) / min(norms) < 1.5, norms


def test_t_squared_can_be_switched_off_for_the_ablation():
  student, teacher = _logits(0, (4, 10)), _logits(1, (4, 1, 10))
  on = losses.make_distillation_loss()(student, {"label": jnp.zeros(4, jnp.int32)}, teacher,
                                       {"temperature": 8.0, "alpha": 1.0})[0]
  off = losses.make_distillation_loss(t_squared=False)(
      student, {"label": jnp.zeros(4, jnp.int32)}, teacher, {"temperature": 8.0, "alpha": 1.0})[0]
  np.testing.assert_allclose(on, 64.0 * off, rtol=1e-5)


def test_high_temperature_gradient_approaches_logit_difference_over_n():
  """Paper eq. 3-4: with zero-mean logits, dC/dz_i -> (z_i - v_i) / N as T grows."""
  z = _logits(2)
  v = _logits(3)
  z, v = z - z.mean(), v - v.mean()
  n = z.shape[-1]
  limit = (z - v) / n
  tolerance = 0.02 * float(jnp.abs(limit).max())
  grad_at = lambda t: jax.grad(_soft_ce)(z, v, t)
  np.testing.assert_allclose(grad_at(100.0), limit, atol=tolerance)
  assert float(jnp.abs(grad_at(1.0) - limit).max()) > 5 * tolerance  # Not true at low T.


def test_logit_matching_is_the_high_temperature_limit():
  z, v = _logits(4, (3, 10)), _logits(5, (3, 10))
  grad = jax.grad(losses.logit_matching)(z, v)
  # Mean over a batch of 3 divides each example's (z - v) / N by 3.
  np.testing.assert_allclose(grad, (z - v) / 10 / 3, rtol=1e-5)


def test_softmax_mse_is_the_notebooks_loss_without_t_squared():
  student, teacher = _logits(6, (2, 10)), _logits(7, (2, 10))
  t = 3.0
  expected = np.mean((jax.nn.softmax(student / t) - jax.nn.softmax(teacher / t))**2)
  np.testing.assert_allclose(losses.softmax_mse(student, jax.nn.softmax(teacher / t), t), expected,
                             rtol=1e-6)


def test_distillation_loss_mixes_soft_and_hard_by_alpha():
  student, teacher = _logits(8, (4, 10)), _logits(9, (4, 10))
  labels = jnp.array([0, 1, 2, 3])
  soft = _soft_ce(student, teacher, 20.0)
  hard = losses.hard_cross_entropy(student, labels)
  for alpha in (0.0, 0.3, 1.0):
    total, parts = losses.distillation_loss(student, teacher[:, None], labels, temperature=20.0,
                                            alpha=alpha)
    np.testing.assert_allclose(total, alpha * soft + (1 - alpha) * hard, rtol=1e-6)
    np.testing.assert_allclose(parts["soft_loss"], soft, rtol=1e-6)


def test_soft_loss_is_minimal_when_student_matches_teacher():
  teacher = _logits(10, (2, 10))
  at_match = _soft_ce(teacher, teacher, 4.0)
  elsewhere = _soft_ce(teacher + _logits(11, (2, 10)), teacher, 4.0)
  assert at_match < elsewhere


def test_shape_mismatch_is_caught():
  with pytest.raises(AssertionError):
    losses.soft_kl_divergence(jnp.zeros((2, 10)), jnp.zeros((3, 10)), 2.0)


def test_ensemble_targets_average_tempered_probabilities():
  members = _logits(12, (4, 3, 10), scale=3.0)  # [B, M, C]: three teachers.
  t = 4.0
  probs = jax.nn.softmax(members / t)
  np.testing.assert_allclose(np.exp(losses.ensemble_log_probabilities(members, t)), probs.mean(axis=1),
                             rtol=1e-6)
  geometric = np.exp(np.log(probs).mean(axis=1))
  np.testing.assert_allclose(np.exp(losses.ensemble_log_probabilities(members, t, "geometric")),
                             geometric / geometric.sum(-1, keepdims=True), rtol=1e-5)
  # One teacher is its own ensemble, for every soft loss.
  student = _logits(13, (4, 10))
  for name in losses.DISTILL_LOSSES:
    np.testing.assert_allclose(
        losses.soft_loss(name, student, members[:, :1], t),
        losses.soft_loss(name, student, members[:, :1], t, ensemble="geometric"), rtol=1e-6)
  np.testing.assert_allclose(losses.soft_loss("soft_cross_entropy", student, members[:, :1], t),
                             _soft_ce(student, members[:, 0], t), rtol=1e-6)
