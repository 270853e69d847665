"""The methods' loss terms (kd_jax.losses: DKD, DIST, FitNets, attention transfer, RKD), each
against an independent numpy restatement of its paper's formula, gradients where they are subtle."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import losses


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _kl(p, q):
  return float(np.sum(np.where(p > 0, p * (np.log(np.where(p > 0, p, 1)) - np.log(q)), 0)))


def dkd_reference(zs, zt, labels, alpha, beta, temperature):
  """Zhao et al. 2022, eq. 1-3: per example, b = (p_target, 1 - p_target) and the distribution
  over the other classes p_j / (1 - p_target); TCKD = KL(b_T || b_S), NCKD = KL(p^_T || p^_S);
  both x T^2 (the authors' code), averaged over the batch."""
  tckd = nckd = 0.0
  for s, t, y in zip(_softmax(zs / temperature), _softmax(zt / temperature), labels):
    others = np.arange(len(s)) != y
    tckd += _kl(np.array([t[y], 1 - t[y]]), np.array([s[y], 1 - s[y]]))
    nckd += _kl(t[others] / (1 - t[y]), s[others] / (1 - s[y]))
  return temperature**2 * (alpha * tckd + beta * nckd) / len(labels)


def dist_reference(zs, zt, beta, gamma, temperature):
  """Huang et al. 2022: 1 - mean Pearson r of the class probabilities per example (inter) and
  per class across the batch (intra), x T^2."""
  ps, pt = _softmax(zs / temperature), _softmax(zt / temperature)
  inter = 1 - np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(ps, pt)])
  intra = 1 - np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(ps.T, pt.T)])
  return temperature**2 * (beta * inter + gamma * intra)


def at_reference(fs, ft):
  """Zagoruyko & Komodakis 2017: Q = sum over channels of |A_c|^2 (mean: the code's), vectorised
  and L2-normalised per example; the loss is the mean squared difference of the maps."""
  def attention(f):
    q = (np.abs(f) ** 2).mean(-1).reshape(len(f), -1)
    return q / np.linalg.norm(q, axis=1, keepdims=True)
  return np.mean((attention(fs) - attention(ft)) ** 2)


def _huber(a, b):
  d = np.abs(a - b)
  return np.mean(np.where(d < 1, 0.5 * d**2, d - 0.5))


def rkd_reference(fs, ft, wd, wa):
  """Park et al. 2019: psi_D(t_i, t_j) = ||t_i - t_j|| / mu (mu the mean distance over pairs),
  psi_A(t_i, t_j, t_k) = cos of the angle at t_j between t_i and t_k (the code: at i, between j
  and k); Huber (smooth L1) between student and teacher, written as explicit loops."""
  def terms(e):
    e = e.reshape(len(e), -1)
    b = len(e)
    d = np.array([[np.linalg.norm(e[i] - e[j]) if i != j else 0.0 for j in range(b)]
                  for i in range(b)])
    d = d / (d.sum() / (b * (b - 1)))
    cos = np.zeros((b, b, b))
    for i, j, k in itertools.product(range(b), repeat=3):
      if j != i and k != i:
        u, v = e[j] - e[i], e[k] - e[i]
        cos[i, j, k] = u @ v / (np.linalg.norm(u) * np.linalg.norm(v))
    return d, cos
  (ds, cs), (dt, ct) = terms(fs), terms(ft)
  return wd * _huber(ds, dt) + wa * _huber(cs, ct)


@pytest.fixture
def logits():
  rng = np.random.default_rng(0)
  return (rng.normal(size=(6, 10)) * 3).astype(np.float32), \
      (rng.normal(size=(6, 10)) * 3).astype(np.float32), rng.integers(0, 10, 6)


def test_dkd_is_the_papers_decoupling(logits):
  zs, zt, labels = logits
  for alpha, beta, temperature in ((1.0, 8.0, 4.0), (0.5, 2.0, 1.0)):
    ours = losses.dkd(zs, zt, labels, alpha=alpha, beta=beta, temperature=temperature)
    assert float(ours) == pytest.approx(dkd_reference(zs.astype(np.float64), zt, labels, alpha,
                                                      beta, temperature), rel=1e-4)
  # The paper's identity, per example: KD = TCKD + (1 - p_target of the teacher) * NCKD.
  for i in range(len(labels)):
    one = lambda alpha, beta: float(losses.dkd(zs[i:i + 1], zt[i:i + 1], labels[i:i + 1],
                                               alpha=alpha, beta=beta, temperature=4.0))
    kd = float(losses.soft_kl_divergence(jnp.asarray(zs[i:i + 1]),
                                         jax.nn.log_softmax(zt[i:i + 1] / 4.0), 4.0))
    p_target = _softmax(zt[i] / 4.0)[labels[i]]
    assert kd == pytest.approx(one(1.0, 0.0) + (1 - p_target) * one(0.0, 1.0), rel=1e-4)


