"""The train step is pure: it learns, ignores the teacher's dropout, and composes with vmap/scan."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import kd_jax
from kd_jax import (config_lib, data, evaluation, inputs, losses, models, parallelism, runs, steps,
                    targets)
from kd_jax.errors import ConfigError
from conftest import make_tiny_mnist, tiny_config

ADAM = optax.adam
HPARAMS = {"learning_rate": 1e-3}


@pytest.fixture(scope="module")
def batch():
  arrays = make_tiny_mnist(64, 10)
  return {"image": data.normalize(jnp.asarray(arrays["train_images"])),
          "label": jnp.asarray(arrays["train_labels"], jnp.int32)}


def _state(model, seed=0):
  return steps.create_train_state(jax.random.PRNGKey(seed), model, ADAM(1e-3))


def _stacked_variables(model, seed=1):
  return steps.stack_members([_state(model, seed).variables])


def _distill_step(student, teacher, temperature, alpha, learning_rate=1e-3, **loss_kwargs):
  """A jitted distillation step with the teacher in it, and its hparams."""
  step = jax.jit(functools.partial(
      steps.train_step, model=student, optimizer=ADAM,
      loss_fn=losses.make_distillation_loss(**loss_kwargs),
      targets_fn=targets.make_teacher_targets(teacher)))
  return step, {"learning_rate": learning_rate, "temperature": temperature, "alpha": alpha}


def _assert_trees_close(a, b, **kwargs):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **kwargs), a, b)


def test_train_step_learns(batch):
  model = models.MLP((32,))
  step = jax.jit(functools.partial(steps.train_step, model=model, optimizer=ADAM))
  state = _state(model)
  losses_seen = []
  for i in range(20):
    state, metrics = step(state, batch, jax.random.PRNGKey(i), HPARAMS)
    losses_seen.append(float(metrics["loss"]))
  assert losses_seen[-1] < 0.5 * losses_seen[0]
  assert int(state.step) == 20


def test_learning_rate_is_an_argument_not_a_constant(batch):
  """A swept rate reaches the update: rate 0 leaves the parameters as they were."""
  model = models.MLP((16,))
  step = jax.jit(functools.partial(steps.train_step, model=model, optimizer=ADAM))
  state = _state(model)
  frozen, _ = step(state, batch, jax.random.PRNGKey(0), {"learning_rate": 0.0})
  moved, _ = step(state, batch, jax.random.PRNGKey(0), {"learning_rate": 1e-2})
  _assert_trees_close(frozen.params, state.params, rtol=0, atol=0)
  assert not np.allclose(moved.params["output"]["kernel"], state.params["output"]["kernel"])


def test_sgd_momentum_follows_the_2012_schedule(batch):
  """Momentum 0.5 -> 0.99 linearly over momentum_epochs, the rate x0.998 per epoch and x(1 - m)."""
  config = config_lib.base_config()
  config.optimizer = "sgd_momentum"
  config.sgd.momentum_epochs = 4
  config_lib.validate(config)
  optimizer = steps.make_optimizer(config, steps_per_epoch=2)
  model = models.MLP((16,))
  state = steps.create_train_state(jax.random.PRNGKey(0), model, optimizer(0.1))
  step = jax.jit(functools.partial(steps.train_step, model=model, optimizer=optimizer))
  hparams = {"learning_rate": jnp.float32(0.1)}
  for count in range(6):  # The state holds the values the update just used, at `count`.
    state, metrics = step(state, batch, jax.random.PRNGKey(1), hparams)
    used = jax.tree.map(float, state.opt_state.hyperparams)
    momentum = 0.5 + 0.49 * min(count / 8, 1.0)
    assert used["momentum"] == pytest.approx(momentum, rel=1e-5)
    assert used["learning_rate"] == pytest.approx(0.1 * 0.998**(count // 2) * (1 - momentum),
                                                  rel=1e-5)
  assert np.isfinite(float(metrics["loss"]))


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_learning_rate_warms_up_linearly_then_follows_its_schedule(schedule):
  """Adam's step under a constant gradient is the rate itself (m-hat = v-hat = 1): 0 at the first
  step, half the peak halfway through the warm-up epoch, then the schedule from the peak."""
  config = config_lib.base_config()
  config.num_epochs, config.lr_warmup_epochs, config.lr_schedule = 4, 1, schedule
  config_lib.validate(config)
  optimizer = steps.make_optimizer(config, steps_per_epoch=10)
  tx = optimizer(0.1)
  params = jnp.zeros(2)
  swept = jax.jit(lambda rate: optimizer(rate).update(  # A swept rate is traced: it compiles.
      jnp.ones(2), optimizer(rate).init(params), params)[0])(jnp.float32(0.1))
  assert float(swept[0]) == 0.0
  opt_state, rates = tx.init(params), []
  for _ in range(40):
    updates, opt_state = tx.update(jnp.ones(2), opt_state, params)
    rates.append(-float(updates[0]))
  assert rates[0] == 0.0
  assert rates[5] == pytest.approx(0.05, rel=1e-5) and rates[10] == pytest.approx(0.1, rel=1e-5)
  if schedule == "cosine":  # Half-way through the 30 decay steps: half the peak.
    assert rates[25] == pytest.approx(0.05, rel=1e-4) and rates[39] < 0.001
  else:
    assert rates[39] == pytest.approx(0.1, rel=1e-5)
  config.lr_warmup_epochs = 4
  with pytest.raises(ConfigError, match="lr_warmup_epochs=4 .* fewer than num_epochs"):
    config_lib.validate(config)


@pytest.mark.slow  # A five-epoch run and its evaluation, in-process.
def test_evaluation_every_k_epochs_logs_test_figures_then_and_after_the_last(tiny_mnist_dir,
                                                                            tmp_path):
  run = kd_jax.train(tiny_config(tiny_mnist_dir, num_epochs=5, eval_every_epochs=2,
                                 model__hidden_sizes=(8,)), tmp_path / "run")
  assert [("test_errors" in r) for r in run.metrics] == [False, True, False, True, True]
  assert all(np.isfinite(r["train_loss"]) for r in run.metrics)
  assert run.metrics[-1]["test_errors"] == run.evaluate()["test_errors"]


def test_fit_to_teacher_measures_agreement_and_kl():
  teacher = jax.random.normal(jax.random.PRNGKey(0), (50, 1, 10))
  same = evaluation.fit_to_teacher(teacher, teacher)
  assert same["agreement"].tolist() == [1.0] and same["kl"][0] == pytest.approx(0.0, abs=1e-6)
  students = jnp.concatenate([teacher, -teacher], axis=1)  # Member 1 ranks everything backwards.
  fit = evaluation.fit_to_teacher(students, teacher)
  assert fit["agreement"][1] == 0.0 and fit["kl"][1] > 1.0
  # The KL is the textbook one: sum p_t (log p_t - log p_s), averaged over examples.
  p_t, log_p_s = jax.nn.softmax(teacher[:, 0]), jax.nn.log_softmax(-teacher[:, 0])
  expected = np.mean(np.sum(p_t * (np.log(p_t) - log_p_s), -1))
  assert fit["kl"][1] == pytest.approx(expected, rel=1e-5)


def test_teacher_targets_do_not_depend_on_the_dropout_key(batch):
  """The teacher has heavy dropout; if its targets used the step's key, these would differ."""
  teacher = models.MLP((48,), input_dropout=0.2, hidden_dropout=0.5)
  teacher_variables = _stacked_variables(teacher)
  student = models.MLP((16,))  # No dropout: the key could only reach the teacher.
  step, hparams = _distill_step(student, teacher, 4.0, 0.9)
  state = _state(student)
  a, _ = step(state, batch, jax.random.PRNGKey(1), hparams, teacher_variables)
  b, _ = step(state, batch, jax.random.PRNGKey(2), hparams, teacher_variables)
  _assert_trees_close(a.params, b.params, rtol=0, atol=0)
  np.testing.assert_array_equal(
      targets.make_teacher_targets(teacher)(teacher_variables, batch)[:, 0],
      teacher.apply(steps.take_member(teacher_variables, 0), batch["image"],
                    train=False))


