"""End to end on the real MNIST through the real commands (CI points KD_JAX_MNIST_DIR at it).

Teacher -> orbax checkpoint -> distilled student -> evaluation, against the same student trained
alone for the same budget. Also TFDS preparing MNIST offline from the same files.
"""

import json
import os
import pathlib

import numpy as np
import pytest

from kd_jax import data
from conftest import run_command

MNIST_DIR = os.environ.get(data.MNIST_DIR_ENV)
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not MNIST_DIR, reason=f"{data.MNIST_DIR_ENV} is not set"),
]
EPOCHS = "--config.num_epochs=3"  # Enough for the ordering; the suite stays short.


def test_teacher_checkpoint_distill_evaluate_beats_student_alone(tmp_path):
  teacher, distilled, baseline = tmp_path / "teacher", tmp_path / "distilled", tmp_path / "alone"
  run_command("train", "--config=configs/quick_teacher.py", f"--workdir={teacher}", EPOCHS,
              mnist_dir=MNIST_DIR, timeout=600)
  run_command("distill", "--config=configs/quick_distill.py", f"--workdir={distilled}",
              f"--config.teacher_workdir={teacher}", EPOCHS, mnist_dir=MNIST_DIR, timeout=600)
  run_command("train", "--config=configs/student.py", f"--workdir={baseline}", EPOCHS,
              mnist_dir=MNIST_DIR, timeout=600)
  reports = {}
  for run in (teacher, distilled, baseline):
    run_command("evaluate", f"--workdir={run}", mnist_dir=MNIST_DIR)
    reports[run.name] = json.loads((run / "eval.json").read_text())
    assert reports[run.name]["num_test_examples"] == 10_000
  print({name: r["test_errors"] for name, r in reports.items()})
  assert reports["teacher"]["test_errors"] < 200
  assert reports["distilled"]["test_errors"] < 200  # A clear floor: under 2% test error.
  assert reports["distilled"]["test_errors"] < reports["alone"]["test_errors"]


def test_tfds_prepares_mnist_offline_from_the_idx_files(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  from_tfds = data.load_tfds(str(tmp_path / "tfds"), manual_dir=MNIST_DIR)
  from_idx = data.load_idx_folder(MNIST_DIR)
  for name in ("train", "test"):
    # TFDS stores the train split in another order: compare contents, not positions.
    np.testing.assert_array_equal(np.bincount(from_tfds[f"{name}_labels"], minlength=10),
                                  np.bincount(from_idx[f"{name}_labels"], minlength=10))
    assert from_tfds[f"{name}_images"].shape == from_idx[f"{name}_images"].shape
    assert from_tfds[f"{name}_images"].sum() == from_idx[f"{name}_images"].sum()
  assert not any(pathlib.Path(MNIST_DIR).glob("*.tmp*"))  # Nothing written into the data folder.