def test_dkds_gradient_is_the_references():
  rng = np.random.default_rng(1)
  zs, zt = rng.normal(size=(3, 5)) * 2, rng.normal(size=(3, 5)) * 2
  labels = np.array([0, 3, 4])
  grad = jax.grad(lambda z: losses.dkd(z, jnp.asarray(zt, jnp.float32), labels, alpha=1.0,
                                       beta=8.0, temperature=4.0))(jnp.asarray(zs, jnp.float32))
  numeric = np.zeros_like(zs)
  for index in np.ndindex(zs.shape):
    step = np.zeros_like(zs)
    step[index] = 1e-5
    numeric[index] = (dkd_reference(zs + step, zt, labels, 1.0, 8.0, 4.0)
                      - dkd_reference(zs - step, zt, labels, 1.0, 8.0, 4.0)) / 2e-5
  np.testing.assert_allclose(grad, numeric, rtol=2e-3, atol=1e-5)
  # A student equal to its teacher is at the minimum: no gradient (to float rounding).
  at_teacher = jax.grad(lambda z: losses.dkd(z, jnp.asarray(zt, jnp.float32), labels, alpha=1.0,
                                             beta=1.0, temperature=1.0))(
      jnp.asarray(zt, jnp.float32))
  np.testing.assert_allclose(at_teacher, 0, atol=1e-6)


def test_dist_is_one_minus_pearson_between_and_within_classes(logits):
  zs, zt, _ = logits
  for beta, gamma, temperature in ((1.0, 1.0, 1.0), (2.0, 2.0, 4.0)):
    ours = losses.dist(zs, zt, beta=beta, gamma=gamma, temperature=temperature)
    assert float(ours) == pytest.approx(dist_reference(zs.astype(np.float64), zt, beta, gamma,
                                                       temperature), rel=1e-4)
  assert float(losses.dist(zt, zt)) == pytest.approx(0.0, abs=1e-4)  # Only DIST's eps.


def test_fitnets_and_attention_transfer_are_their_papers():
  rng = np.random.default_rng(2)
  fs, ft = rng.normal(size=(4, 7, 7, 16)), rng.normal(size=(4, 7, 7, 32))
  assert float(losses.fitnets(fs, fs + 0.5)) == pytest.approx(0.25)
  ours = losses.attention_transfer(jnp.asarray(fs, jnp.float32), jnp.asarray(ft, jnp.float32))
  assert float(ours) == pytest.approx(at_reference(fs, ft), rel=1e-4)
  grad = jax.grad(lambda f: losses.attention_transfer(f, jnp.asarray(ft, jnp.float32)))(
      jnp.asarray(fs, jnp.float32))
  # The maps are scale-free: scaling a student's features changes nothing, so the gradient is
  # orthogonal to them (per example), as it is for any function of a normalised vector.
  per_example = np.sum(np.asarray(grad) * fs, axis=(1, 2, 3))
  np.testing.assert_allclose(per_example, 0, atol=1e-5)
  with pytest.raises(AssertionError):  # Spatial sizes must agree.
    losses.attention_transfer(fs, ft[:, :5, :5])


def test_rkd_is_the_papers_distance_and_angle_terms():
  rng = np.random.default_rng(3)
  fs, ft = rng.normal(size=(5, 3, 2)), rng.normal(size=(5, 8))
  rkd = jax.jit(losses.rkd)  # One compilation, not an eager dispatch per operation.
  ours = rkd(jnp.asarray(fs, jnp.float32), jnp.asarray(ft, jnp.float32))
  assert float(ours) == pytest.approx(rkd_reference(fs, ft, 25.0, 50.0), rel=1e-4)
  rkd_grad = jax.jit(jax.grad(lambda f: losses.rkd(f, jnp.asarray(ft, jnp.float32))))
  grad = rkd_grad(jnp.asarray(fs, jnp.float32))
  numeric = np.zeros_like(fs)
  for index in np.ndindex(fs.shape):
    step = np.zeros_like(fs)
    step[index] = 1e-5
    numeric[index] = (rkd_reference(fs + step, ft, 25.0, 50.0)
                      - rkd_reference(fs - step, ft, 25.0, 50.0)) / 2e-5
  np.testing.assert_allclose(grad, numeric, rtol=5e-3, atol=1e-4)
  # Two identical examples (a zero difference, a zero norm): finite gradients, as torch's.
  repeated = jnp.asarray(np.concatenate([fs[:1], fs[:4]]), jnp.float32)
  assert np.all(np.isfinite(rkd_grad(repeated)))