def test_no_gradient_reaches_the_teacher(batch):
  teacher = models.MLP((48,))
  teacher_variables = _stacked_variables(teacher)
  student_logits = jnp.zeros((64, 10))
  targets_fn = targets.make_teacher_targets(teacher)

  def loss(params):
    teacher_logits = targets_fn(params, batch)
    return losses.soft_loss("soft_cross_entropy", student_logits, teacher_logits, 4.0)

  grads = jax.grad(loss)(teacher_variables)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))


def test_max_norm_is_applied_after_every_update(batch):
  model = models.MLP((32,))
  step = jax.jit(functools.partial(steps.train_step, model=model, optimizer=ADAM, max_norm=0.5))
  state, _ = step(_state(model), batch, jax.random.PRNGKey(0), {"learning_rate": 0.5})
  norms = jnp.linalg.norm(state.params["hidden_0"]["kernel"], axis=0)
  assert float(norms.max()) <= 0.5 + 1e-5


def test_step_vmaps_over_a_stack_of_states(batch):
  model = models.MLP((16,), hidden_dropout=0.3)
  step = functools.partial(steps.train_step, model=model, optimizer=ADAM)
  states = [_state(model, seed) for seed in range(3)]
  keys = jax.random.split(jax.random.PRNGKey(7), 3)
  rates = jnp.asarray([1e-3, 3e-3, 1e-2])
  vmapped, metrics = jax.jit(jax.vmap(step, in_axes=(0, None, 0, 0)))(
      steps.stack_members(states), batch, keys, {"learning_rate": rates})
  assert metrics["loss"].shape == (3,)
  for i, state in enumerate(states):
    single, _ = step(state, batch, keys[i], {"learning_rate": rates[i]})
    _assert_trees_close(steps.take_member(vmapped.params, i), single.params, rtol=1e-5,
                        atol=1e-6)


