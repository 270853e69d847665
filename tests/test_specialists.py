"""Specialists (paper section 5): the two-digit dataset, clusters, dustbins, the KL combination,
and the command end to end on a tiny MNIST folder."""

from __future__ import annotations

import importlib.util
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO_ROOT, run_command
from kd_jax import config_lib, data, evaluate, losses, population
from kd_jax.paper import specialist_lib, specialists
from kd_jax.errors import ConfigError

_SPEC = importlib.util.spec_from_file_location("specialists_config",
                                               REPO_ROOT / "configs" / "specialists.py")
specialists_config = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(specialists_config)


def test_pairs_never_share_an_mnist_image_across_splits(tiny_mnist_dir):
  config = config_lib.base_config()
  config.data.name, config.data.mnist_dir, config.data.check_counts = (
      "mnist_pairs", str(tiny_mnist_dir), False)
  config.data.validation_size = 100
  config.data.pairs.num_train, config.data.pairs.num_validation = 600, 200
  config.data.pairs.num_test = 300
  digits = data.load_mnist(str(tiny_mnist_dir), 100, check_counts=False)
  pairs = data.load_dataset(config.data)
  assert pairs.train_images.shape == (600, 28, 56) and pairs.num_classes == 100
  assert pairs.test_images.shape == (300, 28, 56) and len(pairs.validation_labels) == 200

  def halves(images):
    return {half.tobytes() for image in images for half in (image[:, :28], image[:, 28:])}

  pools = {split: {image.tobytes() for image in getattr(digits, f"{split}_images")}
           for split in ("train", "validation", "test")}
  for split in ("train", "validation", "test"):
    used = halves(getattr(pairs, f"{split}_images"))
    assert used <= pools[split]  # Every digit comes from its own split's pool ...
    for other in set(pools) - {split}:
      assert not used & pools[other]  # ... and from no other (the tiny digits are all distinct).
  # Labels are 10 * left + right, and the same seed gives the same pairs.
  images, labels, indices = data.make_pairs(digits.test_images, digits.test_labels, 50, seed=3)
  np.testing.assert_array_equal(labels, 10 * digits.test_labels[indices[:, 0]]
                                + digits.test_labels[indices[:, 1]])
  np.testing.assert_array_equal(images[:, :, 28:], digits.test_images[indices[:, 1]])
  again = data.make_pairs(digits.test_images, digits.test_labels, 50, seed=3)
  np.testing.assert_array_equal(again[0], images)


def test_confused_classes_land_in_the_same_cluster():
  # Six classes; the generalist mixes up 0 with 3, 1 with 4, and 2 with 5.
  rng = np.random.default_rng(0)
  confused_with = {0: 3, 3: 0, 1: 4, 4: 1, 2: 5, 5: 2}
  rows = []
  for label in rng.integers(0, 6, 3000):
    probs = np.full(6, 0.01)
    share = rng.uniform(0.0, 0.5)
    probs[label] += 1 - share - 0.06
    probs[confused_with[label]] += share
    rows.append(probs)
  subsets = specialist_lib.cluster_classes(np.array(rows), num_clusters=3, seed=0)
  assert sorted(subsets) == [(0, 3), (1, 4), (2, 5)]
  # Clusters below min_classes get no specialist.
  assert specialist_lib.cluster_classes(np.array(rows), 6, min_classes=2) == []


def test_dustbin_mapping_and_oversampling_offset():
  maps = specialist_lib.class_maps([(4, 9, 7), (1, 2)], num_classes=10)
  np.testing.assert_array_equal(maps[0], [3, 3, 3, 3, 0, 3, 3, 2, 3, 1])
  np.testing.assert_array_equal(maps[1], [3, 0, 1, 3, 3, 3, 3, 3, 3, 3])  # 2 is unused.
  probs = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(0), (5, 10)))
  local = specialist_lib.local_probabilities(probs, jnp.asarray(maps[1]), 4)
  np.testing.assert_allclose(local[:, 0], probs[:, 1], rtol=1e-6)
  np.testing.assert_allclose(local[:, 2], 0.0)
  np.testing.assert_allclose(local[:, 3], 1 - probs[:, 1] - probs[:, 2], rtol=1e-5)
  # 20% of the training labels are in subset 0: batches of half subset raise its odds by 4.
  labels = np.array([4, 9] + [0] * 8)
  offsets = specialist_lib.dustbin_offsets(labels, [(4, 9), (0,)])
  np.testing.assert_allclose(offsets, [np.log(0.8 / 0.2), np.log(0.2 / 0.8)], rtol=1e-6)


