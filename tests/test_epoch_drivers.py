"""Convnets on XLA:CPU: the GEMM convolution equals lax's, and the stepped epoch driver is the
scanned one step by step (same batches, keys and updates), resumes bitwise and runs populations."""

import json
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kd_jax
from kd_jax import checkpointing, config_lib, epochs, models, parallelism, trainer
from conftest import tiny_config

MESH = parallelism.make_mesh(jax.devices()[:1])
CNN = {"model__name": "cnn", "model__conv_features": (4, 8), "model__hidden_sizes": (16,),
       "model__hidden_dropout": 0.2, "data__jitter": 1, "num_epochs": 2}


class UserConvNet(nn.Module):
  """A user's module with flax's own convolution (lax's, unless told otherwise) and BatchNorm."""

  conv: str = "lax"

  @nn.compact
  def __call__(self, x, *, train: bool):
    conv = models.gemm_conv if self.conv == "gemm" else None
    x = nn.Conv(4, (3, 3), conv_general_dilated=conv)(x[..., None])
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


@pytest.mark.parametrize("kernel, padding, strides", [
    ((3, 3), "SAME", (1, 1)), ((5, 5), "VALID", (1, 1)), ((1, 1), "SAME", (1, 1)),
    ((3, 2), ((2, 0), (1, -1)), (1, 1)), ((3, 3), "CIRCULAR", (1, 1)),
    ((3, 3), "SAME", (2, 2))])  # The last: strides go to lax's convolution.
def test_gemm_conv_equals_lax_convolution_and_its_gradients(kernel, padding, strides):
  images = jax.random.normal(jax.random.key(0), (2, 9, 11, 3))
  lax_conv = nn.Conv(5, kernel, strides=strides, padding=padding)
  gemm = nn.Conv(5, kernel, strides=strides, padding=padding, conv_general_dilated=models.gemm_conv)
  variables = lax_conv.init(jax.random.key(1), images)
  assert jax.tree.map(jnp.shape, gemm.init(jax.random.key(1), images)) == jax.tree.map(
      jnp.shape, variables)  # The same parameters: checkpoints are interchangeable.
  np.testing.assert_allclose(jax.jit(gemm.apply)(variables, images),
                             jax.jit(lax_conv.apply)(variables, images), rtol=1e-5, atol=1e-5)
  grad = lambda module: jax.jit(jax.grad(lambda v, x: jnp.sum(jnp.sin(module.apply(v, x))),
                                         argnums=(0, 1)))(variables, images)
  for ours, theirs in zip(jax.tree.leaves(grad(gemm)), jax.tree.leaves(grad(lax_conv))):
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 28, 28, 3), (2, 7, 7, 4), (1, 3, 5, 2)])
def test_max_pool_2x2_equals_flax_max_pool(shape):
  x = jax.random.normal(jax.random.key(0), shape)
  np.testing.assert_array_equal(models.max_pool_2x2(x), nn.max_pool(x, (2, 2), strides=(2, 2)))
  np.testing.assert_array_equal(
      jax.grad(lambda x: jnp.sum(models.max_pool_2x2(x) ** 2))(x),
      jax.grad(lambda x: jnp.sum(nn.max_pool(x, (2, 2), strides=(2, 2)) ** 2))(x))


def test_auto_steps_only_a_model_with_a_lax_convolution_on_cpu():
  config = config_lib.base_config()
  assert epochs.epoch_driver(config, models.MLP(hidden_sizes=(8,))) == "scan"
  assert epochs.epoch_driver(config, models.CNN()) == "scan"  # The GEMM convolution on CPU.
  assert epochs.epoch_driver(config, UserConvNet(conv="gemm")) == "scan"
  assert epochs.epoch_driver(config, UserConvNet()) == "steps"
  config.data.epoch_driver = "scan"
  assert epochs.epoch_driver(config, UserConvNet()) == "scan"


def _train(config, workdir, model=None):
  trainer.train_and_evaluate(config, workdir, model=model)
  variables = checkpointing.restore_variables(workdir, MESH)[0]
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return jax.device_get(variables), records


