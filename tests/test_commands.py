"""The commands a user runs, end to end on a tiny IDX folder (subprocesses, as from a shell)."""

import json

import pytest

from conftest import TINY_OVERRIDES, run_command
from kd_jax import data, evaluation, parallelism, rundir, runs

pytestmark = pytest.mark.slow  # Every test here starts processes (see conftest.py).


@pytest.fixture(scope="module")
def teacher_run(tiny_mnist_dir, tmp_path_factory):
  """A tiny teacher trained on 8 host devices (so restoring on 1 device is a real re-layout)."""
  workdir = tmp_path_factory.mktemp("runs") / "teacher"
  result = run_command("train", "--config=configs/teacher.py", f"--workdir={workdir}",
                       *TINY_OVERRIDES, "--config.model.hidden_sizes=(64,64)",
                       "--config.data.validation_size=96", mnist_dir=tiny_mnist_dir, devices=8)
  return workdir, result


def test_train_writes_metrics_checkpoints_and_config(teacher_run):
  workdir, result = teacher_run
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in records] == [1, 2]
  for record in records:
    assert {"epoch", "train_loss", "test_errors", "test_accuracy", "epoch_time_s",
            "validation_errors", "validation_loss"} <= set(record)
    assert 0 <= record["test_errors"] <= 200 and record["epoch_time_s"] > 0
    assert 0 <= record["validation_errors"] <= 96
  config = json.loads((workdir / "config.json").read_text())
  assert config["model"]["hidden_sizes"] == [64, 64] and config["data"]["jitter"] == 2
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [12, 24]  # (480 - 96 validation) // 32 per batch = 12 steps per epoch.
  assert "Done:" in result.stdout and "Checkpoint:" in result.stdout
  assert "8 device(s)" in result.stdout
  assert list((workdir / "tensorboard").iterdir())


def test_distill_then_evaluate_on_other_device_counts(teacher_run, tiny_mnist_dir, tmp_path):
  teacher_dir, _ = teacher_run
  student_dir = tmp_path / "student"
  distilled = run_command("distill", "--config=configs/distill.py",
                          f"--config.teacher_workdir={teacher_dir}", f"--workdir={student_dir}",
                          *TINY_OVERRIDES, "--config.model.hidden_sizes=(32,)",
                          mnist_dir=tiny_mnist_dir, devices=1)
  assert "Teacher: MLP 784-64-64-10" in distilled.stdout  # Built from the teacher's own config.
  records = [json.loads(line) for line in (student_dir / "metrics.jsonl").read_text().splitlines()]
  assert {"train_soft_loss", "train_hard_loss"} <= set(records[-1])

  # Written on 1 device, evaluated on 8; the teacher was written on 8 and is evaluated on 1.
  reports = {}
  for workdir, devices in ((student_dir, 8), (teacher_dir, 1)):
    run_command("evaluate", f"--workdir={workdir}", mnist_dir=tiny_mnist_dir, devices=devices)
    reports[workdir] = json.loads((workdir / "eval.json").read_text())
    report = reports[workdir]
    assert report["num_test_examples"] == 200 and report["num_devices"] == devices
    assert sum(report["per_class_errors"]) == report["test_errors"]
    assert report["test_accuracy"] == pytest.approx(1 - report["test_errors"] / 200)
    assert report["step"] == (30 if workdir == student_dir else 24) and report["test_loss"] > 0
  assert reports[student_dir]["model"] == "MLP 784-32-10"
  assert reports[student_dir]["distilled_from"] == str(teacher_dir)
  fit = reports[student_dir]["transfer_fit"]  # How well it fits its teacher on the 480 images.
  assert fit["num_train_examples"] == 480 and 0.5 < fit["train_agreement"][0] <= 1
  assert fit["train_kl"][0] >= 0 and "transfer_fit" not in reports[teacher_dir]
  # And on the test set: the same figures as the student's and teacher's logits there give.
  splits = data.load_dataset(rundir.load_config(student_dir).data, str(tiny_mnist_dir))
  mesh = parallelism.make_mesh()
  student, teacher = (runs.Run.open(run, mesh=mesh) for run in (student_dir, teacher_dir))
  direct = evaluation.fit_to_teacher(student.logits(splits.test_images),
                                     teacher.logits(splits.test_images))
  assert fit["test_agreement"] == pytest.approx(direct["agreement"].tolist(), abs=1 / 200)
  assert fit["test_kl"] == pytest.approx(direct["kl"].tolist(), rel=1e-3)
  # The prototypes are easy: both nets learn them well in two epochs.
  assert reports[student_dir]["test_errors"] < 40
  # Evaluation of the last checkpoint agrees with what training logged for it.
  last = json.loads((student_dir / "metrics.jsonl").read_text().splitlines()[-1])
  assert reports[student_dir]["test_errors"] == last["test_errors"]


def test_evaluate_an_earlier_step(teacher_run, tiny_mnist_dir):
  workdir, _ = teacher_run
  result = run_command("evaluate", f"--workdir={workdir}", "--step=12", mnist_dir=tiny_mnist_dir)
  report = json.loads((workdir / "eval.json").read_text())
  first = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[0])
  assert report["step"] == 12 and report["test_errors"] == first["test_errors"]
  assert "step 12" in result.stdout


def test_pipeline_runs_teacher_student_baseline_and_evaluation(tiny_mnist_dir, tmp_path):
  overrides = [f"--{which}_config.{o[len('--config.'):]}" for which in ("teacher", "student")
               for o in TINY_OVERRIDES + ["--config.model.hidden_sizes=(32,)"]]
  result = run_command("pipeline", f"--workdir={tmp_path}", *overrides, mnist_dir=tiny_mnist_dir)
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert set(summary) == {"teacher", "distilled", "baseline"}
  assert summary["distilled"]["distilled_from"] == str(tmp_path / "teacher")
  assert summary["baseline"]["distilled_from"] is None
  assert (tmp_path / "test_errors.png").stat().st_size > 1000
  assert "Test errors: teacher" in result.stdout