def test_batches_are_half_subset_half_rest():
  labels = jnp.asarray(np.arange(1000) % 10)
  maps = jnp.asarray(specialist_lib.class_maps([(3, 8)], 10))
  sampler = specialist_lib.half_subset_batches(dustbin=2)
  batches = sampler(jax.random.PRNGKey(0), {"label": labels}, {"class_map": maps[0]}, 64)
  assert batches.shape == (1000 // 64, 64)
  batch_labels = np.asarray(labels[batches])
  assert np.isin(batch_labels[:, :32], (3, 8)).all()
  assert not np.isin(batch_labels[:, 32:], (3, 8)).any()
  assert len(np.unique(batches[:, :32])) > 150  # Drawn across the whole subset (200 examples).


def test_specialist_starts_from_the_generalist_with_dead_unused_outputs():
  generalist = {"hidden_0": {"kernel": jnp.ones((6, 4)), "bias": jnp.zeros(4)},
                "output": {"kernel": jnp.arange(40.0).reshape(4, 10), "bias": jnp.arange(10.0)}}
  params = specialist_lib.specialist_params(generalist, (7, 2), num_outputs=4)
  np.testing.assert_array_equal(params["hidden_0"]["kernel"], generalist["hidden_0"]["kernel"])
  np.testing.assert_array_equal(params["output"]["kernel"][:, :2],
                                generalist["output"]["kernel"][:, [7, 2]])
  assert params["output"]["bias"][2] == specialist_lib.UNUSED_BIAS
  others = [0, 1, 3, 4, 5, 6, 8, 9]
  np.testing.assert_allclose(params["output"]["kernel"][:, 3],
                             generalist["output"]["kernel"][:, others].mean(1))
  np.testing.assert_allclose(params["output"]["bias"][3], np.mean(others) + np.log(8), rtol=1e-6)


def test_specialist_loss_maps_labels_and_sums_soft_targets():
  maps = jnp.asarray(specialist_lib.class_maps([(1, 2), (5,)], 6))
  hparams = {"class_map": maps[0], "temperature": jnp.float32(2.0), "alpha": jnp.float32(0.5)}
  logits = jax.random.normal(jax.random.PRNGKey(1), (4, 3))
  teacher = jax.random.normal(jax.random.PRNGKey(2), (4, 1, 6))
  batch = {"label": jnp.asarray([1, 2, 0, 5])}
  hard = specialist_lib.specialist_loss(losses.hard_label_loss, 3)
  loss, parts = hard(logits, batch, None, hparams)
  np.testing.assert_allclose(loss, losses.hard_cross_entropy(logits, jnp.asarray([0, 1, 2, 2])),
                             rtol=1e-6)
  assert parts["accuracy"] == jnp.mean(jnp.argmax(logits, -1) == jnp.asarray([0, 1, 2, 2]))
  soft = specialist_lib.specialist_loss(losses.make_distillation_loss(), 3, soft_targets=True)
  _, parts = soft(logits, batch, teacher, hparams)
  summed = specialist_lib.local_probabilities(jax.nn.softmax(teacher[:, 0] / 2.0), maps[0], 3)
  np.testing.assert_allclose(parts["soft_loss"],
                             losses.soft_kl_divergence(logits, jnp.log(summed), 2.0), rtol=1e-5)


def test_combination_without_active_specialists_is_the_generalist():
  generalist = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(0), (3, 6)))
  specialist = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(1), (3, 1, 3)))
  maps = jnp.asarray(specialist_lib.class_maps([(1, 4)], 6))
  q = specialist_lib.combine(generalist, specialist, jnp.zeros((3, 1), bool), maps)
  np.testing.assert_allclose(q, generalist, atol=1e-6)


def test_combination_moves_towards_a_confident_specialist():
  generalist = jnp.asarray([[0.05, 0.50, 0.40, 0.05]])  # Undecided between 1 and 2.
  specialist = jnp.asarray([[[0.01, 0.98, 0.01]]])  # Subset (1, 2): sure it is 2.
  maps = jnp.asarray(specialist_lib.class_maps([(1, 2)], 4))
  active = specialist_lib.active_specialists(generalist, maps, dustbin=2, top_n=1)
  assert active.tolist() == [[True]]
  q = specialist_lib.combine(generalist, specialist, active, maps)
  assert q[0, 2] > q[0, 1] and q[0].argmax() == 2


