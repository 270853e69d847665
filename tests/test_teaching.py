"""Teaching modes (config.teaching): what the teacher sees beside the student's view, and mixup."""

import functools
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import kd_jax
from kd_jax import data, epochs, losses, models, parallelism, steps
from kd_jax.errors import ConfigError
from conftest import final_digests, make_tiny_mnist, tiny_config


def test_mixup_is_big_visions_and_a_function_of_its_key():
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.random((6, 28, 28)), jnp.float32)
  labels = jnp.arange(6)
  key = jax.random.key(3)
  mixed = data.mixup(key, images, labels, 1.0)
  again = data.mixup(key, images, labels, 1.0)
  assert jax.tree.all(jax.tree.map(np.array_equal, mixed, again))  # Deterministic per key.
  a = float(mixed["mix_weight"])
  assert 0.5 <= a <= 1.0
  np.testing.assert_allclose(mixed["image"], a * images + (1 - a) * jnp.roll(images, -1, 0),
                             rtol=1e-6)
  np.testing.assert_array_equal(mixed["mix_label"], [1, 2, 3, 4, 5, 0])
  weights = [float(data.mixup(jax.random.key(k), images, labels, 1.0)["mix_weight"])
             for k in range(200)]  # Beta(1, 1) folded onto [0.5, 1]: uniform there.
  assert 0.7 < np.mean(weights) < 0.8 and min(weights) >= 0.5
  # The hard term of a mixed batch: a of the own labels' cross-entropy, 1 - a of the neighbours'.
  logits = jnp.asarray(rng.normal(size=(6, 10)), jnp.float32)
  expected = (a * losses.hard_cross_entropy(logits, labels)
              + (1 - a) * losses.hard_cross_entropy(logits, jnp.roll(labels, -1)))
  assert float(losses.mixed_cross_entropy(logits, {"label": labels, **mixed})) == pytest.approx(
      float(expected), rel=1e-6)


def _view_gap(independent: bool, mixup_p: float, streamed: bool = False) -> float:
  """One real step whose targets are the images the teacher would read and whose loss logs
  their largest difference from the student's: an indexed step of the memory pipeline, or with
  `streamed` the grain pipeline's call on the same batch read from the host."""
  arrays = make_tiny_mnist(64, 8)
  train_data = {"image": jnp.asarray(arrays["train_images"]),
                "label": jnp.asarray(arrays["train_labels"], jnp.int32)}
  probe_targets = lambda variables, batch: batch.get("teacher_image", batch["image"])

  def probe_loss(logits, batch, targets, hparams):
    gap = jnp.max(jnp.abs(targets - batch["image"]))
    return losses.hard_cross_entropy(logits, batch["label"]), {"view_gap": gap}

  model = models.MLP((8,))
  step_fn = functools.partial(steps.train_step, model=model, optimizer=optax.sgd,
                              loss_fn=probe_loss, targets_fn=probe_targets, mixup_p=mixup_p)
  state = steps.create_train_state(jax.random.key(0), model, optax.sgd(0.1))
  if streamed:  # One step of one member: batches [steps, members, B, ...].
    batches = jax.tree.map(lambda a: a[None, None, :32], train_data)
    _, sums = epochs.streamed_steps(steps.stack_members([state]), None, batches,
                                   {"learning_rate": jnp.array([0.1])}, None, jnp.int32(0),
                                   jnp.int32(0), member_batch=1, step_fn=step_fn, max_shift=2,
                                   independent_views=independent)
    return float(sums["view_gap"][0])
  mesh = parallelism.make_mesh(jax.devices()[:1])
  _, metrics = steps.indexed_step(state, train_data, {"learning_rate": 0.1}, None,
                                  jnp.int32(0), jnp.int32(0), jnp.arange(32), step_fn=step_fn,
                                  max_shift=2, batch_sharding=parallelism.batch_sharded(mesh),
                                  independent_views=independent)
  return float(metrics["view_gap"])


@pytest.mark.parametrize("streamed", [False, True])  # The memory and the grain pipelines.
def test_teacher_and_student_see_the_same_bytes_unless_independent(streamed):
  assert _view_gap(False, mixup_p=0.0, streamed=streamed) == 0.0  # consistent
  assert _view_gap(False, mixup_p=1.0, streamed=streamed) == 0.0  # function_matching: the same
  assert _view_gap(True, mixup_p=0.0, streamed=streamed) > 0.5  # independent: another jitter


