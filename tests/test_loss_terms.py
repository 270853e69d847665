"""Loss terms beyond the paper's, added by config (config.terms.NAME.*): their weighted sum with
the paper's loss, their warm-up, ensembles, and a population sweeping a term's number."""

import json
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kd_jax
from kd_jax import (checkpointing, config_lib, export, features, losses, parallelism,
                    population, trainer)
from kd_jax.errors import ConfigError
from conftest import TINY_OVERRIDES, final_digests, run_command, tiny_config

MESH = parallelism.make_mesh(jax.devices()[:1])


def _inputs(members=1, seed=0):
  rng = np.random.default_rng(seed)
  student = jnp.asarray(rng.normal(size=(8, 10)) * 2, jnp.float32)
  teachers = jnp.asarray(rng.normal(size=(8, members, 10)) * 2, jnp.float32)
  return student, teachers, {"label": jnp.asarray(rng.integers(0, 10, 8))}


def test_terms_add_to_the_papers_loss_weighted_and_warmed_up():
  student, teachers, batch = _inputs()
  hparams = {"temperature": 4.0, "alpha": 0.7, "terms.dkd.weight": 2.0, "terms.dkd.alpha": 1.0,
             "terms.dkd.beta": 8.0, "terms.dkd.temperature": 4.0}
  paper, _ = losses.make_distillation_loss()(student, batch, teachers, hparams)
  with_dkd = losses.make_distillation_loss(terms=("dkd",), warmup_epochs={"dkd": 4},
                                           steps_per_epoch=10)
  dkd = losses.dkd(student, teachers[:, 0], batch["label"], alpha=1.0, beta=8.0, temperature=4.0)
  for step, ramp in ((0, 1 / 4), (9, 1 / 4), (10, 2 / 4), (35, 1.0), (500, 1.0)):
    loss, parts = with_dkd(student, batch, teachers, {**hparams, "step": jnp.asarray(step)})
    assert float(parts["dkd_loss"]) == pytest.approx(float(dkd), rel=1e-5)
    assert float(loss) == pytest.approx(float(paper) + 2.0 * ramp * float(dkd), rel=1e-5)
  dist = losses.make_distillation_loss(terms=("dist",))(
      student, batch, teachers, {"temperature": 4.0, "alpha": 0.0, "step": 0,
                                 "terms.dist.weight": 1.0, "terms.dist.beta": 2.0,
                                 "terms.dist.gamma": 3.0, "terms.dist.temperature": 1.0})
  assert float(dist[1]["dist_loss"]) == pytest.approx(float(losses.dist(
      student, teachers[:, 0], beta=2.0, gamma=3.0)), rel=1e-5)


def test_a_term_distils_from_an_ensembles_probabilities():
  _, teachers, _ = _inputs(members=3)
  for mean in losses.ENSEMBLE_MEANS:
    logits = losses.ensemble_logits(teachers, 4.0, mean)
    np.testing.assert_allclose(jax.nn.softmax(logits / 4.0),
                               jnp.exp(losses.ensemble_log_probabilities(teachers, 4.0, mean)),
                               rtol=1e-5, atol=1e-7)
  one = teachers[:, :1]  # One teacher: its own logits, shifted, which no softmax sees.
  np.testing.assert_allclose(jax.nn.softmax(losses.ensemble_logits(one, 2.0) / 2.0),
                             jax.nn.softmax(one[:, 0] / 2.0), rtol=1e-5, atol=1e-7)


def test_term_fields_are_validated_and_swept(tiny_mnist_dir, tmp_path):
  config = tiny_config(tiny_mnist_dir, tmp_path, terms__dkd__weight=1.0,
                       sweep__terms__dkd__beta=(1.0, 8.0), members=2)
  assert config_lib.active_terms(config) == ("dkd",)
  listed = population.members(config)
  assert [(m["terms.dkd.beta"], m["seed"]) for m in listed] == [(1.0, 0), (1.0, 1), (8.0, 0),
                                                                (8.0, 1)]
  assert all(m["terms.dkd.weight"] == 1.0 for m in listed)
  assert "terms.dkd.beta" not in population.members(tiny_config(tiny_mnist_dir, tmp_path))[0]
  for field, value, words in (("terms.dkd.weight", -1.0, "a number >= 0"),
                              ("sweep.terms.dist.temperature", (0.0,), "a tuple, each a number")):
    with pytest.raises(ConfigError, match=f"config.{field}=.*expected {words}"):
      tiny_config(tiny_mnist_dir, tmp_path, **{field.replace(".", "__"): value})


