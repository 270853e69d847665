"""Shared fixtures: a tiny learnable MNIST-shaped IDX folder and helpers to run the commands."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from kd_jax import data

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
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
