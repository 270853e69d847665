"""End to end on the real MNIST through the real commands (CI points KD_JAX_MNIST_DIR at it).

The main job (teacher -> orbax checkpoint -> distilled student -> evaluation, against the same
student trained alone for the same budget) in one process. Also TFDS preparing MNIST offline from the same files.
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
    pytest.mark.slow,  # Every test here starts processes or reads all of MNIST (see conftest.py).
    pytest.mark.e2e,
    pytest.mark.skipif(not MNIST_DIR, reason=f"{data.MNIST_DIR_ENV} is not set"),
]


@pytest.mark.optimized  # 60,000 images: training dominates.
def test_pipeline_teacher_distilled_beats_student_alone(tmp_path):
  """The main job on real MNIST: a teacher of 2 epochs on all 60,000 images, then the 2x800
  distilled from it and the 2x800 alone, 5 epochs each on a class-balanced 10% of the training
  set. Soft targets matter most where data are scarce (the paper's 3% experiment), so the
  distilled student's lead is large (132 errors with a 4-epoch teacher on the 2-core EPYC) at a
  fraction of a full-data run's cost."""
  run_command("pipeline", f"--workdir={tmp_path}", "--teacher_config.num_epochs=2",
              "--student_config.num_epochs=5", "--student_config.data.train_subset=6000",
              mnist_dir=MNIST_DIR, timeout=900)
  summary = json.loads((tmp_path / "summary.json").read_text())
  print({name: r["test_errors"] for name, r in summary.items()})
  assert all(r["num_test_examples"] == 10_000 for r in summary.values())
  assert summary["teacher"]["test_errors"] < 250  # Under 2.5% test error after 2 epochs.
  assert summary["distilled"]["test_errors"] < 450
  assert summary["distilled"]["test_errors"] < summary["baseline"]["test_errors"] - 50
  assert (tmp_path / "test_errors.png").stat().st_size > 0


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
