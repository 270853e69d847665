"""TensorFlow is an extra, not a dependency: without kd_jax[tfds] the TFDS path, and without
kd_jax[tf] the SavedModel export, end in one line that names the extra (here with the modules
hidden from the import system; tests/test_install.py runs a command on an install without them)."""

import sys
import types

import pytest

from kd_jax import data, export
from kd_jax.errors import ConfigError, DataError


def _hide(monkeypatch, *modules):
  """`import module` fails as it does when the module is not installed."""
  for module in modules:
    for name in [m for m in sys.modules if m.startswith(module + ".")]:
      monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)


def _assert_one_line(error, *needed):
  message = str(error.value)
  assert "\n" not in message and len(message) < 300, message
  for text in needed:
    assert text in message, message


@pytest.mark.parametrize("missing", ["tensorflow_datasets", "tensorflow"])
def test_tfds_path_without_the_extra_names_it(monkeypatch, missing):
  if missing == "tensorflow":  # tensorflow-datasets there (a stand-in), tensorflow not.
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", types.ModuleType("tensorflow_datasets"))
  _hide(monkeypatch, missing)
  package = {"tensorflow_datasets": "tensorflow-datasets", "tensorflow": "tensorflow"}[missing]
  with pytest.raises(DataError) as error:
    data.load_mnist(None)
  _assert_one_line(error, f"{package} is not installed: pip install 'kd_jax[tfds]'",
                   data.MNIST_DIR_ENV, "IDX")
  with pytest.raises(DataError) as error:
    data.load_tfds(name="cifar100")
  _assert_one_line(error, "pip install 'kd_jax[tfds]' to load tfds:cifar100")


def test_saved_model_without_the_extra_names_it(monkeypatch, tmp_path):
  _hide(monkeypatch, "tensorflow", "jax.experimental.jax2tf")
  with pytest.raises(ConfigError) as error:
    export._write_saved_model(lambda images: images, (28, 28), tmp_path / "saved_model")  # pylint: disable=protected-access
  _assert_one_line(error, "tensorflow is not installed: pip install 'kd_jax[tf]' for --saved_model")
  assert not (tmp_path / "saved_model").exists()
