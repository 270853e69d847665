"""The examples run top to bottom: the quickstart notebook (executed with nbclient, as a user's
Jupyter would) and the own-model script, at tiny settings on the real MNIST."""

import os
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from kd_jax import data
from conftest import REPO_ROOT

pytestmark = [pytest.mark.slow,  # Every test here starts processes (see conftest.py).
              pytest.mark.skipif(not os.environ.get(data.MNIST_DIR_ENV),
                                 reason=f"needs ${data.MNIST_DIR_ENV} (the real MNIST)")]


@pytest.mark.e2e
def test_quickstart_notebook_runs_and_its_last_cell_checks_what_it_shows(tmp_path, monkeypatch):
  monkeypatch.setenv("KD_JAX_QUICKSTART_TINY", "1")
  monkeypatch.setenv("KD_JAX_QUICKSTART_WORKDIR", str(tmp_path / "runs"))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  notebook = nbformat.read(REPO_ROOT / "examples" / "quickstart.ipynb", as_version=4)
  NotebookClient(notebook, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  outputs = [o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
             for o in cell.get("outputs", [])]
  assert outputs[-1].strip() == "ok"  # The asserting last cell ran.
  assert any("distilled student" in text for text in outputs)  # The comparison table.
  assert (tmp_path / "runs" / "distilled" / "eval.json").exists()


def _run_example(name: str, workdir) -> str:
  """examples/NAME.py at tiny settings into `workdir`; its stdout (a failure shows its stderr)."""
  env = dict(os.environ, KD_JAX_EXAMPLE_TINY="1", JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, str(REPO_ROOT / "examples" / f"{name}.py"),
                           str(workdir)], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


@pytest.mark.e2e
def test_own_model_example_distils_a_batchnorm_module(tmp_path):
  assert "variables: ['batch_stats', 'params']" in _run_example("own_model", tmp_path)
  assert "__main__:ConvStudent" in (tmp_path / "conv_student" / "config.json").read_text()


@pytest.mark.e2e
def test_feature_distillation_example_hints_a_users_batchnorm_convnet(tmp_path):
  stdout = _run_example("feature_distillation", tmp_path)
  assert "hint loss" in stdout
  assert "variables: ['batch_stats', 'params']" in stdout  # No adapter in the student.
  assert "__main__:ConvStudent" in (tmp_path / "student" / "config.json").read_text()
