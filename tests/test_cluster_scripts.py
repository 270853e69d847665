"""The SLURM batch script forwards preemption to training and requeues on exit code 75.

srun and scontrol are stand-ins here (srun runs the task locally, scontrol records its call); the
training process is real.
"""

import os
import signal
import subprocess
import sys

from conftest import REPO_ROOT, TINY_OVERRIDES

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
             CONFIG="configs/student.py", WORKDIR=str(tmp_path / "run"), PYTHONUNBUFFERED="1",
             XLA_FLAGS="--xla_force_host_platform_device_count=1", PYTHON=sys.executable)
  job = subprocess.Popen(["bash", "scripts/slurm_train.sbatch", *TINY_OVERRIDES,
                          "--config.num_epochs=50", "--config.model.hidden_sizes=(16,)"],
                         cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
  try:
    for line in job.stdout:
      if line.startswith("epoch   2"):
        job.send_signal(signal.SIGTERM)  # What SLURM's --signal=B:TERM does before the limit.
        break
    _, stderr = job.communicate(timeout=120)
  finally:
    if job.poll() is None:
      job.kill()
      job.wait()
  assert job.returncode == 75, stderr[-3000:]
  assert log.read_text().split() == ["requeue", "4242"]
  assert "kd_jax: stopped: SIGTERM: saved checkpoint" in stderr
  assert any(p.name.isdigit() for p in (tmp_path / "run" / "checkpoints").iterdir())
