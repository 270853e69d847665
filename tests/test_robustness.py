"""Nothing lost and nothing silently wrong: overwrite, checksums, provenance, the workdir lock,
data fingerprints, signals and environment failures (issue 8's hostile cases, on tiny data)."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from kd_jax import checkpointing, data, parallelism, reporting, rundir, trainer
from kd_jax.errors import CheckpointError, ConfigError, DataError
from conftest import TINY_OVERRIDES, make_tiny_mnist, run_command, snapshot, tiny_config

MESH = parallelism.make_mesh(jax.devices()[:1])
STUDENT = ["--config=configs/student.py", *TINY_OVERRIDES, "--config.model.hidden_sizes=(16,)"]


def _config(mnist_dir, teacher=None, **overrides):
  return tiny_config(mnist_dir, teacher, **{"num_epochs": 2, "model__hidden_sizes": (16,),
                                            **overrides})


def _params(workdir):
  return jax.device_get(checkpointing.restore_variables(workdir, MESH)[0])


@pytest.fixture(scope="module")
def teacher(tiny_mnist_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("teacher") / "run"
  trainer.train_and_evaluate(_config(tiny_mnist_dir, model__hidden_sizes=(24,)), workdir)
  return workdir


@pytest.fixture()
def finished(tiny_mnist_dir, tmp_path):
  workdir = tmp_path / "run"
  trainer.train_and_evaluate(_config(tiny_mnist_dir), workdir)
  return workdir


# ----------------------------------------------------------------------------- 1. --overwrite


@pytest.mark.parametrize("bad", ["teacher", "data", "batch"])
def test_overwrite_checks_everything_before_touching_the_old_run(finished, tiny_mnist_dir,
                                                                 tmp_path, bad):
  before = snapshot(finished)
  config = {"teacher": _config(tiny_mnist_dir, teacher=tmp_path / "typo"),
            "data": _config(tmp_path / "no_mnist_here"),
            "batch": _config(tiny_mnist_dir, batch_size=70000)}[bad]
  with pytest.raises((CheckpointError, DataError, ConfigError)):
    trainer.train_and_evaluate(config, finished, overwrite=True)
  assert snapshot(finished) == before


def test_overwrite_with_the_same_config_is_a_no_op(finished, tiny_mnist_dir, capsys):
  before = snapshot(finished)
  trainer.train_and_evaluate(_config(tiny_mnist_dir), finished, overwrite=True)
  assert "nothing to train" in capsys.readouterr().out
  assert {p: t for p, t in snapshot(finished).items() if "checkpoints" in str(p)} == {
      p: t for p, t in before.items() if "checkpoints" in str(p)}


def _overwrite_command(workdir, mnist_dir, fault=None, overwrite=True, learning_rate=0.01):
  args = [*STUDENT, f"--config.learning_rate={learning_rate}", f"--workdir={workdir}"]
  return run_command("train", *args, *(["--overwrite"] if overwrite else []), check=False,
                     mnist_dir=mnist_dir, extra_env={"KD_JAX_FAULT": fault} if fault else None)


@pytest.mark.slow
def test_a_kill_during_overwrite_leaves_the_old_run_or_the_new_one(tiny_mnist_dir, tmp_path):
  old = tmp_path / "old"
  run_command("train", *STUDENT, f"--workdir={old}", mnist_dir=tiny_mnist_dir)
  old_params, old_snapshot = _params(old), snapshot(old)
  # Killed half-way through moving the old run aside: rerun without --overwrite -> the old run.
  workdir = tmp_path / "run"
  shutil.copytree(old, workdir)
  assert _overwrite_command(workdir, tiny_mnist_dir, "kill:set_aside:metrics.jsonl").returncode == -9
  result = run_command("train", *STUDENT, f"--workdir={workdir}", mnist_dir=tiny_mnist_dir)
  assert "interrupted --overwrite" in result.stdout and "nothing to train" in result.stdout
  assert json.loads((workdir / "config.json").read_text())["learning_rate"] == 0.001
  assert set(p.relative_to(workdir) for p in snapshot(workdir)) >= set(
      p.relative_to(old) for p in old_snapshot if ".lock" not in str(p))
  jax.tree.map(np.testing.assert_array_equal, _params(workdir), old_params)
  # Killed just after the new run started: the rerun carries the new run on.
  assert _overwrite_command(workdir, tiny_mnist_dir, "kill:discard_set_aside").returncode == -9
  assert (workdir / rundir.ASIDE_DIR).is_dir()
  assert _overwrite_command(workdir, tiny_mnist_dir).returncode == 0
  assert not (workdir / rundir.ASIDE_DIR).exists()
  assert json.loads((workdir / "config.json").read_text())["learning_rate"] == 0.01
  assert [r["epoch"] for r in reporting.read_metrics(workdir / "metrics.jsonl")] == [1, 2]
  # Killed mid-move and rerun with the same --overwrite: the new run, from scratch.
  fresh = tmp_path / "fresh"
  shutil.copytree(old, fresh)
  assert _overwrite_command(fresh, tiny_mnist_dir, "kill:set_aside:checkpoints").returncode == -9
  result = _overwrite_command(fresh, tiny_mnist_dir)
  assert result.returncode == 0 and "Resuming" not in result.stdout
  jax.tree.map(np.testing.assert_array_equal, _params(fresh), _params(workdir))


# ----------------------------------------------------------------------------- 2. checksums


def _flip_bytes_in_largest_array_file(workdir, step, item):
  files = [p for p in (workdir / "checkpoints" / str(step) / item).rglob("*")
           if p.is_file() and "/d/" in str(p)]
  target = max(files, key=lambda p: p.stat().st_size)
  raw = bytearray(target.read_bytes())
  middle = len(raw) // 2
  raw[middle:middle + 2] = bytes(b ^ 0xFF for b in raw[middle:middle + 2])
  target.write_bytes(bytes(raw))


@pytest.mark.slow
def test_corrupted_checkpoint_is_caught_and_resume_falls_back(tiny_mnist_dir, tmp_path):
  reference = tmp_path / "reference"
  trainer.train_and_evaluate(_config(tiny_mnist_dir, num_epochs=3), reference)
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  last = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  _flip_bytes_in_largest_array_file(workdir, last, "params")
  # Evaluate and distil refuse it, naming the checkpoint (exit 4).
  result = run_command("evaluate", f"--workdir={workdir}", check=False)
  assert result.returncode == 4 and f"step {last}" in result.stderr and "corrupted" in result.stderr
  assert "Traceback" not in result.stderr and not (workdir / "eval.json").exists()
  # A training resume falls back to the intact checkpoint before it and redoes the epoch.
  result = run_command("train", *STUDENT, "--config.num_epochs=3", f"--workdir={workdir}",
                       check=False, mnist_dir=tiny_mnist_dir)
  assert "Warning" in result.stdout and "corrupted" in result.stdout, result.stdout
  assert (workdir / rundir.CORRUPTED_DIR / str(last)).is_dir()
  # The optimizer state too: a 2-byte flip there is refused as well.
  _flip_bytes_in_largest_array_file(reference, last, "train")
  with pytest.raises(CheckpointError, match="corrupted"):
    checkpointing.restore(checkpointing.open_manager(reference, read_only=True), last,
                          {"train": jax.device_get(trainer._resume_item(  # pylint: disable=W0212
                              _fresh_student_state(tiny_mnist_dir)))},
                          parallelism.replicated(MESH), reference)


def _fresh_student_state(mnist_dir):
  """The state a fresh run of the student starts from, set up as the trainer sets it up."""
  config = _config(mnist_dir, num_epochs=3)
  return trainer.fresh_state(config, trainer.build(config, MESH))


def test_json_files_never_hold_nan(tmp_path):
  reporting.write_json(tmp_path / "x.json", {"loss": float("nan"), "list": [1.0, float("inf")]})
  assert json.loads((tmp_path / "x.json").read_text(),
                    parse_constant=lambda c: pytest.fail(c)) == {"loss": None, "list": [1.0, None]}


def test_reports_name_the_machine_and_say_what_an_old_record_lacks():
  here = reporting.describe_machine(reporting.machine())
  assert reporting.machine()["host_cpu"] in here and "jax " in here and "×" not in here
  old = {"device": "cpu", "host_cpu": "Some CPU", "host_cores": 2, "jax": "0.4"}
  assert reporting.describe_machine(old) == (
      "Some CPU (2 cores, vector extensions not recorded), device cpu, jax 0.4")
  pod = {**old, "host_vector_extensions": ["avx2", "fma"], "num_devices": 8}
  assert reporting.describe_machine(pod) == (
      "Some CPU (2 cores, avx2 fma), device cpu × 8, jax 0.4")


# ----------------------------------------------------------------------------- 3. the teacher


@pytest.mark.slow
def test_student_records_its_teacher_and_refuses_another(teacher, tiny_mnist_dir, tmp_path):
  student = tmp_path / "student"
  config = _config(tiny_mnist_dir, teacher=teacher)
  trainer.train_and_evaluate(config, student)
  record = json.loads((student / "teacher.json").read_text())
  assert record["step"] == 30 and record["finished"] and len(record["digest"]) == 16
  report = run_command("evaluate", f"--workdir={student}", mnist_dir=tiny_mnist_dir)
  assert json.loads((student / "eval.json").read_text())["teacher"]["digest"] == record["digest"]
  del report
  # The teacher is retrained (another seed) in the same place: resuming the student is refused.
  other_teacher = tmp_path / "teacher"
  shutil.copytree(teacher, other_teacher)
  trainer.train_and_evaluate(_config(tiny_mnist_dir, model__hidden_sizes=(24,), seed=7),
                             other_teacher, overwrite=True)
  moved = _config(tiny_mnist_dir, teacher=other_teacher)
  shutil.copy(student / "config.json", tmp_path / "saved_config.json")
  config_json = json.loads((student / "config.json").read_text())
  config_json["teacher_workdir"] = str(other_teacher)
  (student / "config.json").write_text(json.dumps(config_json))
  with pytest.raises(CheckpointError, match="different teacher: digest"):
    trainer.train_and_evaluate(moved, student)
  # The pipeline's choice: distil again from the new teacher.
  trainer.train_and_evaluate(moved, student, restart_on_new_teacher=True)
  assert json.loads((student / "teacher.json").read_text())["digest"] != record["digest"]


def test_distilling_from_an_unfinished_teacher_warns(teacher, tiny_mnist_dir, tmp_path, capsys):
  unfinished = tmp_path / "teacher"
  shutil.copytree(teacher, unfinished)
  config_json = json.loads((unfinished / "config.json").read_text())
  config_json["num_epochs"] = 5  # Its checkpoint is from epoch 2 of 5: still training.
  (unfinished / "config.json").write_text(json.dumps(config_json))
  trainer.train_and_evaluate(_config(tiny_mnist_dir, teacher=unfinished), tmp_path / "student")
  assert "has not finished its 5 epochs" in capsys.readouterr().out


# ----------------------------------------------------------------------------- 4. one writer


@pytest.mark.slow
def test_second_writer_is_refused_naming_the_holder(finished, tiny_mnist_dir):
  with rundir.locked(finished):
    result = run_command("train", *STUDENT, f"--workdir={finished}", check=False,
                         mnist_dir=tiny_mnist_dir)
  assert result.returncode == 4
  assert f"in use by PID {os.getpid()} on" in result.stderr and "Traceback" not in result.stderr
  # The lock died with its holder: the same command now runs.
  assert run_command("train", *STUDENT, f"--workdir={finished}",
                     mnist_dir=tiny_mnist_dir).returncode == 0


def test_checkpoint_removed_while_reading_is_not_called_corrupt(finished, monkeypatch):
  manager = checkpointing.open_manager(finished, read_only=True)
  step = manager.latest_step()

  def restore_as_cleanup_deletes(*args, **kwargs):
    shutil.rmtree(finished / "checkpoints" / str(step))
    raise FileNotFoundError("gone")

  monkeypatch.setattr(manager, "restore", restore_as_cleanup_deletes)
  with pytest.raises(CheckpointError, match="was removed while it was being read"):
    checkpointing.restore(manager, step, {"params": _params(finished)["params"]},
                          parallelism.replicated(MESH), finished)


# ----------------------------------------------------------------------------- 5. the data


@pytest.mark.slow
def test_other_data_is_refused_on_resume_and_flagged_by_evaluate(tiny_mnist_dir, tmp_path):
  other = tmp_path / "other_mnist"
  data.write_idx_folder(other, make_tiny_mnist(seed=1))
  workdir = tmp_path / "run"
  run_command("train", *STUDENT, "--config.num_epochs=1", f"--workdir={workdir}",
              mnist_dir=tiny_mnist_dir)
  fingerprint = json.loads((workdir / "data.json").read_text())
  assert set(fingerprint) == {"source", "train", "validation", "test"}
  result = run_command("train", *STUDENT, "--config.num_epochs=1", f"--workdir={workdir}",
                       check=False, mnist_dir=other)
  assert result.returncode == 3 and "different data: test, train" in result.stderr
  result = run_command("evaluate", f"--workdir={workdir}", f"--mnist_dir={other}")
  assert "Warning: the test set" in result.stdout
  assert json.loads((workdir / "eval.json").read_text())["data"]["same_as_training"] is False


# ----------------------------------------------------------------------------- 6. signals


@pytest.mark.parametrize("fault, message", [
    ("signal:put_data", "before the first epoch; nothing new to save"),
    ("signal_twice:put_data", "a second signal (SIGTERM)"),
    ("signal_and_hang:put_data", "did not stop within 0.2 s"),
])
@pytest.mark.slow
def test_signals_from_the_start_end_with_75(tiny_mnist_dir, tmp_path, fault, message):
  result = run_command("train", *STUDENT, f"--workdir={tmp_path / 'run'}", check=False,
                       mnist_dir=tiny_mnist_dir,
                       extra_env={"KD_JAX_FAULT": fault,
                                  "KD_JAX_GRACE_S": "0.2" if "hang" in fault else "300"})
  assert result.returncode == 75, result.stderr[-2000:]
  assert message in result.stderr and "Traceback" not in result.stderr


# ----------------------------------------------------------------------------- 7. environment


@pytest.mark.slow
def test_workdir_that_is_a_file_and_disk_full(finished, tiny_mnist_dir, tmp_path, monkeypatch):
  (tmp_path / "a_file").write_text("x")
  for workdir in (tmp_path / "a_file", tmp_path / "a_file" / "under"):
    result = run_command("train", *STUDENT, f"--workdir={workdir}", check=False,
                         mnist_dir=tiny_mnist_dir)
    assert result.returncode == 4 and "cannot write to the workdir" in result.stderr
  def no_space(*args, **kwargs):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(checkpointing.ocp.CheckpointManager, "save", no_space)
  with pytest.raises(CheckpointError, match="No space left on device"):
    trainer.train_and_evaluate(_config(tiny_mnist_dir), tmp_path / "full")


@pytest.mark.slow
def test_evaluate_prints_its_score_before_a_failed_write(finished, tiny_mnist_dir):
  (finished / "eval.json").mkdir()  # Unwritable as a file (a read-only disk, for root too).
  result = run_command("evaluate", f"--workdir={finished}", check=False,
                       mnist_dir=tiny_mnist_dir)
  assert result.returncode == 4 and "test errors" in result.stdout
  assert "the score is printed above" in result.stderr


@pytest.mark.slow
def test_hand_edited_config_json_is_named(finished, tiny_mnist_dir):
  saved = json.loads((finished / "config.json").read_text())
  for edit, match in ((lambda c: c["model"].pop("hidden_sizes"), "model.hidden_sizes is missing"),
                      (lambda c: c.update(num_epochs="ten"), "config.num_epochs='ten'")):
    config_json = json.loads(json.dumps(saved))
    edit(config_json)
    (finished / "config.json").write_text(json.dumps(config_json))
    result = run_command("evaluate", f"--workdir={finished}", check=False,
                         mnist_dir=tiny_mnist_dir)
    assert result.returncode == 4 and match in result.stderr, result.stderr[-1000:]


@pytest.mark.slow
def test_out_of_memory_and_no_cluster_are_one_line(tiny_mnist_dir, tmp_path):
  result = run_command("train", *STUDENT, f"--workdir={tmp_path / 'oom'}", check=False,
                       mnist_dir=tiny_mnist_dir, extra_env={"KD_JAX_FAULT": "oom:put_data"})
  assert result.returncode == 6 and "kd_jax: error: out of memory" in result.stderr
  assert "Traceback" not in result.stderr
  result = run_command("train", *STUDENT, f"--workdir={tmp_path}", "--distributed", check=False,
                       extra_env={"SLURM_JOB_ID": ""})
  assert result.returncode == 2 and "could not join a multi-process run" in result.stderr


# ----------------------------------------------------------------------------- 8, 9. the rest


def test_cut_off_metrics_line_is_dropped_on_resume(tiny_mnist_dir, tmp_path):
  workdir = tmp_path / "run"
  trainer.train_and_evaluate(_config(tiny_mnist_dir, num_epochs=1), workdir)
  with (workdir / "metrics.jsonl").open("a") as f:
    f.write('{"epoch": 2, "train_lo')
  trainer.train_and_evaluate(_config(tiny_mnist_dir, num_epochs=1), workdir)
  records = reporting.read_metrics(workdir / "metrics.jsonl")
  assert [r["epoch"] for r in records] == [1]


@pytest.mark.slow
def test_small_ones(finished, tiny_mnist_dir, tmp_path):
  for seed in (2**32, -1):
    with pytest.raises(ConfigError, match="config.seed"):
      _config(tiny_mnist_dir, seed=seed)
  with pytest.raises(ConfigError, match="validation_size=480"):
    trainer.train_and_evaluate(_config(tiny_mnist_dir, data__validation_size=480), tmp_path / "v")
  # Evaluate on 3 devices although eval_batch_size=40 does not divide by 3: padded, same score.
  run_command("evaluate", f"--workdir={finished}", mnist_dir=tiny_mnist_dir)
  one = json.loads((finished / "eval.json").read_text())
  run_command("evaluate", f"--workdir={finished}", mnist_dir=tiny_mnist_dir, devices=3)
  three = json.loads((finished / "eval.json").read_text())
  assert three["num_devices"] == 3 and three["test_errors"] == one["test_errors"]
  result = run_command("pipeline", f"--workdir={tmp_path / 'p'}",
                       "--student_config.teacher_workdir=/somewhere/else", check=False)
  assert result.returncode == 2 and "would be ignored" in result.stderr
  folder = tmp_path / "ambiguous"
  data.write_idx_folder(folder, make_tiny_mnist())
  data.write_idx_folder(tmp_path / "plain", make_tiny_mnist(seed=3), compress=False)
  shutil.copy(tmp_path / "plain" / "t10k-labels-idx1-ubyte", folder)
  with pytest.raises(DataError, match="both t10k-labels-idx1-ubyte.gz and t10k-labels-idx1-ubyte"):
    data.load_idx_folder(folder, check_counts=False)
