"""Runs survive SIGKILL, SIGTERM and half-written checkpoints, and resume to the same parameters."""

import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from kd_jax import checkpointing, parallelism, preemption
from conftest import REPO_ROOT, TINY_OVERRIDES, run_command, signal_after_epoch, snapshot

pytestmark = pytest.mark.slow  # Every test here starts processes (see conftest.py).

NUM_EPOCHS = 8
RUN_ARGS = ["--config=configs/teacher.py", *TINY_OVERRIDES, f"--config.num_epochs={NUM_EPOCHS}",
            "--config.model.hidden_sizes=(64,64)", "--config.checkpoint.max_to_keep=20"]


def _final_params(workdir):
  params, _, step = checkpointing.restore_variables(workdir,
                                                 parallelism.make_mesh(jax.devices()[:1]))
  return jax.device_get(params), step


def _assert_same_run(workdir, reference):
  params, step = _final_params(workdir)
  ref_params, ref_step = _final_params(reference)
  assert step == ref_step == NUM_EPOCHS * 15
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
    np.testing.assert_array_equal(a, b)  # Bitwise: the resumed run is the same run.
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  ref_records = [json.loads(line)
                 for line in (reference / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in records] == list(range(1, NUM_EPOCHS + 1))
  assert [r["test_errors"] for r in records] == [r["test_errors"] for r in ref_records]
  assert [r["train_loss"] for r in records] == [r["train_loss"] for r in ref_records]


@pytest.fixture(scope="module")
def uninterrupted(tiny_mnist_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("reference") / "run"
  run_command("train", f"--workdir={workdir}", *RUN_ARGS, mnist_dir=tiny_mnist_dir)
  return workdir


def _start_and_signal_after_epoch(workdir, mnist_dir, signum, after_epoch=3):
  """Starts training, and sends `signum` as soon as it has logged epoch `after_epoch`."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_PLATFORMS="cpu", KD_JAX_MNIST_DIR=str(mnist_dir))
  return signal_after_epoch([sys.executable, "-m", "kd_jax.train", f"--workdir={workdir}",
                             *RUN_ARGS], env, after_epoch, signum)


def test_sigkill_mid_run_then_resume_gives_the_same_parameters(uninterrupted, tiny_mnist_dir,
                                                               tmp_path):
  workdir = tmp_path / "run"
  returncode, _, _ = _start_and_signal_after_epoch(workdir, tiny_mnist_dir, signal.SIGKILL)
  assert returncode == -signal.SIGKILL
  records = (workdir / "metrics.jsonl").read_text().splitlines()
  assert 3 <= len(records) < NUM_EPOCHS  # Killed part-way.
  result = run_command("train", f"--workdir={workdir}", *RUN_ARGS, mnist_dir=tiny_mnist_dir)
  assert "Resuming" in result.stdout
  _assert_same_run(workdir, uninterrupted)


def test_sigterm_saves_exits_75_and_resumes(uninterrupted, tiny_mnist_dir, tmp_path):
  workdir = tmp_path / "run"
  returncode, _, stderr = _start_and_signal_after_epoch(workdir, tiny_mnist_dir, signal.SIGTERM)
  assert returncode == preemption.EXIT_PREEMPTED == 75
  assert "kd_jax: stopped: SIGTERM: saved checkpoint step" in stderr
  assert "Traceback" not in stderr
  epochs_done = len((workdir / "metrics.jsonl").read_text().splitlines())
  manager = checkpointing.open_manager(workdir, read_only=True)
  assert manager.latest_step() == 15 * epochs_done  # The epoch in flight was checkpointed.
  manager.close()
  result = run_command("train", f"--workdir={workdir}", *RUN_ARGS, mnist_dir=tiny_mnist_dir)
  assert f"from checkpoint step {15 * epochs_done}" in result.stdout
  _assert_same_run(workdir, uninterrupted)


def test_sigint_is_handled_like_sigterm(tiny_mnist_dir, tmp_path):
  returncode, _, stderr = _start_and_signal_after_epoch(tmp_path / "run", tiny_mnist_dir,
                                                        signal.SIGINT, after_epoch=1)
  assert returncode == 75 and "SIGINT: saved checkpoint" in stderr


def test_half_written_checkpoint_is_ignored_with_a_warning(uninterrupted, tiny_mnist_dir,
                                                           tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(uninterrupted, workdir)
  final = workdir / "checkpoints" / str(NUM_EPOCHS * 15)
  partial = final.with_name(final.name + ".orbax-checkpoint-tmp-1764000000")
  final.rename(partial)  # As if the kill came during the final save.
  for path in partial.rglob("*"):
    if path.is_file():
      path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
  result = run_command("train", f"--workdir={workdir}", *RUN_ARGS, mnist_dir=tiny_mnist_dir)
  assert "ignoring the half-written checkpoint" in result.stdout
  assert f"from checkpoint step {(NUM_EPOCHS - 1) * 15}" in result.stdout
  assert not partial.exists()
  _assert_same_run(workdir, uninterrupted)


def test_finished_run_is_not_retrained(uninterrupted, tiny_mnist_dir, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(uninterrupted, workdir)
  before = snapshot(workdir)
  result = run_command("train", f"--workdir={workdir}", *RUN_ARGS, mnist_dir=tiny_mnist_dir)
  assert "already finished" in result.stdout and "Compiled" not in result.stdout
  assert snapshot(workdir) == before


def test_checkpoint_cadence_and_max_to_keep(tiny_mnist_dir, tmp_path):
  run_command("train", f"--workdir={tmp_path}", "--config=configs/student.py", *TINY_OVERRIDES,
              "--config.num_epochs=5", "--config.checkpoint.every_epochs=2",
              "--config.checkpoint.max_to_keep=2", "--config.model.hidden_sizes=(16,)",
              mnist_dir=tiny_mnist_dir)
  steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [60, 75]  # Epochs 2 and 4 were saved, 2 rotated out; the final one is kept.


INJECT_NAN_AFTER_EPOCH_2 = """
import runpy, sys
import jax.numpy as jnp
from kd_jax import steps
real_epoch = steps.train_epoch
def epoch_that_diverges(state, train_data, hparams, teacher_params, epoch, **kwargs):
  state, metrics = real_epoch(state, train_data, hparams, teacher_params, epoch, **kwargs)
  metrics["loss"] = jnp.where(epoch >= 2, jnp.nan, metrics["loss"])
  metrics["first_nonfinite_step"] = jnp.where(epoch >= 2, 4, metrics["first_nonfinite_step"])
  return state, metrics
steps.train_epoch = epoch_that_diverges
sys.argv = ["kd_jax.train"] + sys.argv[1:]
runpy.run_module("kd_jax.train", run_name="__main__")
"""


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_mnist_dir, tmp_path):
  env = dict(os.environ, KD_JAX_MNIST_DIR=str(tiny_mnist_dir), JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, "-c", INJECT_NAN_AFTER_EPOCH_2, f"--workdir={tmp_path}",
       "--config=configs/student.py", *TINY_OVERRIDES, "--config.num_epochs=4",
       "--config.model.hidden_sizes=(16,)"],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 5, result.stderr[-3000:]
  assert "non-finite at step 35 (epoch 3)" in result.stderr  # 2 epochs x 15 steps + 4 + 1.
  assert "last good checkpoint is step 30" in result.stderr and "Traceback" not in result.stderr
  steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [15, 30]
  assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
