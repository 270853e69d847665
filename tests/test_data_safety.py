"""The last ways to lose or silently corrupt data (a hostile probe's failures), each closed:
export never deletes what is not its own, every checkpoint item is checksummed, exported models
take float images correctly, a full disk is one line, interrupted --overwrites are repaired by
every reader, and a run is finished by its checkpoint, not its log."""

import json
import shutil

import jax
import numpy as np
import pytest

import kd_jax
from kd_jax import checkpointing, data, export, rundir, trainer
from kd_jax.errors import CheckpointError, ConfigError
from conftest import TINY_OVERRIDES, run_command, snapshot, tiny_config

STUDENT = ["--config=student", *TINY_OVERRIDES, "--config.model.hidden_sizes=(16,)"]


@pytest.fixture(scope="module")
def run(tiny_mnist_dir, tmp_path_factory):
  """A finished 3-epoch run (every epoch checkpointed, all kept)."""
  workdir = tmp_path_factory.mktemp("safety") / "run"
  trainer.train_and_evaluate(tiny_config(tiny_mnist_dir, num_epochs=3, model__hidden_sizes=(16,),
                                         checkpoint__max_to_keep=5), workdir)
  return workdir


def _variables(workdir):
  return jax.device_get(checkpointing.restore_variables(workdir, checkpointing.parallelism
                                                        .make_mesh(jax.devices()[:1]))[0])


# ----------------------------------------------------------------------------- export


def test_export_writes_only_where_it_may(run, tmp_path):
  before = snapshot(run)
  for out in (run, run.parent):  # The run itself, and a folder holding it.
    with pytest.raises(ConfigError, match="the run being exported"):
      export.export_run(run, out, overwrite=True, platforms=("cpu",))
  other_run = tmp_path / "other_run"
  shutil.copytree(run, other_run)
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "notes.txt").write_text("keep me")
  for out, what in ((other_run, "a kd_jax run directory"), (mine, "not a kd_jax export")):
    with pytest.raises(ConfigError, match=what):
      export.export_run(run, out, overwrite=True, platforms=("cpu",))
  assert snapshot(run) == before and (mine / "notes.txt").read_text() == "keep me"
  assert snapshot(other_run) == {other_run / p.relative_to(run): t for p, t in before.items()}
  # A user's folder named like the old staging folder is never touched.
  user_tmp = tmp_path / "exported.tmp"
  user_tmp.mkdir()
  (user_tmp / "data.bin").write_bytes(b"precious")
  out = tmp_path / "exported"
  export.export_run(run, out, platforms=("cpu",))
  with pytest.raises(ConfigError, match="--overwrite"):
    export.export_run(run, out, platforms=("cpu",))
  export.export_run(run, out, overwrite=True, platforms=("cpu",))  # A previous export: replaced.
  assert export.is_export(out) and (user_tmp / "data.bin").read_bytes() == b"precious"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["exported", "exported.tmp", "mine",
                                                        "other_run"]  # No staging left behind.


def test_exported_model_takes_float_images_and_refuses_others(run, tiny_mnist_dir, tmp_path):
  export.export_run(run, tmp_path / "exported", platforms=("cpu",))
  served = export.load(tmp_path / "exported")
  images = data.load_idx_folder(tiny_mnist_dir, check_counts=False)["test_images"]
  expected = kd_jax.load(run).predict(images)
  np.testing.assert_allclose(served(images), expected, atol=1e-5)
  np.testing.assert_allclose(served(images / np.float32(255)), expected, atol=1e-5)
  for bad in (images.astype(np.float32), images.astype(np.int32), images[:, :10]):
    with pytest.raises(ValueError):
      served(bad)


# ----------------------------------------------------------------------------- checkpoints


def test_a_changed_epoch_in_meta_is_caught_and_healed(run, tiny_mnist_dir, tmp_path, capsys):
  workdir = tmp_path / "run"
  shutil.copytree(run, workdir)
  reference = _variables(run)
  meta_file = workdir / "checkpoints" / "45" / "meta" / "metadata"
  meta = json.loads(meta_file.read_text())
  assert meta["epoch"] == 3
  meta_file.write_text(json.dumps({**meta, "epoch": 2}))  # One flipped bit: 3 -> 2.
  with pytest.raises(CheckpointError, match="meta item"):
    kd_jax.load(workdir)
  config = tiny_config(tiny_mnist_dir, num_epochs=3, model__hidden_sizes=(16,),
                       checkpoint__max_to_keep=5)
  trainer.train_and_evaluate(config, workdir)  # Quarantines step 45, retrains epoch 3 from 30.
  out = capsys.readouterr().out
  assert "meta item" in out and "Resuming" in out and "from checkpoint step 30" in out
  assert (workdir / "corrupted_checkpoints" / "45").is_dir()
  jax.tree.map(np.testing.assert_array_equal, _variables(workdir), reference)


