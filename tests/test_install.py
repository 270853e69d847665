"""A non-editable install works from outside the repository: the configs install with the package
and every command finds them by name (issue: configs beside the package were not installed). The
base install has no TensorFlow (it is the tfds and tf extras) and the commands run without it."""

import os
import pathlib
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from conftest import REPO_ROOT, TINY_OVERRIDES

pytestmark = pytest.mark.slow  # Every test here starts processes (see conftest.py).


def _run(python, *args, cwd, env):
  result = subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, f"{args}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
  return result.stdout


def test_wheel_installed_elsewhere_runs_the_commands_by_config_name(tiny_mnist_dir, tmp_path):
  wheels = tmp_path / "wheels"
  _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
       "--wheel-dir", str(wheels), str(REPO_ROOT), cwd=tmp_path, env=dict(os.environ))
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
  python = venv / "bin" / "python"
  site = pathlib.Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))",
                           cwd=tmp_path, env={}).strip())
  # The dependencies come from this environment's site-packages (not kd_jax: it is editable
  # here, through a finder that a plain path entry does not load); kd_jax from the wheel.
  (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
  wheel = next(wheels.glob("kd_jax-*.whl"))
  with zipfile.ZipFile(wheel) as archive:
    metadata = archive.read(next(n for n in archive.namelist() if n.endswith("/METADATA")))
  requires = [line for line in metadata.decode().splitlines() if line.startswith("Requires-Dist:")]
  tensorflow = [line for line in requires if "tensorflow" in line]
  assert tensorflow and all("extra ==" in line for line in tensorflow), requires
  # This environment has the test extra, so TensorFlow is there: hidden from the new one, whose
  # commands must not need it.
  (site / "no_tensorflow.pth").write_text(
      "import sys; sys.modules.update(tensorflow=None, tensorflow_datasets=None)\n")
  _run(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
       str(wheel), cwd=tmp_path, env=dict(os.environ))
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  env = {"PATH": os.environ["PATH"], "JAX_PLATFORMS": "cpu", "HOME": str(tmp_path),
         "KD_JAX_MNIST_DIR": str(tiny_mnist_dir),
         **{k: v for k, v in os.environ.items() if k.startswith("JAX_COMPILATION")}}
  where = _run(python, "-c", "import kd_jax; print(kd_jax.__file__); "
               "print(kd_jax.configs.path('teacher'))", cwd=elsewhere, env=env).split()
  assert all(path.startswith(str(site)) for path in where)  # Installed, not the checkout.
  hidden = subprocess.run([str(python), "-c", "import tensorflow"], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=60)
  assert hidden.returncode != 0 and "ModuleNotFoundError" in hidden.stderr
  tiny = [arg.replace("--config.", "--{}_config.") for arg in TINY_OVERRIDES]
  _run(python, "-m", "kd_jax.pipeline", "--workdir=runs/quick",
       *[arg.format(side) for side in ("teacher", "student") for arg in tiny],
       "--teacher_config.model.hidden_sizes=(16,)", "--student_config.model.hidden_sizes=(8,)",
       cwd=elsewhere, env=env)
  assert (elsewhere / "runs" / "quick" / "summary.json").exists()
  # The paper's command finds its config by name and builds every stage's config from it (a bad
  # teacher length is refused at the first stage, before anything is written): the pipeline above
  # already trained from the wheel, and the tiny reproduction trains in test_reproduce.py.
  refused = subprocess.run([str(python), "-m", "kd_jax.reproduce", "--config=reproduce:tiny",
                            "--config.teacher.num_epochs=0", "--workdir=runs/reproduce"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
  assert refused.returncode == 2, refused.stderr[-3000:]
  assert "stage teachers: config.num_epochs=0 is invalid" in refused.stderr
  assert not (elsewhere / "runs" / "reproduce").exists()
