"""The SLURM batch script forwards preemption to training and requeues on exit code 75.

srun and scontrol are stand-ins here (srun runs the task locally, scontrol records its call); the
training process is real.
"""

import os
import signal
import sys

import pytest

from conftest import TINY_OVERRIDES, signal_after_epoch

pytestmark = pytest.mark.slow  # Every test here starts processes (see conftest.py).

FAKE_SRUN = """#!/bin/bash
# Drop srun's own options, run the task here as a single, non-distributed process.
while [[ "$1" == --* ]]; do shift; done
exec "$@" --nodistributed
"""
FAKE_SCONTROL = """#!/bin/bash
echo "$@" >> "$SCONTROL_LOG"
"""


def test_slurm_script_requeues_a_preempted_run(tiny_mnist_dir, tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(0o755)
  log = tmp_path / "scontrol.log"
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="4242",
             SCONTROL_LOG=str(log), KD_JAX_MNIST_DIR=str(tiny_mnist_dir), JAX_PLATFORMS="cpu",
             CONFIG="configs/student.py", WORKDIR=str(tmp_path / "run"), PYTHON=sys.executable,
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  # SIGTERM is what SLURM's --signal=B:TERM sends the batch script before the time limit.
  returncode, _, stderr = signal_after_epoch(
      ["bash", "scripts/slurm_train.sbatch", *TINY_OVERRIDES, "--config.num_epochs=50",
       "--config.model.hidden_sizes=(16,)"], env, 2, signal.SIGTERM)
  assert returncode == 75, stderr[-3000:]
  assert log.read_text().split() == ["requeue", "4242"]
  assert "kd_jax: stopped: SIGTERM: saved checkpoint" in stderr
  assert any(p.name.isdigit() for p in (tmp_path / "run" / "checkpoints").iterdir())
