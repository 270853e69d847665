"""Integrity of everything a run reads, and one line for each failure (issue 34).

Record shards and the teacher-logits cache are checksummed; a teacher of another dataset, a
module with logits of the wrong shape and numbers float32 cannot hold are refused before
training; closing after a first error never replaces it (a real full tmpfs); a group SIGTERM
with grain workers exits 75 within seconds.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import flax.linen as nn
import numpy as np
import pytest

from conftest import REPO_ROOT, make_tiny_mnist, tiny_config
from kd_jax import (checkpointing, config_lib, data, evaluate, export, faults, objective, prepare,
                    reporting, rundir, trainer)
from kd_jax.data import records
from kd_jax.errors import CheckpointError, ConfigError, DataError


def _grain(mnist_dir, folder, teacher=None, **overrides):
  return tiny_config(mnist_dir, teacher, **{
      "num_epochs": 1, "model__hidden_sizes": (16,), "data__pipeline": "grain",
      "data__records_dir": str(folder), **overrides})


@pytest.fixture(scope="module")
def folder(tiny_mnist_dir, tmp_path_factory) -> pathlib.Path:
  out = tmp_path_factory.mktemp("integrity") / "records"
  prepare.prepare("mnist", out, num_shards=2, mnist_dir=str(tiny_mnist_dir), check_counts=False)
  return out


@pytest.fixture(scope="module")
def trained(tiny_mnist_dir, tmp_path_factory) -> pathlib.Path:
  """A tiny finished run (memory pipeline): a teacher, and something to evaluate and export."""
  workdir = tmp_path_factory.mktemp("integrity_run") / "run"
  trainer.train_and_evaluate(tiny_config(tiny_mnist_dir, num_epochs=1,
                                         model__hidden_sizes=(16,)), workdir)
  return workdir


def _copy(folder: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
  copy = tmp_path / "records"
  shutil.copytree(folder, copy)
  return copy


# ----------------------------------------------------------------------------- record shards

def test_prepare_records_each_files_size_and_sha256(folder):
  metadata = json.loads((folder / records.METADATA_FILE).read_text())
  files = metadata["splits"]["train"]["files"]
  assert set(files) == {"train-00000-of-00002.array_record", "train-00001-of-00002.array_record",
                        "train_labels.npy"}
  for name, recorded in files.items():
    assert recorded == records.file_digest(folder / name)


def test_a_shard_of_another_preparation_is_refused_naming_it(folder, tiny_mnist_dir, tmp_path):
  """The probe's swap: a valid shard of MNIST with one pixel changed, same size, over one shard;
  training used it without a word. Now: DataError naming it, before config.json is written."""
  arrays = make_tiny_mnist()
  arrays["train_images"][0, 0, 0] ^= 1
  other_idx = tmp_path / "other_idx"
  data.write_idx_folder(other_idx, arrays)
  other = tmp_path / "other"
  prepare.prepare("mnist", other, num_shards=2, mnist_dir=str(other_idx), check_counts=False)
  mine = _copy(folder, tmp_path)
  shard = "train-00000-of-00002.array_record"
  assert (other / shard).read_bytes() != (mine / shard).read_bytes()
  shutil.copyfile(other / shard, mine / shard)
  workdir = tmp_path / "run"
  with pytest.raises(DataError, match=shard) as raised:
    trainer.train_and_evaluate(_grain(tiny_mnist_dir, mine), workdir)
  assert "\n" not in str(raised.value)
  assert not (workdir / rundir.CONFIG_FILE).exists()  # No orphan config.json.


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_corrupt_shard_is_one_data_error_and_no_orphan_config(folder, tiny_mnist_dir, tmp_path,
                                                                damage):
  mine = _copy(folder, tmp_path)
  shard = mine / "train-00001-of-00002.array_record"
  content = bytearray(shard.read_bytes())
  if damage == "truncate":
    content = content[:len(content) // 2]
  else:
    content[len(content) // 2] ^= 0xFF
  shard.write_bytes(bytes(content))
  workdir = tmp_path / "run"
  with pytest.raises(DataError, match=shard.name):
    trainer.train_and_evaluate(_grain(tiny_mnist_dir, mine), workdir)
  assert not (workdir / rundir.CONFIG_FILE).exists()
  assert not workdir.exists()  # Refused before it wrote anything: removed.


def test_evaluate_refuses_a_changed_shard(folder, tiny_mnist_dir, tmp_path):
  mine = _copy(folder, tmp_path)
  workdir = tmp_path / "run"
  trainer.train_and_evaluate(_grain(tiny_mnist_dir, mine), workdir)
  test_shard = mine / "test-00000-of-00002.array_record"
  content = bytearray(test_shard.read_bytes())
  content[-10] ^= 0x01
  test_shard.write_bytes(bytes(content))
  with pytest.raises(DataError, match=test_shard.name):
    evaluate.evaluate_checkpoint(workdir)


def test_a_folder_prepared_before_the_digests_opens_with_a_notice(folder, tiny_mnist_dir,
                                                                  tmp_path, capsys):
  mine = _copy(folder, tmp_path)
  metadata = json.loads((mine / records.METADATA_FILE).read_text())
  for split in metadata["splits"].values():
    del split["files"]
  (mine / records.METADATA_FILE).write_text(json.dumps(metadata))
  prepared = data.open_records(_grain(tiny_mnist_dir, mine).data)
  assert prepared.splits["train"]["num_examples"] == 480
  assert "not verified" in capsys.readouterr().out


def test_prepare_overwrite_replaces_its_own_half_written_folder(tiny_mnist_dir, tmp_path,
                                                                monkeypatch):
  """A prepare killed midway (here: interrupted before metadata.json) left a folder that
  `--overwrite` refused ("replaces only a prepared folder"); it is marked as ours now."""
  out = tmp_path / "half"

  def killed(*args, **kwargs):
    raise KeyboardInterrupt

  with monkeypatch.context() as patch:
    patch.setattr(records, "write_metadata", killed)
    with pytest.raises(KeyboardInterrupt):
      prepare.prepare("mnist", out, mnist_dir=str(tiny_mnist_dir), check_counts=False)
  assert list(out.glob("*.array_record")) and not (out / records.METADATA_FILE).exists()
  with pytest.raises(ConfigError, match="--overwrite"):
    prepare.prepare("mnist", out, mnist_dir=str(tiny_mnist_dir), check_counts=False)
  prepared = prepare.prepare("mnist", out, mnist_dir=str(tiny_mnist_dir), check_counts=False,
                             overwrite=True)
  assert prepared.splits["train"]["num_examples"] == 480
  assert not (out / records.PREPARING_MARKER).exists()
  other = tmp_path / "someone_elses"
  other.mkdir()
  (other / "notes.txt").write_text("mine")
  with pytest.raises(ConfigError):  # Still only its own folders.
    prepare.prepare("mnist", other, mnist_dir=str(tiny_mnist_dir), check_counts=False,
                    overwrite=True)


# ----------------------------------------------------------------------------- the teacher

def test_the_teacher_logits_cache_is_checked_and_recomputed(folder, trained, tiny_mnist_dir,
                                                            tmp_path, capsys):
  """The probe zeroed teacher_logits.npy after a kill; the rerun trained on it ("cached
  earlier"). Now its sha256 is recorded and checked on reuse."""
  config = _grain(tiny_mnist_dir, folder, teacher=trained)
  run = trainer.build(config)
  workdir = tmp_path / "student"
  workdir.mkdir()
  cache = lambda: objective.cache_logits_on_disk(workdir, run.objective.teacher, run.inputs,
                                                 run.mesh, run.population.member_batch)
  path = cache()
  good = np.load(path).copy()
  assert json.loads((workdir / rundir.TEACHER_LOGITS_RECORD).read_text())["sha256"]
  capsys.readouterr()
  cache()
  assert "cached earlier" in capsys.readouterr().out
  np.save(path, np.zeros_like(good))
  cache()
  out = capsys.readouterr().out
  assert "does not match the sha256" in out and "cached earlier" not in out
  np.testing.assert_array_equal(np.load(path), good)


def _pairs_teacher(tmp_path: pathlib.Path) -> pathlib.Path:
  """A teacher trained on 28x56 images of 100 classes (mnist_pairs' shape), from records."""
  rng = np.random.default_rng(0)
  arrays = {f"{split}_{kind}": value for split, n in (("train", 64), ("test", 32)) for kind, value
            in (("images", rng.integers(0, 256, (n, 28, 56), np.uint8)),
                ("labels", (np.arange(n) % 100).astype(np.int32)))}
  pairs = tmp_path / "pairs_records"
  records.write_arrays(pairs, "mnist_pairs", 100, "synthetic", arrays)
  config = config_lib.base_config()
  config.data.name, config.data.records_dir = "mnist_pairs", str(pairs)
  config.data.check_counts, config.data.validation_size = False, 0
  config.model.input_shape, config.model.num_classes = (28, 56), 100
  config.model.hidden_sizes, config.num_epochs, config.batch_size = (8,), 1, 32
  config.eval_batch_size = 32
  config_lib.validate(config)
  teacher = tmp_path / "pairs_teacher"
  trainer.train_and_evaluate(config, teacher)
  return teacher


def test_a_teacher_of_another_image_shape_is_refused_naming_both(tiny_mnist_dir, tmp_path):
  teacher = _pairs_teacher(tmp_path)
  config = tiny_config(tiny_mnist_dir, teacher, num_epochs=1, model__hidden_sizes=(16,))
  workdir = tmp_path / "student"
  with pytest.raises(CheckpointError, match=r"\(28, 56\).*\(28, 28\)") as raised:
    trainer.train_and_evaluate(config, workdir)
  assert "\n" not in str(raised.value) and "100 classes" in str(raised.value)
  assert not workdir.exists()


# ----------------------------------------------------------------------------- the model

class _Logits(nn.Module):
  """A user's module returning logits of a given shape per image."""

  shape: tuple[int, ...] = (7,)

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    x = nn.Dense(int(np.prod(self.shape)))(x.reshape((x.shape[0], -1)))
    return x.reshape((x.shape[0], *self.shape))


@pytest.mark.parametrize("shape", [(7,), (10, 2)])
def test_logits_of_the_wrong_shape_are_one_config_error_naming_the_module(tiny_mnist_dir,
                                                                          tmp_path, shape):
  """[B, 7] for 10 classes trained on and was reported as a divergence; [B, 10, 2] raised a bare
  chex AssertionError. Now: refused at set-up, naming the module."""
  workdir = tmp_path / "run"
  config = tiny_config(tiny_mnist_dir, num_epochs=1)
  with pytest.raises(ConfigError, match=r"_Logits returns logits of shape \[2, "
                     + ", ".join(map(str, shape)) + r"\].*expected \[2, 10\]"):
    trainer.train_and_evaluate(config, workdir, model=_Logits(shape))
  assert not workdir.exists()


@pytest.mark.parametrize("field,value", [
    ("temperature", 1e300), ("learning_rate", 1e300), ("learning_rate", 1e-300),
    ("temperature", 1e20), ("model.max_norm", 1e39),
    ("sweep.temperature", (2.0, 1e300)), ("sweep.learning_rate", (1e-3, 1e300))])
def test_numbers_that_float32_cannot_hold_are_refused(tiny_mnist_dir, field, value):
  """1e300 passed as 'finite' and ended as 'diverged' (exit 5) with numpy's overflow warnings."""
  config = config_lib.add_distillation(config_lib.base_config())
  config.teacher_workdir = "/somewhere"
  with config.unlocked():
    parent, _, name = field.rpartition(".")
    (config[parent] if parent else config)[name] = value
  with pytest.raises(ConfigError, match=field):
    config_lib.validate(config)


# ----------------------------------------------------------------------------- evaluate, export

def test_evaluate_reports_the_step_saved_in_the_checkpoint(trained, tmp_path):
  workdir = tmp_path / "renamed"
  shutil.copytree(trained, workdir)
  saved = checkpointing.latest_meta(workdir)[0]
  checkpoints = workdir / rundir.CHECKPOINT_DIR
  (checkpoints / str(saved)).rename(checkpoints / str(saved + 1000))
  report = evaluate.evaluate_checkpoint(workdir)
  assert report["step"] == saved


def test_export_load_accepts_an_empty_batch(trained, tmp_path):
  out = tmp_path / "export"
  export.export_run(trained, out, platforms=("cpu",))
  predict = export.load(out)
  assert predict(np.zeros((0, 28, 28), np.uint8)).shape == (0, 10)
  assert predict(np.zeros((0, 28, 28), np.float32)).shape == (0, 10)
  assert predict(np.zeros((3, 28, 28), np.uint8)).shape == (3, 10)


# ----------------------------------------------------------------------------- a real full disk

@pytest.fixture
def small_tmpfs(tmp_path):
  """A 4 MiB tmpfs (tests run as root here); skipped where mounting is not permitted."""
  mount = tmp_path / "tmpfs"
  mount.mkdir()
  if os.geteuid() != 0 or shutil.which("mount") is None:
    pytest.skip("mounting a tmpfs needs root and mount(8)")
  result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
  if result.returncode:
    pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
  try:
    yield mount
  finally:
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: pathlib.Path) -> None:
  """Writes into `folder` until its filesystem is full."""
  with open(folder / "filler", "wb", buffering=0) as f:
    try:
      while True:
        f.write(b"\0" * 4096)
    except OSError as e:
      assert e.errno == errno.ENOSPC


