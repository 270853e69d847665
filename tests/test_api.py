"""The Python API (kd_jax.train / distill / load, Run) and models with state (BatchNorm)."""

import json
import os
import signal
import subprocess
import sys

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

import kd_jax
from kd_jax import checkpointing, data, export, models, preemption, reporting
from conftest import REPO_ROOT

CNN = {"model__name": "cnn", "model__conv_features": (4,), "model__hidden_sizes": (16,)}


def _config(name, mnist_dir, **overrides):
  """A shipped config shrunk to the tiny IDX folder."""
  return kd_jax.configs.get(name, **{"data__mnist_dir": str(mnist_dir),
                                     "data__check_counts": False, "batch_size": 32,
                                     "eval_batch_size": 40, "num_epochs": 2,
                                     "model__hidden_sizes": (32,), **overrides})


@pytest.fixture(scope="module")
def teacher(tiny_mnist_dir, tmp_path_factory):
  return kd_jax.train(_config("quick_teacher", tiny_mnist_dir),
                      tmp_path_factory.mktemp("api") / "teacher")


@pytest.fixture(scope="module")
def cnn_teacher(tiny_mnist_dir, tmp_path_factory):
  return kd_jax.train(_config("quick_teacher", tiny_mnist_dir, **CNN),
                      tmp_path_factory.mktemp("api") / "cnn_teacher")


def test_train_distill_load_evaluate_predict(teacher, tiny_mnist_dir, tmp_path):
  assert kd_jax.configs.names() and "quick_teacher" in kd_jax.configs.names()
  student = kd_jax.distill(_config("quick_distill", tiny_mnist_dir, model__hidden_sizes=(16,)),
                           tmp_path / "student", teacher=teacher)
  assert student.config.teacher_workdir == str(teacher.workdir)
  assert [r["epoch"] for r in student.metrics] == [1, 2]
  report = student.evaluate()
  assert report == json.loads((tmp_path / "student" / "eval.json").read_text())
  arrays = data.load_idx_folder(tiny_mnist_dir, check_counts=False)
  images, labels = arrays["test_images"], arrays["test_labels"]
  probs = student.predict(images)
  assert probs.shape == (200, 10)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
  assert int((probs.argmax(-1) != labels).sum()) == report["test_errors"]
  # Floats in [0, 1] are the same images; any batch size; the loaded run predicts the same.
  np.testing.assert_allclose(student.predict(images / np.float32(255)), probs, atol=1e-6)
  np.testing.assert_allclose(student.predict(images[:7]), probs[:7], atol=1e-6)
  same = kd_jax.load(tmp_path / "student")
  assert same.step == student.step and same.members == student.members
  np.testing.assert_array_equal(same.predict(images), probs)
  for bad in (images.astype(np.float32), images[:, :20], images.astype(np.int64)):
    with pytest.raises(ValueError):
      student.predict(bad)
  # A finished run is returned as it is (nothing retrained), and the config is not changed.
  config = _config("quick_distill", tiny_mnist_dir, model__hidden_sizes=(16,))
  again = kd_jax.distill(config, tmp_path / "student", teacher=teacher.workdir)
  assert again.step == student.step and config.teacher_workdir == ""


def test_api_validates_and_refuses_like_the_commands(teacher, tiny_mnist_dir, tmp_path):
  with pytest.raises(kd_jax.ConfigError, match="config.num_epochs"):
    kd_jax.train(_config("quick_teacher", tiny_mnist_dir, num_epochs=0), tmp_path / "bad")
  assert not (tmp_path / "bad" / "config.json").exists()
  with pytest.raises(kd_jax.CheckpointError, match="different config"):
    kd_jax.train(_config("quick_teacher", tiny_mnist_dir, seed=3), teacher.workdir)
  with pytest.raises(KeyError, match="no_such_field"):
    kd_jax.configs.get("quick_teacher", no_such_field=1)