@pytest.fixture(scope="module")
def teacher(tiny_mnist_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("teacher") / "run"
  kd_jax.train(tiny_config(tiny_mnist_dir, num_epochs=1, model__hidden_sizes=(32,)), workdir)
  return workdir


def _config(tiny_mnist_dir, teacher, **overrides):
  return tiny_config(tiny_mnist_dir, teacher, **{"num_epochs": 2, "model__hidden_sizes": (16,),
                                                 "data__jitter": 2, **overrides})


@pytest.mark.slow  # Three in-process distillations.
def test_function_matching_trains_otherwise_and_resumes_bit_for_bit(tiny_mnist_dir, teacher,
                                                                     tmp_path):
  kd_jax.distill(_config(tiny_mnist_dir, teacher, teaching="function_matching"),
                 tmp_path / "fm", teacher=teacher)
  kd_jax.distill(_config(tiny_mnist_dir, teacher), tmp_path / "consistent", teacher=teacher)
  digests = final_digests(tmp_path / "fm")
  assert digests["params"] != final_digests(tmp_path / "consistent")["params"]
  resumed = tmp_path / "resumed"
  shutil.copytree(tmp_path / "fm", resumed)
  shutil.rmtree(max((p for p in (resumed / "checkpoints").iterdir() if p.name.isdigit()),
                    key=lambda p: int(p.name)))
  kd_jax.distill(_config(tiny_mnist_dir, teacher, teaching="function_matching"), resumed,
                 teacher=teacher)
  assert final_digests(resumed) == digests  # Mixup's draws are the same on resume.


@pytest.mark.slow  # Three in-process distillations.
def test_teacher_outputs_on_the_views_are_stored_once_and_read_back_bit_for_bit(
    tiny_mnist_dir, teacher, tmp_path, capsys):
  """teacher_views_dir: a first run stores the teacher's outputs on each epoch's (mixed-up)
  views, a second reads them instead of running the teacher (and computes again the one file
  corrupted since); both are the run with the teacher in the step, bit for bit."""
  fm = {"teaching": "function_matching"}
  kd_jax.distill(_config(tiny_mnist_dir, teacher, **fm), tmp_path / "in_step", teacher=teacher)
  expected = final_digests(tmp_path / "in_step")["params"]
  stored = _config(tiny_mnist_dir, teacher, teacher_views_dir=str(tmp_path / "views"), **fm)
  for name, held in (("first", 0), ("second", 2)):
    capsys.readouterr()
    kd_jax.distill(stored, tmp_path / name, teacher=teacher)
    out = capsys.readouterr().out
    assert f"holds {held} of the run's 2 epochs" in out
    assert final_digests(tmp_path / name)["params"] == expected, name
    [folder] = (tmp_path / "views").iterdir()
    if name == "first":  # 15 steps of 32 images, one teacher, ten classes, float32.
      assert np.load(folder / "epoch_00001.npy").shape == (15, 32, 1, 10)
      (folder / "epoch_00000.npy").write_bytes(b"flipped" + (folder / "epoch_00000.npy")
                                               .read_bytes()[7:])
  assert "does not match its recorded sha256" in out  # Epoch 0 computed again, epoch 1 read.
  key = json.loads((folder / "views.json").read_text())  # What the folder's name digests.
  assert key["views"]["jitter"] == 2 and key["views"]["mixup_p"] == 1.0 and key["teacher"]
  for overrides, match in (({"data__jitter": 0}, "nothing to store"),
                           ({"members": 2}, "share their batches")):
    with pytest.raises(ConfigError, match=f"teacher_views_dir=.*{match}"):
      kd_jax.distill(_config(tiny_mnist_dir, teacher, teacher_views_dir=str(tmp_path / "v"),
                             **overrides), tmp_path / "refused", teacher=teacher)


def test_fixed_caches_the_teacher_on_unjittered_images_and_modes_refuse_what_they_cannot(
    tiny_mnist_dir, teacher, tmp_path, capsys):
  kd_jax.distill(_config(tiny_mnist_dir, teacher, teaching="fixed", num_epochs=1),
                 tmp_path / "fixed", teacher=teacher)
  assert "Cached the teacher's logits" in capsys.readouterr().out
  for overrides, match in (({"teaching": "independent", "data__jitter": 0}, "data.jitter > 0"),
                           ({"teaching": "fixed", "cache_teacher_logits": False},
                            "cache_teacher_logits=True")):
    with pytest.raises(ConfigError, match=f"config.teaching=.*{match}"):
      kd_jax.distill(_config(tiny_mnist_dir, teacher, **overrides), tmp_path / "refused",
                     teacher=teacher)


@pytest.mark.slow  # Four trainings.
@pytest.mark.parametrize("mode", ["consistent", "fixed", "independent", "function_matching"])
def test_teaching_configs_distil_by_name(mode, tiny_mnist_dir, teacher, tmp_path):
  config = kd_jax.configs.get(mode, num_epochs=1, batch_size=32, eval_batch_size=40,
                              data__mnist_dir=str(tiny_mnist_dir), data__check_counts=False)
  run = kd_jax.distill(config, tmp_path / mode, teacher=teacher)
  assert run.config.teaching == mode and np.isfinite(run.metrics[-1]["train_loss"])


@pytest.mark.slow  # A distilled population and its evaluation, in-process.
def test_each_evaluation_measures_the_fit_to_the_teacher_on_the_test_set(tiny_mnist_dir, teacher,
                                                                         tmp_path):
  """big_vision's evaluators: agreement and KL(teacher || student) on the test set at every
  evaluation, the same figures `evaluate` reports for the final checkpoint."""
  run = kd_jax.distill(_config(tiny_mnist_dir, teacher, members=2), tmp_path / "run",
                       teacher=teacher)
  last = run.metrics[-1]
  assert len(last["test_teacher_agreement"]) == 2 and len(run.metrics) == 2
  fit = run.evaluate()["transfer_fit"]
  np.testing.assert_allclose(last["test_teacher_agreement"], fit["test_agreement"], atol=1e-9)
  np.testing.assert_allclose(last["test_teacher_kl"], fit["test_kl"], rtol=1e-4)
  assert "test_teacher_agreement" not in kd_jax.load(teacher).metrics[-1]  # No teacher, no fit.
