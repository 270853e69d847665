"""Populations: P members in one compiled program, each exactly the single run with its settings.

Most cases call the trainer in-process on the tiny IDX folder (no interpreter start-up per run);
the kill-and-resume and command cases run the real commands.
"""

import functools
import json
import os
import signal
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kd_jax import (checkpointing, data, epochs, evaluate, losses, models, parallelism, steps,
                    targets, trainer)
from conftest import TINY_OVERRIDES, run_command, signal_after_epoch, tiny_config

MESH = parallelism.make_mesh(jax.devices()[:1])


def _config(mnist_dir, teacher=None, **overrides):
  """A tiny run: 32 hidden units with dropout and jitter (so masks and data order matter)."""
  return tiny_config(mnist_dir, teacher, **{"num_epochs": 3, "model__hidden_sizes": (32,),
                                            "model__hidden_dropout": 0.2, "data__jitter": 1,
                                            **overrides})


def _train(config, workdir):
  trainer.train_and_evaluate(config, workdir)
  params = checkpointing.restore_variables(workdir, MESH)[0]["params"]
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return jax.device_get(params), records


def _assert_member_equals(population_params, member, single_params, atol):
  for a, b in zip(jax.tree.leaves(population_params), jax.tree.leaves(single_params)):
    assert b.shape[0] == 1
    if atol == 0:
      np.testing.assert_array_equal(a[member], b[0])
    else:
      np.testing.assert_allclose(a[member], b[0], rtol=0, atol=atol)


@pytest.fixture(scope="module")
def population_teacher(tiny_mnist_dir, tmp_path_factory):
  """Two teachers with seeds 0 and 1 trained as one population."""
  workdir = tmp_path_factory.mktemp("teacher") / "run"
  trainer.train_and_evaluate(
      _config(tiny_mnist_dir, members=2, model__hidden_sizes=(48,), num_epochs=2), workdir)
  return workdir


@pytest.fixture(scope="module")
def single_runs(tiny_mnist_dir, tmp_path_factory):
  """Single runs with seeds 5, 6 and 7: (params, metrics records) of each."""
  root = tmp_path_factory.mktemp("singles")
  return [_train(_config(tiny_mnist_dir, seed=seed), root / f"seed{seed}") for seed in (5, 6, 7)]


@pytest.mark.parametrize("member_batch, atol", [
    (1, 0), pytest.param(3, 2e-6, marks=pytest.mark.slow)],  # Vmapped: the full suite's.
                         ids=["one-at-a-time", "vmapped"])
def test_population_of_seeds_equals_single_runs(tiny_mnist_dir, tmp_path, single_runs,
                                                member_batch, atol):
  """One member at a time runs each member's own program: bitwise. Vmapped, the batched matmuls
  round differently in the last bit, which Adam can carry to a few 1e-7 after 45 steps."""
  params, records = _train(_config(tiny_mnist_dir, members=3, member_batch=member_batch,
                                   seed=5), tmp_path / "population")
  population = json.loads((tmp_path / "population" / "population.json").read_text())
  assert [m["seed"] for m in population["members"]] == [5, 6, 7]
  assert all(len(r["test_errors"]) == 3 and "ensemble_test_errors" in r for r in records)
  for member, (single_params, single_records) in enumerate(single_runs):
    _assert_member_equals(params, member, single_params, atol)
    assert [r["test_errors"][member] for r in records] == [r["test_errors"]
                                                           for r in single_records]
  # Different seeds really are different models.
  kernels = params["hidden_0"]["kernel"]
  assert not np.allclose(kernels[0], kernels[1])


@pytest.mark.slow  # A sweep of four and a single run, in-process (about 20 s).
def test_member_of_a_temperature_sweep_equals_the_single_run(population_teacher, tiny_mnist_dir,
                                                             tmp_path):
  sweep_params, records = _train(
      _config(tiny_mnist_dir, population_teacher, sweep__temperature=(2.0, 8.0),
              sweep__alpha=(0.5, 1.0)), tmp_path / "sweep")
  members = json.loads((tmp_path / "sweep" / "population.json").read_text())["members"]
  assert [(m["temperature"], m["alpha"]) for m in members] == [(2.0, 0.5), (2.0, 1.0),
                                                              (8.0, 0.5), (8.0, 1.0)]
  single_params, single_records = _train(
      _config(tiny_mnist_dir, population_teacher, temperature=8.0, alpha=0.5),
      tmp_path / "single")
  _assert_member_equals(sweep_params, 2, single_params, atol=0)
  assert [r["test_errors"][2] for r in records] == [r["test_errors"] for r in single_records]
  assert not np.allclose(sweep_params["output"]["kernel"][0], sweep_params["output"]["kernel"][2])


