"""Shared fixtures: a tiny learnable MNIST-shaped IDX folder and helpers to run the commands."""

from __future__ import annotations

import inspect
import os
import pathlib
import subprocess
import sys
import tempfile

import jax
import numpy as np
import pytest

from kd_jax import config_lib, configs, data

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# One persistent compilation cache for the session, fresh each time, shared by the in-process
# runs and every command the tests start: most tests compile the same tiny programs, and XLA's
# compile time, not training, dominates them. The compiled code is the same, cached or not.
COMPILATION_CACHE = {"JAX_COMPILATION_CACHE_DIR": tempfile.mkdtemp(prefix="kd_jax_xla_cache_"),
                     "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                     "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
os.environ.update(COMPILATION_CACHE)
jax.config.update("jax_compilation_cache_dir", COMPILATION_CACHE["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
TINY_OVERRIDES = ["--config.data.check_counts=False", "--config.batch_size=32",
                  "--config.eval_batch_size=40", "--config.num_epochs=2"]


def make_tiny_mnist(num_train: int = 480, num_test: int = 200, seed: int = 0) -> dict:
  """Ten fixed blocky 'digit' prototypes plus noise: learnable in a few steps, like MNIST in form.

  Prototypes are random 7x7 on/off grids blown up to 4x4-pixel cells, so a 2-pixel jitter keeps
  them recognisable, as it does real digits.
  """
  rng = np.random.default_rng(seed)
  prototypes = np.kron(rng.integers(0, 2, size=(10, 7, 7)) * 255, np.ones((4, 4)))
  arrays = {}
  for split, n in (("train", num_train), ("test", num_test)):
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    noise = rng.normal(0, 60, size=(n, 28, 28))
    arrays[f"{split}_images"] = np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8)
    arrays[f"{split}_labels"] = labels.astype(np.uint8)
  return arrays


@pytest.fixture(scope="session")
def tiny_mnist_dir(tmp_path_factory) -> pathlib.Path:
  folder = tmp_path_factory.mktemp("tiny_mnist")
  data.write_idx_folder(folder, make_tiny_mnist())
  return folder


def tiny_config(mnist_dir, teacher=None, **overrides):
  """A validated config for the tiny IDX folder, distilling from `teacher` when given; overrides
  name nested fields with '__' (model__hidden_sizes=(32,))."""
  config = config_lib.base_config()
  if teacher is not None:
    config = config_lib.add_distillation(config, temperature=4.0, alpha=0.7)
    config.teacher_workdir = str(teacher)
  config.batch_size = 32
  config.eval_batch_size = 40
  config.data.mnist_dir = str(mnist_dir)
  config.data.check_counts = False
  configs.override(config, **overrides)
  config_lib.validate(config)
  return config


def snapshot(folder: pathlib.Path) -> dict:
  """(mtime, size) of every run file below `folder`: equal snapshots mean nothing was rewritten."""
  return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")
          if p.is_file() and p.name != ".lock"}  # The lock file names its latest holder.


def run_command(module: str, *args: str, mnist_dir: pathlib.Path | str | None = None,
                devices: int = 1, timeout: float = 300, check: bool = True,
                extra_env: dict | None = None) -> subprocess.CompletedProcess:
  """Runs `python -m kd_jax.<module> args` as a user would, on `devices` host CPU devices."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  if mnist_dir is not None:
    env[data.MNIST_DIR_ENV] = str(mnist_dir)
  env.update(extra_env or {})
  result = subprocess.run([sys.executable, "-m", f"kd_jax.{module}", *args], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)
  if check and result.returncode != 0:
    raise AssertionError(f"kd_jax.{module} exited {result.returncode}\nstdout:\n"
                         f"{result.stdout[-3000:]}\nstderr:\n{result.stderr[-5000:]}")
  return result


def signal_after_epoch(command: list[str], env: dict, epoch: int,
                       signum: int) -> tuple[int, str, str]:
  """Starts `command`, sends `signum` once it has logged `epoch`, and returns (code, out, err)."""
  process = subprocess.Popen(command, cwd=REPO_ROOT, env=dict(env, PYTHONUNBUFFERED="1"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    for line in process.stdout:
      if line.startswith(f"epoch {epoch:3d}"):
        process.send_signal(signum)
        break
    stdout, stderr = process.communicate(timeout=120)
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()
  return process.returncode, stdout, stderr


@pytest.fixture(scope="session")
def tiny_reproduction(tiny_mnist_dir, tmp_path_factory) -> tuple[pathlib.Path, str]:
  """`kd_jax.reproduce` run to the end with the tiny profile: (root, its stdout). Shared by the
  reproduce, bias-correction, export and frontier tests, which read its runs."""
  root = tmp_path_factory.mktemp("reproduce") / "root"
  result = run_command("reproduce", "--config=configs/reproduce.py:tiny", f"--workdir={root}",
                       mnist_dir=tiny_mnist_dir, timeout=600)
  return root, result.stdout


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  import shutil  # pylint: disable=import-outside-toplevel
  shutil.rmtree(COMPILATION_CACHE["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


SHARED_WORKER = {"test_export": "reproduction", "test_reproduce": "reproduction"}


# Whole files of end-to-end work (the fast tier, -m "not slow", leaves them to the full suite).
SLOW_MODULES = {"test_benchmark", "test_cluster_scripts", "test_commands", "test_e2e_mnist",
                "test_examples", "test_export", "test_install", "test_multiprocess",
                "test_parallel", "test_resume"}
SLOW_CALLS = ("run_command(", "subprocess.", "signal_after_epoch(")


def _is_slow(item) -> bool:
  """A test that starts processes (commands, kills, other device counts), or reads the tiny
  reproduction, belongs to the full suite only."""
  if item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES:
    return True
  if "tiny_reproduction" in getattr(item, "fixturenames", ()):
    return True
  try:
    source = inspect.getsource(item.function)
  except (OSError, TypeError):
    return False
  return any(call in source for call in SLOW_CALLS)


@pytest.hookimpl(tryfirst=True)  # Before xdist reads the groups from the markers.
def pytest_collection_modifyitems(config, items):
  """With pytest-xdist's loadgroup, a group runs on one worker: one group per test file, the
  files that read the tiny reproduction in one group (see pyproject's addopts). Tests that start
  processes are marked slow (the fast tier is -m "not slow")."""
  del config
  for item in items:
    module = item.module.__name__.rsplit(".", 1)[-1]
    item.add_marker(pytest.mark.xdist_group(SHARED_WORKER.get(module, module)))
    if _is_slow(item):
      item.add_marker(pytest.mark.slow)