@pytest.fixture(scope="module")
def stepped_population(tiny_mnist_dir, tmp_path_factory):
  """Two registry CNNs (BatchNorm, dropout, jitter) trained as a population by the stepped driver."""
  workdir = tmp_path_factory.mktemp("stepped") / "run"
  config = tiny_config(tiny_mnist_dir, members=2, data__epoch_driver="steps", **CNN)
  return config, workdir, _train(config, workdir)


@pytest.mark.slow  # Trains tiny CNN populations in-process (about 30 s in all): not fast-tier.
def test_stepped_epochs_are_the_scanned_epochs_step_by_step(tiny_mnist_dir, tmp_path,
                                                           stepped_population):
  """The same batches, jitter, dropout masks and updates: equal up to float rounding (the two
  programs fuse differently), where a different batch or key would differ in the first digit."""
  _, _, (stepped, stepped_records) = stepped_population
  scanned, scanned_records = _train(
      tiny_config(tiny_mnist_dir, members=2, data__epoch_driver="scan", **CNN), tmp_path / "scan")
  for a, b in zip(jax.tree.leaves(stepped), jax.tree.leaves(scanned)):
    np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4)
  for stepped_record, scanned_record in zip(stepped_records, scanned_records):
    np.testing.assert_allclose(stepped_record["train_loss"], scanned_record["train_loss"],
                               rtol=1e-3)
  other_seed, _ = _train(tiny_config(tiny_mnist_dir, members=2, seed=1, data__epoch_driver="steps",
                                     **CNN), tmp_path / "other")
  kernel = lambda variables: variables["params"]["conv_0"]["kernel"]
  assert not np.allclose(kernel(other_seed), kernel(stepped), rtol=2e-3, atol=2e-4)


@pytest.mark.slow  # Trains tiny CNN populations in-process (about 30 s in all): not fast-tier.
def test_stepped_population_member_is_the_single_stepped_run(tiny_mnist_dir, tmp_path,
                                                            stepped_population):
  _, _, (population, records) = stepped_population
  single, single_records = _train(
      tiny_config(tiny_mnist_dir, seed=1, data__epoch_driver="steps", **CNN), tmp_path / "single")
  for a, b in zip(jax.tree.leaves(population), jax.tree.leaves(single)):
    np.testing.assert_array_equal(a[1], b[0])
  assert [r["test_errors"][1] for r in records] == [r["test_errors"] for r in single_records]


@pytest.mark.slow  # Trains tiny CNN populations in-process (about 30 s in all): not fast-tier.
def test_stepped_run_resumed_from_an_epoch_checkpoint_is_bitwise_the_same(tmp_path,
                                                                          stepped_population):
  config, workdir, (finished, records) = stepped_population
  resumed = tmp_path / "resumed"
  shutil.copytree(workdir, resumed)
  last = max((resumed / "checkpoints").iterdir(), key=lambda p: int(p.name) if p.name.isdigit()
             else -1)
  shutil.rmtree(last)  # As if killed before its last epoch's checkpoint was written.
  lines = (resumed / "metrics.jsonl").read_text().splitlines(keepends=True)
  (resumed / "metrics.jsonl").write_text("".join(lines[:-1]))
  variables, resumed_records = _train(config, resumed)
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(finished)):
    np.testing.assert_array_equal(a, b)
  assert [r["train_loss"] for r in resumed_records] == [r["train_loss"] for r in records]


@pytest.mark.slow  # A convnet trained in-process.
def test_a_users_convnet_trains_under_auto_with_the_stepped_driver(tiny_mnist_dir, tmp_path,
                                                                   capsys):
  run = kd_jax.train(tiny_config(tiny_mnist_dir, num_epochs=1), tmp_path / "user",
                     model=UserConvNet())
  assert "Compiled the step" in capsys.readouterr().out
  assert run.metrics[-1]["test_errors"] < 100  # Of 200 test images of ten classes: it learnt.