@pytest.mark.slow  # Six in-process distillations (about 30 s).
@pytest.mark.parametrize("driver", ["scan", "steps"])
def test_shared_order_member_is_its_single_run_and_the_others_differ(population_teacher,
                                                                      tiny_mnist_dir, tmp_path,
                                                                      driver):
  """data.shared_order: every member sees the views (and mixup) of the member seeded `seed`, so
  that member is exactly its single run; the others keep their own initialisation and dropout."""
  fm = {"teaching": "function_matching", "data__epoch_driver": driver}
  shared_params, records = _train(
      _config(tiny_mnist_dir, population_teacher, seed=5, members=3, data__shared_order=True,
              **fm), tmp_path / "shared")
  single_params, single_records = _train(_config(tiny_mnist_dir, population_teacher, seed=5, **fm),
                                         tmp_path / "single")
  _assert_member_equals(shared_params, 0, single_params, atol=0)
  assert [r["test_errors"][0] for r in records] == [r["test_errors"] for r in single_records]
  kernels = shared_params["hidden_0"]["kernel"]
  assert not np.allclose(kernels[0], kernels[1]) and not np.allclose(kernels[1], kernels[2])


def test_shared_order_runs_the_teacher_once_per_batch_for_the_population():
  """The epoch's FLOPs (XLA's cost analysis of its HLO, members vmapped so that each is counted):
  three members with their own batches cost three teacher forwards and three student steps;
  sharing their batches, exactly two teacher forwards fewer."""
  teacher, student = models.MLP((512, 512)), models.MLP((8,))
  teacher_variables = steps.stack_members([models.init_variables(teacher, jax.random.key(1),
                                                                 data.IMAGE_SHAPE)])
  rng = np.random.default_rng(0)
  train_data = {"image": jnp.asarray(rng.integers(0, 256, (64, 28, 28)), jnp.uint8),
                "label": jnp.asarray(rng.integers(0, 10, 64), jnp.int32)}
  teacher_targets = targets.make_teacher_targets(teacher)

  def epoch_flops(num_members, shared):
    tx = optax.adam(1e-3)
    states = steps.stack_members([steps.create_train_state(jax.random.key(seed), student, tx)
                                  for seed in range(num_members)])
    hparams = {name: jnp.full(num_members, value)
               for name, value in (("learning_rate", 1e-3), ("temperature", 4.0), ("alpha", 0.7))}
    step_fn = functools.partial(
        steps.train_step, model=student, optimizer=optax.adam,
        loss_fn=losses.make_distillation_loss(),
        targets_fn=targets.given_targets if shared else teacher_targets)
    shared_settings = ({"views_rng": steps.run_rng(0), "targets_fn": teacher_targets,
                        "mixup_p": 0.0} if shared else None)
    epoch = jax.jit(functools.partial(
        steps.population_epoch, member_batch=num_members, step_fn=step_fn, batch_size=32,
        max_shift=1, batch_sharding=parallelism.batch_sharded(MESH), shared=shared_settings))
    cost = epoch.lower(states, train_data, hparams, teacher_variables,  # Of the HLO, uncompiled.
                       jnp.int32(0)).cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["flops"]

  # XLA counts the scanned step once; the teacher's forward on a batch, multiply-adds x 2:
  teacher_forward = 2 * 32 * (784 * 512 + 512 * 512 + 512 * 10)
  saved = epoch_flops(3, shared=False) - epoch_flops(3, shared=True)
  assert saved == pytest.approx(2 * teacher_forward, rel=0.02)  # Of three forwards, one is left.