def test_step_runs_inside_scan_like_a_python_loop(batch):
  model = models.MLP((16,))
  step = functools.partial(steps.train_step, model=model, optimizer=ADAM)
  keys = jax.random.split(jax.random.PRNGKey(3), 4)
  scanned, _ = jax.jit(lambda s: jax.lax.scan(lambda s, k: step(s, batch, k, HPARAMS), s, keys))(
      _state(model))
  looped = _state(model)
  for key in keys:
    looped, _ = step(looped, batch, key, HPARAMS)
  _assert_trees_close(scanned.params, looped.params, rtol=1e-5, atol=1e-6)


def test_compiled_epoch_is_deterministic_and_depends_on_epoch():
  arrays = make_tiny_mnist(96, 10)
  mesh = parallelism.make_mesh(jax.devices()[:1])
  model = models.MLP((16,), hidden_dropout=0.2)
  step_fn = functools.partial(steps.train_step, model=model, optimizer=ADAM)
  epoch_fn = jax.jit(functools.partial(steps.train_epoch, step_fn=step_fn, batch_size=32,
                                       max_shift=2, batch_sharding=parallelism.batch_sharded(mesh)))
  train_data = {"image": jnp.asarray(arrays["train_images"]),
                "label": jnp.asarray(arrays["train_labels"], jnp.int32)}
  run = lambda epoch: epoch_fn(_state(model), train_data, HPARAMS, None, jnp.int32(epoch))
  (a, metrics), (b, _), (c, _) = run(0), run(0), run(1)
  assert int(a.step) == 3 and np.isfinite(metrics["loss"])
  _assert_trees_close(a.params, b.params, rtol=0, atol=0)
  assert not np.allclose(a.params["hidden_0"]["kernel"], c.params["hidden_0"]["kernel"])


def test_evaluation_counts_every_example_once():
  arrays = make_tiny_mnist(10, 37)
  mesh = parallelism.make_mesh(jax.devices()[:1])
  model = models.MLP((16,))
  params = _state(model).params
  split = inputs.put_eval_split(arrays["test_images"],
                                    arrays["test_labels"].astype(np.int32), 10, mesh)
  result = evaluation.make_evaluator(model, 10, mesh, 1)(
      steps.stack_members([{"params": params}]), split)
  logits = model.apply({"params": params}, data.normalize(jnp.asarray(arrays["test_images"])),
                       train=False)
  wrong = np.asarray(jnp.argmax(logits, -1)) != arrays["test_labels"]
  for figures in (result["members"][0], result["ensemble"]):  # One member is its own ensemble.
    assert figures["errors"] == int(wrong.sum())
    assert figures["per_class_errors"] == np.bincount(arrays["test_labels"][wrong],
                                                      minlength=10).tolist()
    expected_loss = optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.asarray(arrays["test_labels"], jnp.int32)).mean()
    np.testing.assert_allclose(figures["loss"], expected_loss, rtol=1e-5)


def test_logits_of_pads_to_whole_batches_and_compiles_once_per_model():
  images = make_tiny_mnist(10, 37)["test_images"]
  mesh = parallelism.make_mesh(jax.devices()[:1])
  params = _state(models.MLP((16,))).params
  direct = models.MLP((16,)).apply({"params": params}, data.normalize(jnp.asarray(images)),
                                   train=False)
  params = steps.stack_members([{"params": params}])
  compiled_before = runs.logits_fn.cache_info().misses
  for _ in range(2):  # A new but equal module the second time: the same compiled scan.
    logits = runs.logits_of(models.MLP((16,)), params, jnp.asarray(images), 10, mesh, 1)
    assert logits.shape == (37, 1, 10)
    np.testing.assert_allclose(logits[:, 0], direct, rtol=1e-5, atol=1e-5)
  assert runs.logits_fn.cache_info().misses == compiled_before + 1


@pytest.mark.parametrize("soft_loss", ["soft_cross_entropy", "logit_matching", "softmax_mse"])
def test_every_soft_loss_pulls_the_student_towards_the_teacher(batch, soft_loss):
  teacher = models.MLP((48,))
  teacher_variables = _stacked_variables(teacher)
  student = models.MLP((16,))
  step, hparams = _distill_step(student, teacher, 3.0, 1.0, learning_rate=3e-3,
                                soft_loss_name=soft_loss)
  teacher_logits = teacher.apply(steps.take_member(teacher_variables, 0),
                                 batch["image"], train=False)
  gap = lambda s: float(jnp.abs(jax.nn.softmax(student.apply({"params": s.params},
                                                             batch["image"], train=False))
                                - jax.nn.softmax(teacher_logits)).mean())
  state = _state(student)
  before = gap(state)
  for i in range(30):
    state, metrics = step(state, batch, jax.random.PRNGKey(i), hparams, teacher_variables)
  assert gap(state) < 0.5 * before
  assert np.isfinite(metrics["soft_loss"]) and np.isfinite(metrics["hard_loss"])