def test_finished_comes_from_the_checkpoint_not_a_cut_off_log(run, tiny_mnist_dir, tmp_path):
  workdir = tmp_path / "teacher"
  shutil.copytree(run, workdir)
  metrics = workdir / "metrics.jsonl"
  metrics.write_text(metrics.read_text()[:-20])  # The last line cut off by a kill.
  config = tiny_config(tiny_mnist_dir, num_epochs=3, model__hidden_sizes=(16,),
                       checkpoint__max_to_keep=5)
  assert checkpointing.finished_step(workdir, config) == 45
  student = tiny_config(tiny_mnist_dir, teacher=workdir, model__hidden_sizes=(8,), num_epochs=1)
  trainer.train_and_evaluate(student, tmp_path / "student")
  assert json.loads((tmp_path / "student" / "teacher.json").read_text())["finished"] is True


def test_a_refused_run_leaves_no_workdir(tiny_mnist_dir, tmp_path):
  with pytest.raises((ConfigError, kd_jax.DataError)):
    trainer.train_and_evaluate(tiny_config(tiny_mnist_dir, data__validation_size=60000),
                               tmp_path / "refused")
  assert not (tmp_path / "refused").exists()


# ----------------------------------------------------------------------------- a full disk


@pytest.mark.parametrize("point", ["write_metrics", "write_tensorboard", "write_json:data.json"])
@pytest.mark.slow
def test_a_full_disk_while_logging_is_one_line_exit_4(tiny_mnist_dir, tmp_path, point):
  result = run_command("train", *STUDENT, f"--workdir={tmp_path / 'run'}", check=False,
                       mnist_dir=tiny_mnist_dir, extra_env={"KD_JAX_FAULT": f"enospc:{point}"})
  assert result.returncode == 4, result.stderr
  assert result.stderr.count("\n") == 1 and "No space left on device" in result.stderr
  assert result.stderr.startswith("kd_jax: error: could not write")


# ----------------------------------------------------------------------------- --overwrite


@pytest.mark.slow
def test_every_reader_repairs_an_interrupted_overwrite(tiny_mnist_dir, tmp_path):
  old = tmp_path / "old"
  run_command("train", *STUDENT, f"--workdir={old}", mnist_dir=tiny_mnist_dir)
  run_command("evaluate", f"--workdir={old}", mnist_dir=tiny_mnist_dir)
  expected = json.loads((old / "eval.json").read_text())["test_errors"]
  new_run = [*STUDENT, "--config.learning_rate=0.01", "--overwrite"]
  # Killed while moving the old run aside, or between the new run's data.json and config.json.
  moving, before_config = "kill:set_aside:metrics.jsonl", "kill:write_json:population.json"
  killed_runs = {}
  for fault in (moving, before_config):  # One kill each; each reader repairs a copy of it.
    killed_runs[fault] = tmp_path / f"killed_{len(killed_runs)}"
    shutil.copytree(old, killed_runs[fault])
    killed = run_command("train", *new_run, f"--workdir={killed_runs[fault]}", check=False,
                         mnist_dir=tiny_mnist_dir, extra_env={"KD_JAX_FAULT": fault})
    assert killed.returncode == -9 and (killed_runs[fault] / rundir.ASIDE_DIR).is_dir()
  for number, (fault, reader) in enumerate([(moving, "evaluate"), (moving, "export"),
                                            (before_config, "evaluate"),
                                            (before_config, "distill")]):
    workdir = tmp_path / f"case{number}"
    shutil.copytree(killed_runs[fault], workdir)
    args = {"evaluate": [f"--workdir={workdir}"],
            "export": [f"--workdir={workdir}", f"--out={tmp_path / f'exported{number}'}"],
            "distill": ["--config=quick_distill", *TINY_OVERRIDES,
                        "--config.model.hidden_sizes=(8,)", f"--config.teacher_workdir={workdir}",
                        f"--workdir={tmp_path / f'student{number}'}"]}[reader]
    result = run_command(reader, *args, mnist_dir=tiny_mnist_dir)
    assert "interrupted --overwrite" in result.stdout, (fault, reader)
    assert not (workdir / rundir.ASIDE_DIR).exists()
    assert json.loads((workdir / "config.json").read_text())["learning_rate"] == 0.001
    if reader == "evaluate":  # The old run, whole: the same score.
      assert json.loads((workdir / "eval.json").read_text())["test_errors"] == expected


def test_runs_saved_before_the_specialist_fields_moved_still_resume(run, tmp_path, tiny_mnist_dir):
  workdir = tmp_path / "older"
  shutil.copytree(run, workdir)
  saved = json.loads((workdir / "config.json").read_text())
  (workdir / "config.json").write_text(json.dumps({**saved, "class_subsets": [],
                                                   "init_workdir": ""}))
  config = tiny_config(tiny_mnist_dir, num_epochs=3, model__hidden_sizes=(16,),
                       checkpoint__max_to_keep=5)
  assert rundir.config_differences(rundir.load_config(workdir), config) == []
  assert checkpointing.finished_step(workdir, config) == 45