def test_streamed_steps_of_a_member_are_the_same_alone_shared_or_in_a_population():
  """The grain pipeline's call (`epochs.streamed_steps`, 3 steps, jitter 1, a teacher in the
  step): member 1 of a population streaming its own batches, the same member alone, and alone
  on a shared stream keyed by its own seed (a streamed single run's path: viewed and labelled by
  the teacher once) train bit for bit alike; member 0 of the population is another run."""
  teacher, student = models.MLP((16,)), models.MLP((8,))
  teacher_variables = steps.stack_members([models.init_variables(teacher, jax.random.key(1),
                                                                 data.IMAGE_SHAPE)])
  teacher_targets = targets.make_teacher_targets(teacher)
  rng = np.random.default_rng(0)
  batches = {"image": jnp.asarray(rng.integers(0, 256, (3, 2, 8, 28, 28)), jnp.uint8),
             "label": jnp.asarray(rng.integers(0, 10, (3, 2, 8)), jnp.int32)}
  tx = optax.adam(1e-3)
  states = steps.stack_members([steps.create_train_state(jax.random.PRNGKey(seed), student, tx)
                                for seed in (0, 1)])  # Their keys: run_rng(0), run_rng(1).
  hparams = {name: jnp.full(2, value)
             for name, value in (("learning_rate", 1e-3), ("temperature", 4.0), ("alpha", 0.7))}
  member = lambda tree, i: jax.tree.map(lambda a: a[i:i + 1], tree)
  step_fn = lambda targets_fn: functools.partial(
      steps.train_step, model=student, optimizer=optax.adam,
      loss_fn=losses.make_distillation_loss(), targets_fn=targets_fn)
  run = functools.partial(epochs.streamed_steps, teacher_variables=teacher_variables,
                          epoch=jnp.int32(2), first_step=jnp.int32(5), member_batch=1,
                          max_shift=1)
  population, sums = run(states, None, batches, hparams, step_fn=step_fn(teacher_targets))
  alone, alone_sums = run(member(states, 1), None, jax.tree.map(lambda a: a[:, 1:], batches),
                          member(hparams, 1), step_fn=step_fn(teacher_targets))
  shared, _ = run(member(states, 1), None, jax.tree.map(lambda a: a[:, 1], batches),
                  member(hparams, 1), step_fn=step_fn(targets.given_targets),
                  shared={"views_rng": steps.run_rng(1), "targets_fn": teacher_targets,
                          "mixup_p": 0.0})
  for stacked, one, one_shared, start in zip(*(jax.tree.leaves(s.params) for s in
                                                (population, alone, shared, states))):
    np.testing.assert_array_equal(stacked[1], one[0])
    np.testing.assert_array_equal(one_shared[0], one[0])
    assert not np.array_equal(stacked[0], start[0])  # Member 0 trained too, on its own batches.
  np.testing.assert_array_equal(sums["loss"][1:], alone_sums["loss"])
  assert sums["first_nonfinite_step"].tolist() == [-1, -1]


@pytest.mark.slow  # Distillations with and without the cache, in-process.
def test_cached_teacher_logits_equal_the_teacher_in_the_step(population_teacher, tiny_mnist_dir,
                                                             tmp_path, capsys):
  """Without jitter the teacher's logits are computed once; they equal those of the step."""
  runs = {}
  for cached in (True, False):
    runs[cached], _ = _train(_config(tiny_mnist_dir, population_teacher, data__jitter=0,
                                     cache_teacher_logits=cached), tmp_path / f"cached{cached}")
  assert capsys.readouterr().out.count("Cached the teacher's logits") == 1
  # The teacher sees batches of 40 (eval) instead of 32 (train): float rounding only.
  for a, b in zip(jax.tree.leaves(runs[True]), jax.tree.leaves(runs[False])):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_ensemble_evaluation_averages_the_members_probabilities(population_teacher,
                                                                tiny_mnist_dir):
  arrays = data.load_idx_folder(tiny_mnist_dir, check_counts=False)
  params, run_config, _ = checkpointing.restore_variables(population_teacher, MESH)
  model = models.model_from_config(run_config.model)
  images = data.normalize(jnp.asarray(arrays["test_images"]))
  labels = arrays["test_labels"].astype(np.int32)
  member_probs = [np.asarray(jax.nn.softmax(model.apply(
      jax.tree.map(lambda leaf: leaf[i], params), images, train=False)))
      for i in range(2)]
  for mean, combine in (("arithmetic", lambda p: np.mean(p, axis=0)),
                        ("geometric", lambda p: np.exp(np.mean(np.log(p), axis=0)))):
    report = evaluate.evaluate_checkpoint(population_teacher, ensemble=mean)
    probs = combine(member_probs)
    probs = probs / probs.sum(-1, keepdims=True)
    assert report["ensemble"]["test_errors"] == int((probs.argmax(-1) != labels).sum())
    np.testing.assert_allclose(report["ensemble"]["test_loss"],
                               -np.log(probs[np.arange(len(labels)), labels]).mean(), rtol=1e-4)
    for i, member in enumerate(report["members"]):
      assert member["test_errors"] == int((member_probs[i].argmax(-1) != labels).sum())
      assert member["seed"] == i
    assert report["test_errors"] == report["ensemble"]["test_errors"]  # Top level: the ensemble.
  assert report["num_members"] == 2