@pytest.mark.slow  # mount(8) is a process.
def test_a_full_disk_while_logging_is_one_checkpoint_error(tiny_mnist_dir, small_tmpfs,
                                                           monkeypatch):
  """The disk fills just before metrics.jsonl is written: the one-line error was raised, then
  closing TensorBoard met the full disk again and its OSError replaced it (81 lines, exit 1)."""
  workdir = small_tmpfs / "run"
  point = faults.point

  def fill_then(name):
    if name == "write_metrics":
      _fill(small_tmpfs)
    point(name)

  monkeypatch.setattr(faults, "point", fill_then)
  with pytest.raises(CheckpointError, match="could not write") as raised:
    trainer.train_and_evaluate(tiny_config(tiny_mnist_dir, num_epochs=1,
                                           model__hidden_sizes=(8,)), workdir)
  assert "metrics.jsonl" in str(raised.value)
  assert CheckpointError.exit_code == 4


@pytest.mark.slow  # mount(8) is a process.
def test_closing_tensorboard_on_a_full_disk_is_one_checkpoint_error(small_tmpfs):
  writer = reporting.MetricsWriter(small_tmpfs / "metrics.jsonl", small_tmpfs / "tensorboard")
  if writer._tb is None:  # pylint: disable=protected-access
    pytest.skip("tensorboardX is not installed")
  _fill(small_tmpfs)
  writer._tb.add_scalar("x", 1.0, 1)  # pylint: disable=protected-access  # Buffered, unflushed.
  with pytest.raises(CheckpointError, match="tensorboard"):
    writer.close()


