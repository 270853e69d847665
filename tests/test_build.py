"""`trainer.build`: a run's phases set up as the trainer sets them up (what the benchmark times)."""

import jax
import numpy as np
import pytest

import kd_jax
from conftest import REPO_ROOT, tiny_config
from kd_jax import population, runs, trainer


@pytest.fixture(scope="module")
def teacher_dir(tiny_mnist_dir, tmp_path_factory):
  """A tiny teacher of 3 members, trained once for the module."""
  workdir = tmp_path_factory.mktemp("build") / "teacher"
  trainer.train_and_evaluate(tiny_config(tiny_mnist_dir, num_epochs=1, members=3,
                                         model__hidden_sizes=(16,)), workdir)
  return workdir


def test_build_sets_up_inputs_population_model_and_objective(tiny_mnist_dir, teacher_dir):
  config = tiny_config(tiny_mnist_dir, teacher=teacher_dir, members=2, teacher_members=(1,),
                       sweep__temperature=(2.0, 8.0), model__hidden_sizes=(8,))
  run = trainer.build(config)

  assert run.inputs.num_train == 480 and not run.inputs.streamed
  assert [(m["temperature"], m["seed"]) for m in run.population.members] == [
      (2.0, 0), (2.0, 1), (8.0, 0), (8.0, 1)]
  assert run.population.members == population.members(config)
  np.testing.assert_array_equal(run.population.hparams["temperature"], [2.0, 2.0, 8.0, 8.0])
  assert set(run.population.hparams) == {"temperature", "alpha", "learning_rate"}
  # The un-jittered transfer set: the teacher's logits, cached once by the objective, are the
  # teacher run's own logits on the training images.
  teacher = runs.Run.open(teacher_dir, members=(1,))
  np.testing.assert_array_equal(run.objective.teacher.cached_logits,
                                teacher.logits(run.inputs.train_data["image"]))
  assert run.objective.teacher.provenance["step"] == teacher.step
  assert set(run.records()) == {"data.json", "teacher.json"}
  # Each member's fresh state is its own seed's: members 0 and 2 share seed 0.
  params = trainer.fresh_state(config, run).params
  first, third, second = (jax.tree.map(lambda leaf, i=i: leaf[i], params) for i in (0, 2, 1))
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, first, third)))
  assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, first, second)))


def test_a_run_opens_one_way_and_the_api_run_is_one(teacher_dir):
  whole = runs.Run.open(teacher_dir)
  picked = runs.Run.open(teacher_dir, members=(2,))
  assert whole.num_members == 3 and picked.num_members == 1 and picked.step == whole.step
  images = np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)
  np.testing.assert_array_equal(whole.logits(images)[:, 2:], picked.logits(images))
  loaded = kd_jax.load(teacher_dir)
  assert isinstance(loaded, runs.Run) and loaded.describe() == whole.describe()
  np.testing.assert_allclose(loaded.predict(images, member=2).sum(-1), 1.0, rtol=1e-5)


def test_the_config_rarely_climbs_back_up_the_modules(tiny_mnist_dir, teacher_dir,
                                                      tmp_path, monkeypatch):
  """scripts/config_trace.py's count: the modules a distilled run's config visits, in call order,
  return to one already left at most 10 times (18 before the trainer's phases)."""
  monkeypatch.syspath_prepend(str(REPO_ROOT / "scripts"))
  import config_trace  # pylint: disable=import-outside-toplevel
  config = tiny_config(tiny_mnist_dir, teacher=teacher_dir, num_epochs=1,
                       model__hidden_sizes=(8,))
  visits = config_trace.trace(config, tmp_path / "student")
  assert visits[0] == "kd_jax.trainer" and "kd_jax.objective" in visits
  assert config_trace.returns(visits) <= 10, " -> ".join(visits)
  assert config_trace.returns(["a", "b", "a", "c", "b"]) == 2