def test_an_interrupt_stops_a_library_run_cleanly_and_the_next_run_trains(
    tiny_mnist_dir, tmp_path, monkeypatch):
  original_write = reporting.MetricsWriter.write

  def write_then_interrupt(self, record):  # Ctrl-C (a notebook's "interrupt") after epoch 1.
    original_write(self, record)
    if record["epoch"] == 1:
      os.kill(os.getpid(), signal.SIGINT)

  monkeypatch.setattr(reporting.MetricsWriter, "write", write_then_interrupt)
  config = _config("quick_teacher", tiny_mnist_dir, num_epochs=3, model__hidden_sizes=(16,))
  handler_before = signal.getsignal(signal.SIGINT)
  with pytest.raises(kd_jax.Preempted, match="epoch 1 of 3"):
    kd_jax.train(config, tmp_path / "run")
  assert signal.getsignal(signal.SIGINT) is handler_before  # Restored: the process is the user's.
  assert preemption.signal_received() is None
  monkeypatch.setattr(reporting.MetricsWriter, "write", original_write)
  run = kd_jax.train(config, tmp_path / "run")  # Resumes from epoch 1 and finishes.
  assert [r["epoch"] for r in run.metrics] == [1, 2, 3]
  assert run.step == 3 * 15


class TinyNet(nn.Module):
  """A user's module: not in the registry, importable by path (this test module)."""

  width: int = 8

  @nn.compact
  def __call__(self, images, *, train: bool):
    x = nn.Dense(self.width)(images.reshape((images.shape[0], -1)))
    x = nn.BatchNorm(use_running_average=not train)(nn.relu(x))
    return nn.Dense(10)(x)


@pytest.mark.slow  # Two trainings of a user's module, in-process.
def test_own_module_is_recorded_and_rebuilt(teacher, tiny_mnist_dir, tmp_path):
  student = kd_jax.distill(_config("quick_distill", tiny_mnist_dir), tmp_path / "own",
                           teacher=teacher, model=TinyNet(width=12))
  saved = json.loads((tmp_path / "own" / "config.json").read_text())
  assert saved["model"]["name"] == f"{TinyNet.__module__}:TinyNet"
  assert saved["model"]["fields"] == {"width": 12}
  assert set(student.variables) == {"params", "batch_stats"}
  loaded = kd_jax.load(tmp_path / "own")  # Rebuilt from the record alone.
  assert loaded.model == TinyNet(width=12)
  images = data.load_idx_folder(tiny_mnist_dir, check_counts=False)["test_images"]
  np.testing.assert_array_equal(loaded.predict(images), student.predict(images))
  # A module defined in a notebook (__main__) cannot be imported: the error says to pass it.
  notebook_net = type("NotebookNet", (TinyNet,), {"__module__": "__main__"})
  kd_jax.train(_config("quick_teacher", tiny_mnist_dir), tmp_path / "nb",
               model=notebook_net(width=4))
  with pytest.raises(kd_jax.ConfigError, match="pass it again as model="):
    kd_jax.load(tmp_path / "nb")
  assert kd_jax.load(tmp_path / "nb", model=notebook_net(width=4)).step == 30


def test_cnn_with_batchnorm_trains_checkpoints_and_evaluates_on_running_statistics(
    cnn_teacher, tiny_mnist_dir):
  stats = cnn_teacher.variables["batch_stats"]["norm_0"]
  assert stats["mean"].shape == (1, 4)
  assert float(jnp.abs(stats["mean"]).max()) > 0  # Updated by training, from zeros.
  assert not np.allclose(stats["var"], 1.0)
  manager = checkpointing.open_manager(cnn_teacher.workdir, read_only=True)
  meta = checkpointing.restore(manager, cnn_teacher.step, {"meta": None}, None,
                               cnn_teacher.workdir)["meta"]
  manager.close()
  assert "batch_stats/norm_0/mean" in meta["digests"]["model_state"]  # Checksummed.
  # Eval mode uses the running statistics: a batch of one is scored as in a full batch.
  images = data.load_idx_folder(tiny_mnist_dir, check_counts=False)["test_images"]
  np.testing.assert_allclose(cnn_teacher.predict(images[:1]), cnn_teacher.predict(images)[:1],
                             atol=1e-6)
  report = cnn_teacher.evaluate()
  assert report["model"].startswith("CNN 28x28 conv 4 (BatchNorm)")