# ----------------------------------------------------------------------------- SIGTERM

@pytest.mark.slow
def test_group_sigterm_with_grain_workers_exits_75_within_seconds(folder, tiny_mnist_dir,
                                                                  tmp_path):
  """SLURM's SIGTERM to the process group: the checkpoint is written at once, then the main
  thread waited 25-51 s on grain's worker join in 4 of 7 trials, past SLURM's 30 s KillWait."""
  times = []
  for trial in range(3):
    workdir = tmp_path / f"run{trial}"
    command = [sys.executable, "-m", "kd_jax.train", f"--workdir={workdir}",
               "--config=configs/teacher.py", "--config.data.check_counts=False",
               # Batches of 188 kB, more than a pipe holds, as real ones are: a worker exits
               # only once its queue's feeder has written them, which nobody reads any more.
               "--config.batch_size=240",
               "--config.eval_batch_size=40", "--config.num_epochs=100",
               "--config.model.hidden_sizes=(16,)", "--config.data.pipeline=grain",
               f"--config.data.records_dir={folder}", "--config.data.grain_workers=2"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    env[data.MNIST_DIR_ENV] = str(tiny_mnist_dir)
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
      for line in process.stdout:
        if line.startswith("epoch   2"):
          break
      sent = time.monotonic()
      os.killpg(process.pid, signal.SIGTERM)
      stdout, stderr = process.communicate(timeout=60)
      times.append(time.monotonic() - sent)
    finally:
      if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == 75, (stdout, stderr[-3000:])
    assert "saved checkpoint" in stderr, stderr[-3000:]
  print(f"SIGTERM to exit: {', '.join(f'{t:.1f}s' for t in times)}")
  assert max(times) < 15, times
