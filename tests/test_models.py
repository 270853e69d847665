"""The MLP and its max-norm constraint."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import config_lib, models


def test_teacher_shapes_follow_config():
  config = config_lib.base_config()
  config.model.hidden_sizes = (1200, 1200)
  model = models.model_from_config(config.model)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 784)), train=False)["params"]
  assert params["hidden_0"]["kernel"].shape == (784, 1200)
  assert params["hidden_1"]["kernel"].shape == (1200, 1200)
  assert params["output"]["kernel"].shape == (1200, 10)
  assert model.apply({"params": params}, jnp.zeros((5, 28, 28)), train=False).shape == (5, 10)


def test_dropout_only_in_training_mode():
  model = models.MLP((64,), input_dropout=0.2, hidden_dropout=0.5)
  x = jax.random.normal(jax.random.PRNGKey(1), (8, 784))
  params = model.init(jax.random.PRNGKey(0), x, train=False)["params"]
  eval_a = model.apply({"params": params}, x, train=False)
  eval_b = model.apply({"params": params}, x, train=False)
  np.testing.assert_array_equal(eval_a, eval_b)
  train_a = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
  train_b = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
  assert not np.allclose(train_a, train_b)


def test_max_norm_caps_hidden_incoming_vectors_only():
  model = models.MLP((32, 16))
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 784)), train=False)["params"]
  params = jax.tree.map(lambda p: p * 10.0, params)
  constrained = models.apply_max_norm(params, 2.0)
  for layer in ("hidden_0", "hidden_1"):
    norms = jnp.linalg.norm(constrained[layer]["kernel"], axis=0)
    np.testing.assert_array_less(norms, 2.0 + 1e-5)
    # Direction is kept: each column is a positive multiple of the original.
    cos = jnp.sum(constrained[layer]["kernel"] * params[layer]["kernel"], 0) / (
        norms * jnp.linalg.norm(params[layer]["kernel"], axis=0))
    np.testing.assert_allclose(cos, 1.0, rtol=1e-5)
  np.testing.assert_array_equal(constrained["output"]["kernel"], params["output"]["kernel"])
  np.testing.assert_array_equal(constrained["hidden_0"]["bias"], params["hidden_0"]["bias"])
  # Small vectors are untouched and 0 disables the constraint.
  small = models.apply_max_norm(params, 1e6)
  np.testing.assert_allclose(small["hidden_0"]["kernel"], params["hidden_0"]["kernel"])
  assert models.apply_max_norm(params, 0.0) is params


def test_describe_names_the_architecture():
  config = config_lib.base_config()
  config.model.hidden_sizes = (1200, 1200)
  config.model.input_dropout, config.model.hidden_dropout, config.model.max_norm = 0.2, 0.5, 4.0
  assert models.describe(config.model) == "MLP 784-1200-1200-10, dropout 0.2/0.5, max-norm 4"


def test_dropout_keeps_units_at_the_configured_rate_and_preserves_the_mean():
  x = jnp.ones((512, 1200))
  for rate in (0.1, 0.2, 0.25, 0.5):
    out = models.dropout(jax.random.PRNGKey(3), x, rate)
    threshold = models.keep_threshold(rate)
    assert abs(threshold / 256 - (1 - rate)) <= 1 / 512
    kept = np.asarray(out != 0)
    # 614,400 Bernoulli draws: the kept fraction is within 5 sd of threshold / 256.
    sd = np.sqrt(threshold / 256 * (1 - threshold / 256) / kept.size)
    assert abs(kept.mean() - threshold / 256) < 5 * sd
    np.testing.assert_allclose(np.asarray(out)[kept], 256 / threshold, rtol=1e-6)
    assert abs(float(out.mean()) - 1.0) < 5 * sd * 256 / threshold
  # A decision takes the fewest bits that draw its probability exactly (a byte for 0.2), and
  # every bit of a 32-bit draw is used: neighbouring units get independent decisions.
  assert [models.unit_bits(rate) for rate in (0.5, 0.25, 0.125, 0.2)] == [1, 2, 4, 8]
  for rate in (0.5, 0.25, 0.2):
    kept = np.asarray(models.dropout(jax.random.PRNGKey(4), x, rate) != 0)
    keep = models.keep_threshold(rate) / 256
    for offset in (1, 32 // models.unit_bits(rate)):  # In the same draw, and in the next one.
      agreement = (kept[:, :-offset] == kept[:, offset:]).mean()
      assert abs(agreement - (keep ** 2 + (1 - keep) ** 2)) < 0.01
  # Odd widths (not a multiple of 4 units) work, and the mask is a function of the key.
  odd = jnp.ones((3, 7))
  np.testing.assert_array_equal(models.dropout(jax.random.PRNGKey(5), odd, 0.5),
                                models.dropout(jax.random.PRNGKey(5), odd, 0.5))
  assert models.dropout(jax.random.PRNGKey(5), odd, 0.0) is odd


def test_bfloat16_matmuls_keep_float32_parameters_and_logits():
  config = config_lib.base_config()
  config.model.hidden_sizes = (64,)
  config.model.compute_dtype = "bfloat16"
  config_lib.validate(config)
  bf16, f32 = models.model_from_config(config.model), models.MLP((64,))
  x = jax.random.normal(jax.random.PRNGKey(1), (8, 784))
  params = f32.init(jax.random.PRNGKey(0), x, train=False)["params"]
  assert all(p.dtype == jnp.float32
             for p in jax.tree.leaves(bf16.init(jax.random.PRNGKey(0), x, train=False)))
  low, full = (m.apply({"params": params}, x, train=False) for m in (bf16, f32))
  assert low.dtype == jnp.float32
  np.testing.assert_allclose(low, full, atol=0.05 * float(jnp.abs(full).max()))
  assert not np.array_equal(low, full)  # The matmuls really ran in bfloat16.
  assert models.describe(config.model) == "MLP 784-64-10, bfloat16 matmuls"


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_matmul_gradient_is_the_float32_sums_gradient(dtype):
  keys = jax.random.split(jax.random.PRNGKey(2), 3)
  x = jax.random.normal(keys[0], (2, 6, 40)).astype(dtype)  # Leading dims flattened for dW.
  w = jax.random.normal(keys[1], (40, 24)).astype(dtype)
  weights = jax.random.normal(keys[2], (2, 6, 24))
  loss = lambda product: lambda x, w: jnp.sum(product(x, w).astype(jnp.float32) * weights)
  reference = lambda x, w: jnp.matmul(x.astype(jnp.float32), w.astype(jnp.float32))
  grads = jax.jit(jax.grad(loss(models.matmul), argnums=(0, 1)))(x, w)
  expected = jax.grad(loss(reference), argnums=(0, 1))(x, w)
  tolerance = 1e-5 if dtype == jnp.float32 else 2e-2
  for got, want, primal in zip(grads, expected, (x, w)):
    assert got.dtype == primal.dtype and got.shape == primal.shape
    np.testing.assert_allclose(np.asarray(got, np.float32), want,
                               rtol=tolerance, atol=tolerance * float(jnp.abs(want).max()))
  assert models.matmul(x, w).dtype == dtype
  # A population's member axis (vmap, over the weights or both) gives each member its own.
  grad_w = jax.grad(loss(models.matmul), argnums=1)
  members = jnp.stack([w, w * 2])
  for batched in (False, True):  # Inputs shared by the members, then each member its own.
    inputs = jnp.stack([x, x * 3]) if batched else x
    per_member = jax.vmap(grad_w, in_axes=(0 if batched else None, 0))(inputs, members)
    for i in range(2):  # Batched products may sum in another order: equal to rounding.
      np.testing.assert_allclose(np.asarray(per_member[i], np.float32),
                                 np.asarray(grad_w(inputs[i] if batched else x, members[i]),
                                            np.float32),
                                 rtol=tolerance, atol=tolerance)


def test_matmul_sums_bfloat16_in_float32():
  """Ones summed in bfloat16 stall at 256 (257 is not a bfloat16); in float32 they reach the
  count, in the product and in both gradients (dW sums over the 512 examples)."""
  x, w = jnp.ones((512, 600), jnp.bfloat16), jnp.ones((600, 8), jnp.bfloat16)
  out, backward = jax.vjp(models.matmul, x, w)
  grad_x, grad_w = backward(jnp.ones_like(out))
  assert out.dtype == jnp.bfloat16 and bool(jnp.all(out == 600))
  assert bool(jnp.all(grad_x == 8)) and bool(jnp.all(grad_w == 512))


def test_bfloat16_mlp_products_run_on_bfloat16_operands_on_cpu():
  """Every product of a bfloat16 MLP's training gradient (forward, dX and dW) takes bfloat16
  operands after XLA:CPU's passes: none was converted to float32 (what makes them no faster than
  float32 there)."""
  if jax.default_backend() != "cpu":
    pytest.skip("XLA:CPU's conversions are what this checks")
  model = models.MLP((64, 32), dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.PRNGKey(0), (16, 784))
  params = model.init(jax.random.PRNGKey(1), x, train=False)["params"]
  loss = lambda params: jnp.sum(model.apply({"params": params}, x, train=False) ** 2)
  text = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
  dtypes = dict(re.findall(r"%?([\w.-]+) = (\w+)\[", text))  # Instructions' result types ...
  dtypes.update(re.findall(r"([\w.-]+): (\w+)\[", text))  # ... and computations' parameters'.
  dots = re.findall(r"\bdot\(%?([\w.-]+), %?([\w.-]+)\)", text)
  assert len(dots) == 3 + 2 + 3  # Three layers' forward products, dX for two, dW for three.
  assert all(dtypes[lhs] == dtypes[rhs] == "bf16" for lhs, rhs in dots), dots