@pytest.mark.slow  # Two CNN distillations, in-process.
def test_cnn_teacher_into_mlp_and_mlp_teacher_into_cnn(cnn_teacher, teacher, tiny_mnist_dir,
                                                      tmp_path):
  mlp = kd_jax.distill(_config("quick_distill", tiny_mnist_dir, data__jitter=1),
                       tmp_path / "mlp_from_cnn", teacher=cnn_teacher)  # Teacher in the step.
  cnn = kd_jax.distill(_config("quick_distill", tiny_mnist_dir, **CNN), tmp_path / "cnn_from_mlp",
                       teacher=teacher)
  for run in (mlp, cnn):  # Each learnt its teacher: agreement far above chance (10%).
    assert run.evaluate()["transfer_fit"]["test_agreement"][0] > 0.3


@pytest.mark.slow  # A CNN population trained and exported, in-process.
def test_cnn_population_and_export(tiny_mnist_dir, tmp_path):
  population = kd_jax.train(_config("quick_teacher", tiny_mnist_dir, members=2, **CNN),
                            tmp_path / "population")
  stats = population.variables["batch_stats"]["norm_0"]["mean"]
  assert stats.shape == (2, 4) and not np.allclose(stats[0], stats[1])  # Per member.
  export.export_run(population.workdir, tmp_path / "exported", platforms=("cpu",))
  images = data.load_idx_folder(tiny_mnist_dir, check_counts=False)["test_images"]
  np.testing.assert_allclose(export.load(tmp_path / "exported")(images),
                             population.predict(images), atol=1e-5)


EVALUATE_ON_TWO_DEVICES = """
import json, sys, jax, kd_jax
assert jax.device_count() == 2
report = kd_jax.load(sys.argv[1]).evaluate()
print(json.dumps({k: report[k] for k in ("test_errors", "test_loss", "num_devices")}))
"""


@pytest.mark.slow
def test_cnn_evaluates_the_same_on_one_and_two_devices(cnn_teacher, tiny_mnist_dir):
  one = cnn_teacher.evaluate()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu", KD_JAX_MNIST_DIR=str(tiny_mnist_dir))
  result = subprocess.run([sys.executable, "-c", EVALUATE_ON_TWO_DEVICES,
                           str(cnn_teacher.workdir)], cwd=REPO_ROOT, env=env, check=True,
                          capture_output=True, text=True, timeout=300)
  two = json.loads(result.stdout.strip().splitlines()[-1])
  assert two["num_devices"] == 2 and one["num_devices"] == 1
  assert two["test_errors"] == one["test_errors"]
  np.testing.assert_allclose(two["test_loss"], one["test_loss"], rtol=1e-5)


def test_train_stays_the_api_function_after_every_module_is_imported():
  import kd_jax.api, kd_jax.evaluation, kd_jax.export, kd_jax.trainer  # pylint: disable=g-import-not-at-top,unused-import,multiple-imports
  assert callable(kd_jax.train) and kd_jax.train is kd_jax.api.train
  assert kd_jax.distill is kd_jax.api.distill


def test_models_registry_rebuilds_each_model_from_its_config():
  config = kd_jax.configs.get("student", model__name="cnn", model__conv_features=(3, 5))
  model = models.model_from_config(config.model)
  assert isinstance(model, models.CNN) and tuple(model.conv_features) == (3, 5)
  config.model.name = "no_module_here:Net"
  with pytest.raises(kd_jax.ConfigError, match="cannot be imported"):
    models.model_from_config(config.model)


ALIASES = ("reproduce", "fidelity", "frontier", "specialists")  # `python -m kd_jax.<name>`.
COMMANDS = ("train", "distill", "pipeline")  # Define their flags when imported.
IMPORT_EVERY_LIBRARY_MODULE = """
import importlib, pkgutil, sys, kd_jax
for module in pkgutil.iter_modules(kd_jax.__path__):
  if not module.ispkg and module.name not in sys.argv[1:]:
    importlib.import_module(f"kd_jax.{module.name}")
print(sorted(m for m in sys.modules if m.startswith("kd_jax.paper")))
"""


@pytest.mark.slow
def test_importing_the_library_loads_no_paper_module():
  """Importing every library module loads none of kd_jax.paper (the command aliases only run
  it, by name); tests/test_layers.py checks the imports statically."""
  result = subprocess.run([sys.executable, "-c", IMPORT_EVERY_LIBRARY_MODULE, *ALIASES,
                           *COMMANDS],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          check=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.stdout.strip().splitlines()[-1] == "[]"