POPULATION_ARGS = ["--config=configs/teacher.py", *TINY_OVERRIDES, "--config.num_epochs=6",
                   "--config.model.hidden_sizes=(32,)",
                   "--config.sweep.learning_rate=(0.001,0.003)"]


@pytest.mark.slow
def test_population_killed_with_sigkill_resumes_to_the_same_result(tiny_mnist_dir, tmp_path):
  reference, resumed = tmp_path / "reference", tmp_path / "resumed"
  run_command("train", f"--workdir={reference}", *POPULATION_ARGS, mnist_dir=tiny_mnist_dir)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_PLATFORMS="cpu", KD_JAX_MNIST_DIR=str(tiny_mnist_dir))
  returncode, _, _ = signal_after_epoch(
      [sys.executable, "-m", "kd_jax.train", f"--workdir={resumed}", *POPULATION_ARGS], env, 3,
      signal.SIGKILL)  # Saving epoch 2 waited for epoch 1's save: at least one is complete.
  assert returncode == -signal.SIGKILL
  assert 3 <= len((resumed / "metrics.jsonl").read_text().splitlines()) < 6
  result = run_command("train", f"--workdir={resumed}", *POPULATION_ARGS,
                       mnist_dir=tiny_mnist_dir)
  assert "Resuming" in result.stdout and "2 members" in result.stdout
  final = [checkpointing.restore_variables(run, MESH) for run in (reference, resumed)]
  assert final[0][2] == final[1][2] == 6 * 15
  for a, b in zip(jax.tree.leaves(final[0][0]), jax.tree.leaves(final[1][0])):
    assert a.shape[0] == 2
    np.testing.assert_array_equal(a, b)
  without_times = lambda run: [{k: v for k, v in json.loads(line).items() if k != "epoch_time_s"}
                               for line in (run / "metrics.jsonl").read_text().splitlines()]
  assert without_times(resumed) == without_times(reference)
  assert [r["epoch"] for r in without_times(resumed)] == list(range(1, 7))


@pytest.mark.slow
def test_distill_command_with_a_population_teacher(population_teacher, tiny_mnist_dir, tmp_path):
  student = tmp_path / "student"
  result = run_command("distill", "--config=configs/distill.py", *TINY_OVERRIDES,
                       f"--config.teacher_workdir={population_teacher}", f"--workdir={student}",
                       "--config.model.hidden_sizes=(16,)", "--config.teacher_members=(1,0)",
                       mnist_dir=tiny_mnist_dir)
  assert "an ensemble of 2 members" in result.stdout and "Cached the teacher" in result.stdout
  records = [json.loads(line) for line in (student / "metrics.jsonl").read_text().splitlines()]
  assert isinstance(records[-1]["test_errors"], int)  # One student: today's scalar records.
  assert records[-1]["test_errors"] < 100
  bad = run_command("distill", "--config=configs/distill.py", *TINY_OVERRIDES,
                    f"--config.teacher_workdir={population_teacher}",
                    f"--workdir={tmp_path / 'other'}", "--config.teacher_members=(2,)",
                    mnist_dir=tiny_mnist_dir, check=False)
  assert bad.returncode == 4 and "has 2 member(s)" in bad.stderr
  # The population trained on 1 device evaluates on 2 as training scored it on 1.
  run_command("evaluate", f"--workdir={population_teacher}", mnist_dir=tiny_mnist_dir, devices=2)
  on_two = json.loads((population_teacher / "eval.json").read_text())
  last = json.loads((population_teacher / "metrics.jsonl").read_text().splitlines()[-1])
  assert on_two["num_devices"] == 2
  assert [m["test_errors"] for m in on_two["members"]] == last["test_errors"]
  assert on_two["ensemble"]["test_errors"] == last["ensemble_test_errors"]


@pytest.mark.slow
def test_any_config_with_a_teacher_is_validated_as_distillation(population_teacher,
                                                                tiny_mnist_dir, tmp_path):
  result = run_command("train", "--config=configs/distill.py", *TINY_OVERRIDES,
                       f"--config.teacher_workdir={population_teacher}",
                       "--config.temperature=0", f"--workdir={tmp_path / 'run'}",
                       mnist_dir=tiny_mnist_dir, check=False)
  assert result.returncode == 2 and "config.temperature=0" in result.stderr
  assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()