def test_combination_converges_to_the_closed_form():
  # One specialist on subset S: the minimiser is q_c = (p_g + p_m) / 2 inside S and
  # p_g(c) (A + b) / (2 A) outside, with A = p_g's mass outside S and b = p_m's dustbin.
  rng = np.random.default_rng(0)
  subset = (1, 3)
  generalist = rng.dirichlet(np.ones(6), size=8).astype(np.float32)
  specialist = rng.dirichlet(np.ones(3), size=8).astype(np.float32)
  maps = jnp.asarray(specialist_lib.class_maps([subset], 6))
  q = specialist_lib.combine(jnp.asarray(generalist), jnp.asarray(specialist)[:, None],
                             jnp.ones((8, 1), bool), maps, num_steps=300)
  expected = generalist / 2
  expected[:, list(subset)] += specialist[:, :2] / 2
  outside = [0, 2, 4, 5]
  mass_out = generalist[:, outside].sum(1, keepdims=True)
  expected[:, outside] = generalist[:, outside] * (mass_out + specialist[:, 2:]) / (2 * mass_out)
  np.testing.assert_allclose(q, expected, atol=1e-4)


def test_specialist_configs_are_validated():
  config = config_lib.base_config()
  config.extension = specialist_lib.EXTENSION  # The hook that makes it a specialist run.
  config.class_subsets = ((1, 2), (2, 3))
  config.init_workdir = "runs/generalist"
  config.model.num_classes = 3
  with pytest.raises(ConfigError, match="class_subsets"):
    config_lib.validate(config)
  config.class_subsets = ((1, 2), (3,))
  config.model.num_classes = 10
  with pytest.raises(ConfigError, match="model.num_classes=10 .* 3: the largest"):
    config_lib.validate(config)
  config.model.num_classes = 3
  config_lib.validate(config)
  assert [m["subset"] for m in population.members(config)] == [0, 1]
  config.data.shared_order = True  # Specialists read batches of their own classes.
  with pytest.raises(ConfigError, match="data.shared_order=True .* False with an extension"):
    config_lib.validate(config)
  config.data.shared_order = False
  config.data.name = "mnist_pairs"
  with pytest.raises(ConfigError, match="model.input_shape"):
    config_lib.validate(config)


@pytest.mark.slow
def test_specialists_command_end_to_end_and_resume(tmp_path, tiny_mnist_dir):
  args = ["--config", "configs/specialists.py:tiny",
          f"--config.generalist.data.mnist_dir={tiny_mnist_dir}", "--workdir", str(tmp_path)]
  first = run_command("specialists", *args)
  assert first.returncode == 0, first.stderr[-3000:]
  report = json.loads((tmp_path / "eval.json").read_text())
  assert 0 <= report["generalist_test_accuracy"] <= 1
  assert 0 <= report["combined_test_accuracy"] <= 1
  assert set(report["variants"]["hard targets"]) == {"oversampling", "validation", "none",
                                                     "within_cluster_accuracy"}
  headline = report["variants"]["hard targets"]["oversampling"]
  assert headline["combined_test_accuracy"] == report["combined_test_accuracy"]
  assert set(headline["errors_by_top_n"]) == {"1", "2"}
  rows = headline["by_coverage"]
  assert sum(r["test_examples"] for r in rows) == report["num_test_examples"] == 400
  assert set(json.loads((tmp_path / "timings.json").read_text())) == {"generalist", "specialists"}
  subsets = report["subsets"]
  assert len({c for s in subsets for c in s}) == sum(len(s) for s in subsets)  # Disjoint.
  assert "Table 4" in (tmp_path / "RESULTS.md").read_text()
  second = run_command("specialists", *args)
  assert second.returncode == 0, second.stderr[-3000:]
  assert second.stdout.count("is finished; skipped") == 2  # Generalist and specialists were done.
  with pytest.raises(ConfigError, match="holds specialists"):  # The evaluate command: exit 2.
    evaluate.evaluate_checkpoint(tmp_path / "specialists")


def test_shipped_specialists_config_is_valid(tmp_path):
  config = specialists_config.get_config()
  specialists.validate(config)
  run = specialists.specialist_config(config, tmp_path, [(1, 2, 3), (40, 90)], soft_targets=True)
  assert run.model.num_classes == 4 and run.teacher_workdir == str(tmp_path / "generalist")
  config.dustbin_offset = "half"
  with pytest.raises(ConfigError, match="dustbin_offset"):
    specialists.validate(config)