@pytest.fixture(scope="module")
def teacher(tiny_mnist_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("teacher") / "run"
  trainer.train_and_evaluate(tiny_config(tiny_mnist_dir, num_epochs=2, model__hidden_sizes=(48,)),
                             workdir)
  return workdir


def _train(config, workdir):
  trainer.train_and_evaluate(config, workdir)
  params = jax.device_get(checkpointing.restore_variables(workdir, MESH)[0]["params"])
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return params, records


@pytest.mark.slow  # A swept population and single runs, in-process.
def test_a_population_sweeps_a_terms_number_in_one_program(tiny_mnist_dir, teacher, tmp_path):
  common = dict(num_epochs=2, model__hidden_sizes=(32,), data__jitter=1, alpha=0.0,
                terms__dkd__weight=1.0, terms__dkd__warmup_epochs=2)
  swept, records = _train(tiny_config(tiny_mnist_dir, teacher, sweep__terms__dkd__beta=(1.0, 8.0),
                                      **common), tmp_path / "sweep")
  single, single_records = _train(tiny_config(tiny_mnist_dir, teacher, terms__dkd__beta=8.0,
                                              **common), tmp_path / "single")
  for a, b in zip(jax.tree.leaves(swept), jax.tree.leaves(single)):
    np.testing.assert_array_equal(a[1], b[0])  # Member 1 (beta 8) is the single run, bit for bit.
  assert not np.allclose(swept["output"]["kernel"][0], swept["output"]["kernel"][1])
  assert [r["train_dkd_loss"][1] for r in records] == [r["train_dkd_loss"]
                                                       for r in single_records]


@pytest.fixture(scope="module")
def cnn_teacher(tiny_mnist_dir, tmp_path_factory):
  """A registry CNN of widths no method config assumes (6-12 convolutions, dense 24)."""
  workdir = tmp_path_factory.mktemp("cnn_teacher") / "run"
  trainer.train_and_evaluate(tiny_config(tiny_mnist_dir, num_epochs=1, model__name="cnn",
                                         model__conv_features=(6, 12),
                                         model__hidden_sizes=(24,)), workdir)
  return workdir


@pytest.mark.slow  # CNN distillations: the fast tier keeps the loss terms' unit tests.
@pytest.mark.parametrize("name", ["dkd", "dist", "at", "rkd"])  # fitnets: the adapters' test.
def test_method_configs_distil_by_name_from_a_cnn_teacher(name, cnn_teacher, tiny_mnist_dir,
                                                          tmp_path):
  config = kd_jax.configs.get(name, num_epochs=1, batch_size=32, eval_batch_size=40,
                              data__mnist_dir=str(tiny_mnist_dir), data__check_counts=False)
  run = kd_jax.distill(config, tmp_path / name, teacher=cnn_teacher)
  assert run.config.model.name == "cnn" and run.config.terms[name].weight > 0
  record = json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[-1])
  assert np.isfinite(record[f"train_{name}_loss"]) and record[f"train_{name}_loss"] > 0


@pytest.mark.slow
def test_a_method_config_distils_from_the_command_line(cnn_teacher, tiny_mnist_dir, tmp_path):
  result = run_command("distill", "--config", "dkd", f"--workdir={tmp_path / 'dkd'}",
                       f"--config.teacher_workdir={cnn_teacher}", *TINY_OVERRIDES,
                       "--config.num_epochs=1", mnist_dir=tiny_mnist_dir)
  assert "dkd" in (tmp_path / "dkd" / "config.json").read_text()
  assert "train_dkd_loss" in (tmp_path / "dkd" / "metrics.jsonl").read_text(), result.stdout


@pytest.mark.slow  # Needs the CNN teacher.
def test_feature_terms_refuse_what_the_models_cannot_serve(cnn_teacher, tiny_mnist_dir, tmp_path):
  tiny = dict(num_epochs=1, batch_size=32, eval_batch_size=40,
              data__mnist_dir=str(tiny_mnist_dir), data__check_counts=False)
  with pytest.raises(ConfigError, match=r"config.terms.at.teacher: no feature 'block_7'.*block_0"):
    kd_jax.distill(kd_jax.configs.get("at", terms__at__teacher=("block_0", "block_7"), **tiny),
                   tmp_path / "missing", teacher=cnn_teacher)
  with pytest.raises(ConfigError, match="differ in spatial size"):
    kd_jax.distill(kd_jax.configs.get("at", terms__at__teacher=("block_1", "block_0"), **tiny),
                   tmp_path / "spatial", teacher=cnn_teacher)
  with pytest.raises(ConfigError, match="config.terms.at.teacher=.*one teacher feature per"):
    config_lib.validate(kd_jax.configs.get("at", terms__at__teacher=("block_1",),
                                           teacher_workdir="t"))


