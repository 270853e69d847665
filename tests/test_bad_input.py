"""Bad configs, data, checkpoints and workdirs end in a short message, not a traceback.

Each case runs the real command and checks: non-zero exit, a one- or two-line message naming the
field or file, no traceback, and no file of an existing run modified.
"""

import gzip
import json
import shutil
import sys

import pytest

import kd_jax

from kd_jax import config_lib
from kd_jax.errors import ConfigError
from conftest import TINY_OVERRIDES, run_command, snapshot

STUDENT = ["--config=configs/student.py", *TINY_OVERRIDES, "--config.model.hidden_sizes=(16,)"]


@pytest.fixture(scope="module")
def finished_run(tiny_mnist_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("runs") / "teacher"
  run_command("train", f"--workdir={workdir}", *STUDENT, mnist_dir=tiny_mnist_dir)
  return workdir


def expect_failure(module, *args, match, code=None, untouched=None, **kwargs):
  before = snapshot(untouched) if untouched else None
  result = run_command(module, *args, check=False, **kwargs)
  message = result.stderr.strip().splitlines()
  assert result.returncode != 0, result.stdout[-2000:]
  if code is not None:
    assert result.returncode == code, result.stderr[-2000:]
  assert "Traceback" not in result.stderr, result.stderr[-4000:]
  assert message and message[-1].startswith("kd_jax: error:"), result.stderr[-2000:]
  assert match in message[-1], message[-1]
  if untouched:
    assert snapshot(untouched) == before
  return message[-1]


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize("field, value, distill", [
    ("temperature", 0.0, True), ("temperature", -2.0, True), ("alpha", 1.5, True),
    ("alpha", -0.1, True), ("soft_loss", "kl_divergence", True), ("teacher_workdir", "", True),
    ("model.input_dropout", 1.0, False), ("model.hidden_dropout", -0.1, False),
    ("model.hidden_sizes", (0, 10), False), ("model.hidden_sizes", (), False),
    ("num_epochs", 0, False), ("batch_size", -8, False), ("learning_rate", 0.0, False),
    ("lr_schedule", "step", False), ("model.max_norm", -1.0, False), ("data.jitter", -1, False),
    ("checkpoint.every_epochs", 0, False),
    # Non-finite numbers are refused by name, not left to end as a diverged run (exit 5).
    ("temperature", float("inf"), True), ("temperature", float("nan"), True),
    ("learning_rate", float("inf"), False), ("alpha", float("nan"), True),
    ("model.max_norm", float("inf"), False),
])
def test_out_of_range_values_name_the_field(field, value, distill):
  config = config_lib.add_distillation(config_lib.base_config())
  config.teacher_workdir = "runs/teacher"
  *parents, name = field.split(".")
  holder = config
  for parent in parents:
    holder = holder[parent]
  holder[name] = value
  with pytest.raises(ConfigError, match=f"config.{field}="):
    config_lib.validate(config, require_teacher=distill)


@pytest.mark.parametrize("name", [n for n in kd_jax.configs.names()
                                  if n not in ("reproduce", "specialists", "fidelity")])
def test_shipped_configs_are_valid(name):  # The experiments' configs: their own test files.
  config = kd_jax.configs.get(name)
  distill = "teacher_workdir" in config
  if distill:
    config.teacher_workdir = "runs/teacher"
  config_lib.validate(config, require_teacher=distill)


@pytest.mark.slow
def test_bad_value_through_the_command(finished_run, tiny_mnist_dir):
  expect_failure("distill", "--config=configs/distill.py", f"--workdir={finished_run}",
                 f"--config.teacher_workdir={finished_run}", "--config.temperature=0",
                 match="config.temperature=0", code=2, untouched=finished_run,
                 mnist_dir=tiny_mnist_dir)


@pytest.mark.parametrize("override, match", [
    ("--config.nonexistent=1", "nonexistent"),
    ("--config.num_epochs=abc", "--config.num_epochs=abc"),
    ("--config=configs/no_such_config.py", "no_such_config.py"),
])
@pytest.mark.slow
def test_unknown_key_wrong_type_and_missing_file(finished_run, tiny_mnist_dir, override, match):
  expect_failure("train", *STUDENT, override, f"--workdir={finished_run}", match=match, code=2,
                 untouched=finished_run, mnist_dir=tiny_mnist_dir)


@pytest.mark.slow
def test_batch_size_must_divide_across_devices(tiny_mnist_dir, tmp_path):
  expect_failure("train", *STUDENT, "--config.batch_size=12", f"--workdir={tmp_path / 'run'}",
                 match="batch_size=12 must be divisible by the number of devices (8)", code=2,
                 mnist_dir=tiny_mnist_dir, devices=8)
  assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- data


@pytest.mark.slow
def test_missing_mnist_folder(finished_run, tmp_path):
  expect_failure("train", *STUDENT, f"--workdir={finished_run}", match="does not exist", code=3,
                 untouched=finished_run, mnist_dir=tmp_path / "nowhere")


@pytest.mark.parametrize("damage, match", [
    ("truncate", "Cannot read MNIST file"),
    ("magic", "magic number 2049, expected 2051"),
    ("count", "holds 480 records, expected 60000"),
    ("delete", "is missing from"),
])
@pytest.mark.slow
def test_broken_mnist_files_are_named(tiny_mnist_dir, tmp_path, damage, match):
  folder = tmp_path / "mnist"
  shutil.copytree(tiny_mnist_dir, folder)
  images = folder / "train-images-idx3-ubyte.gz"
  overrides = STUDENT
  if damage == "truncate":
    images.write_bytes(images.read_bytes()[:5000])
  elif damage == "magic":
    raw = bytearray(gzip.decompress(images.read_bytes()))
    raw[3] = 1
    images.write_bytes(gzip.compress(bytes(raw)))
  elif damage == "count":
    overrides = [o for o in STUDENT if "check_counts" not in o]
  else:
    images.unlink()
  message = expect_failure("train", *overrides, f"--workdir={tmp_path / 'run'}", match=match,
                           code=3, mnist_dir=folder)
  if damage != "count":
    assert "train-images-idx3-ubyte" in message


@pytest.mark.slow
def test_tfds_unavailable_offline(tmp_path):
  """No IDX folder and a TFDS that cannot download: the message says how to get the data."""
  shim = tmp_path / "shim" / "tensorflow_datasets"
  shim.mkdir(parents=True)
  (shim / "__init__.py").write_text(
      "import types\n"
      "download = types.SimpleNamespace(DownloadConfig=dict)\n"
      "def builder(*args, **kwargs):\n"
      "  raise ConnectionError('simulated: cannot reach the download server')\n")
  expect_failure("train", *STUDENT, f"--workdir={tmp_path / 'run'}",
                 match="tensorflow-datasets could not load MNIST (ConnectionError", code=3,
                 extra_env={"PYTHONPATH": str(shim.parent), "KD_JAX_MNIST_DIR": ""})


# ----------------------------------------------------------------------------- checkpoints


def _distill(teacher, tiny_mnist_dir, tmp_path, match):
  return expect_failure("distill", "--config=configs/distill.py", *TINY_OVERRIDES,
                        f"--config.teacher_workdir={teacher}", f"--workdir={tmp_path / 'student'}",
                        match=match, code=4, untouched=teacher, mnist_dir=tiny_mnist_dir)


@pytest.mark.slow
def test_teacher_workdir_missing(tiny_mnist_dir, tmp_path):
  _distill(tmp_path / "no_teacher", tiny_mnist_dir, tmp_path, "is not a kd_jax run directory")


@pytest.mark.slow
def test_teacher_workdir_without_checkpoints(finished_run, tiny_mnist_dir, tmp_path):
  teacher = tmp_path / "teacher"
  shutil.copytree(finished_run, teacher)
  shutil.rmtree(teacher / "checkpoints")
  _distill(teacher, tiny_mnist_dir, tmp_path, "no checkpoint was written")
  (teacher / "checkpoints").mkdir()
  _distill(teacher, tiny_mnist_dir, tmp_path, "No checkpoint found")


@pytest.mark.parametrize("which", ["every file", "array data only"])
@pytest.mark.slow
def test_corrupted_teacher_checkpoint(finished_run, tiny_mnist_dir, tmp_path, which):
  teacher = tmp_path / "teacher"
  shutil.copytree(finished_run, teacher)
  files = [p for p in (teacher / "checkpoints" / "30" / "params").rglob("*") if p.is_file()
           and (which == "every file" or "ocdbt.process_" in str(p))]
  assert files
  for path in files:
    path.write_bytes(b"\x00garbage" * 3)
  _distill(teacher, tiny_mnist_dir, tmp_path, "it is corrupted")


@pytest.mark.slow
def test_teacher_checkpoint_not_matching_its_config(finished_run, tiny_mnist_dir, tmp_path):
  teacher = tmp_path / "teacher"
  shutil.copytree(finished_run, teacher)
  config = json.loads((teacher / "config.json").read_text())
  config["model"]["hidden_sizes"] = [24]
  (teacher / "config.json").write_text(json.dumps(config))
  _distill(teacher, tiny_mnist_dir, tmp_path, "does not match the run's config.json")


@pytest.mark.slow
def test_evaluate_empty_and_wrong_workdirs(tiny_mnist_dir, tmp_path):
  expect_failure("evaluate", f"--workdir={tmp_path}", match="is not a kd_jax run directory",
                 code=4, mnist_dir=tiny_mnist_dir)
  (tmp_path / "config.json").write_text("{not json")
  expect_failure("evaluate", f"--workdir={tmp_path}", match="is not valid JSON", code=4,
                 mnist_dir=tiny_mnist_dir)


@pytest.mark.slow
def test_workdir_with_another_config_is_refused_unless_overwrite(finished_run, tiny_mnist_dir,
                                                                 tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(finished_run, workdir)
  expect_failure("train", *STUDENT, "--config.learning_rate=0.01", f"--workdir={workdir}",
                 match="already holds a run with a different config (learning_rate)", code=4,
                 untouched=workdir, mnist_dir=tiny_mnist_dir)
  result = run_command("train", *STUDENT, "--config.learning_rate=0.01", "--overwrite",
                       f"--workdir={workdir}", mnist_dir=tiny_mnist_dir)
  assert "Resuming" not in result.stdout
  assert json.loads((workdir / "config.json").read_text())["learning_rate"] == 0.01
  assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 2


def test_late_tensorstore_callbacks_after_a_failed_restore_are_dropped(capsys, monkeypatch):
  """The commands' unraisablehook drops only the "Event loop is closed" of tensorstore's reads
  finishing after orbax gave up (it raced the one-line message in CI); the rest still print."""
  from kd_jax import cli  # pylint: disable=import-outside-toplevel

  class RaisesWhenCollected:
    def __init__(self, message):
      self.message = message

    def __del__(self):
      raise RuntimeError(self.message)

  monkeypatch.setattr(sys, "unraisablehook", cli._drop_closed_loop_callbacks)
  RaisesWhenCollected("Event loop is closed")
  assert capsys.readouterr().err == ""
  RaisesWhenCollected("something else")
  assert "RuntimeError: something else" in capsys.readouterr().err
