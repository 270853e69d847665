"""Two processes with 2 CPU devices each, under jax.distributed, train like 1 process with 4."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from kd_jax import checkpointing, parallelism
from kd_jax.data import records
from conftest import REPO_ROOT, TINY_OVERRIDES, make_tiny_mnist, run_command

ARGS = ["--config=configs/teacher.py", *TINY_OVERRIDES, "--config.num_epochs=3",
        "--config.model.hidden_sizes=(64,64)"]


pytestmark = pytest.mark.slow  # Every test here starts processes (see conftest.py).

def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _records(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("pipeline", ["memory", "grain"])
def test_two_processes_match_one_process_with_the_same_global_batch(tiny_mnist_dir, tmp_path,
                                                                    pipeline):
  """The memory pipeline (every process holds the data) and the grain pipeline (each process
  streams its half of every global batch, the two processes 4 steps to a call) alike."""
  single, multi = tmp_path / "single", tmp_path / "multi"
  args, multi_args = ARGS, []
  if pipeline == "grain":
    folder = tmp_path / "records"
    arrays = make_tiny_mnist()
    records.write_arrays(folder, "mnist", 10, "tiny", arrays, num_shards=2)
    args = [*ARGS, "--config.data.pipeline=grain", f"--config.data.records_dir={folder}"]
    multi_args = ["--config.data.steps_per_call=4"]
  run_command("train", f"--workdir={single}", *args, mnist_dir=tiny_mnist_dir, devices=4)

  port = _free_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu", KD_JAX_MNIST_DIR=str(tiny_mnist_dir))
  processes = [
      subprocess.Popen([sys.executable, "-m", "kd_jax.train", f"--workdir={multi}", *args,
                        *multi_args, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                        f"--process_id={i}"], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  try:
    outputs = [p.communicate(timeout=240) for p in processes]
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
        p.wait()
  for p, (_, stderr) in zip(processes, outputs):
    assert p.returncode == 0, stderr[-4000:]
  # Process 0 logs; process 1 stays quiet.
  assert "4 device(s)" in outputs[0][0] and "Done:" in outputs[0][0]
  assert "Done:" not in outputs[1][0]

  single_records, multi_records = _records(single), _records(multi)
  assert [r["epoch"] for r in multi_records] == [1, 2, 3]  # One line per epoch, not per process.
  assert [r["test_errors"] for r in multi_records] == [r["test_errors"] for r in single_records]
  np.testing.assert_allclose([r["train_loss"] for r in multi_records],
                             [r["train_loss"] for r in single_records], rtol=1e-5)

  # One copy of each checkpoint on disk, restorable here on one device.
  mesh = parallelism.make_mesh(jax.devices()[:1])
  multi_params, _, step = checkpointing.restore_variables(multi, mesh)
  single_params, _, _ = checkpointing.restore_variables(single, mesh)
  assert step == 45
  pairs = list(zip(jax.tree.leaves(multi_params), jax.tree.leaves(single_params)))
  print(f"{pipeline}: two-process vs one-process: test errors", [r["test_errors"] for r in multi_records],
        "vs", [r["test_errors"] for r in single_records], "; max |param difference|",
        max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in pairs))
  for a, b in pairs:
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