@pytest.mark.slow  # Three CNN distillations and an export.
def test_fitnets_adapters_train_resume_bitwise_and_stay_out_of_the_model(cnn_teacher,
                                                                         tiny_mnist_dir,
                                                                         tmp_path):
  config = kd_jax.configs.get("fitnets", num_epochs=2, batch_size=32, eval_batch_size=40,
                              model__conv_features=(4, 8), model__hidden_sizes=(16,),
                              data__mnist_dir=str(tiny_mnist_dir), data__check_counts=False)
  run = kd_jax.distill(config, tmp_path / "full", teacher=cnn_teacher)
  digests = final_digests(tmp_path / "full")
  # The adapter (8 student channels to the teacher's 12) is trained and checkpointed with its
  # Adam moments, each array checksummed, in the item only resuming reads.
  adapter = {path for path in digests["train"] if "adapters/fitnets_0" in path}
  assert {"adapters/fitnets_0/kernel", "adapters/fitnets_0/bias"} <= adapter
  assert any(path.startswith("opt_state") for path in adapter)
  # Never part of the model: not in its variables, predictions or export.
  assert not any("adapter" in path for name in ("params", "model_state")
                 for path in digests[name])
  assert set(run.variables) == {"params", "batch_stats"}
  assert "fitnets_0" not in run.variables["params"]
  export.export_run(tmp_path / "full", tmp_path / "exported")
  images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
  np.testing.assert_allclose(export.load(tmp_path / "exported")(images), run.predict(images),
                             rtol=1e-5, atol=1e-6)
  # Killed before its last checkpoint: resumed, it ends bit for bit where the full run did,
  # adapters included.
  resumed = tmp_path / "resumed"
  shutil.copytree(tmp_path / "full", resumed)
  last = max((p for p in (resumed / "checkpoints").iterdir() if p.name.isdigit()),
             key=lambda p: int(p.name))
  shutil.rmtree(last)
  kd_jax.distill(config, resumed, teacher=cnn_teacher)
  assert final_digests(resumed) == digests


def test_an_mlp_distils_through_its_hidden_layer(tiny_mnist_dir, teacher, tmp_path):
  _, records = _train(tiny_config(tiny_mnist_dir, teacher, num_epochs=1,
                                  model__hidden_sizes=(16,), terms__rkd__weight=1.0,
                                  terms__rkd__student=("hidden_0",),
                                  terms__rkd__teacher=("hidden_0",)), tmp_path / "rkd")
  assert np.isfinite(records[-1]["train_rkd_loss"]) and records[-1]["train_rkd_loss"] > 0


class _Block(nn.Module):
  @nn.compact
  def __call__(self, x, *, train):
    return nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3))(x)))


class _UserNet(nn.Module):
  @nn.compact
  def __call__(self, images, *, train):
    x = _Block(name="stem")(images[..., None], train=train)
    return nn.Dense(10)(x.reshape((x.shape[0], -1)))


def test_features_of_an_unedited_module_by_path_with_its_batchnorm_updated():
  model, images = _UserNet(), jnp.ones((2, 28, 28))
  variables = model.init(jax.random.key(0), images, train=False)
  logits, found, state = features.apply(model, variables, images, ("stem", "stem/Conv_0"),
                                        train=True, mutable=["batch_stats"])
  expected, expected_state = model.apply(variables, images, train=True, mutable=["batch_stats"])
  np.testing.assert_array_equal(logits, expected)  # Capturing changes nothing it computes.
  assert jax.tree.all(jax.tree.map(np.array_equal, state, dict(expected_state)))
  assert found["stem"].shape == (2, 28, 28, 4) and float(found["stem"].min()) >= 0  # Post-ReLU.
  assert found["stem/Conv_0"].shape == (2, 28, 28, 4)
  grad = jax.grad(lambda v: jnp.sum(features.apply(model, v, images, ("stem",), train=False)[1][
      "stem"]))(variables)
  assert float(jnp.abs(grad["params"]["stem"]["Conv_0"]["kernel"]).sum()) > 0
  with pytest.raises(KeyError, match="no feature 'head'"):
    features.apply(model, variables, images, ("head",), train=False)
