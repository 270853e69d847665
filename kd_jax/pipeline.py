"""The main job: teacher, then a distilled student, then evaluation of both (quick configs).

  python -m kd_jax.pipeline --workdir runs/quick

Also trains the same student on hard labels alone for the same budget (--baseline), so the gain
from distillation is measured, not assumed. Writes ROOT/summary.json and ROOT/test_errors.png.
"""

from __future__ import annotations

import pathlib

from absl import flags
from ml_collections import config_flags

from kd_jax import cli, config_lib, evaluation, plots, reporting, trainer
from kd_jax.errors import ConfigError

_TEACHER = config_flags.DEFINE_config_file("teacher_config", "configs/quick_teacher.py",
                                           "Teacher config file.", lock_config=True)
_STUDENT = config_flags.DEFINE_config_file("student_config", "configs/quick_distill.py",
                                           "Distillation config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Root folder: teacher/, distilled/, baseline/.",
                               required=True)
_BASELINE = flags.DEFINE_bool("baseline", True, "Also train the student alone on hard labels.")


def main(argv):
  del argv
  root = pathlib.Path(_WORKDIR.value)
  teacher_config, student_config = _TEACHER.value, _STUDENT.value.copy_and_resolve_references()
  own_teacher = str(root / "teacher")
  if student_config.get("teacher_workdir") not in ("", None, own_teacher):
    raise ConfigError(f"--student_config.teacher_workdir={student_config.teacher_workdir} would "
                      f"be ignored: the pipeline distils from the teacher it trains, {own_teacher}. "
                      "Drop the override, or run kd_jax.distill with that teacher.")
  student_config.teacher_workdir = own_teacher
  config_lib.validate(teacher_config)
  config_lib.validate(student_config, require_teacher=True)

  reporting.say("== 1/3 teacher ==")
  trainer.train_and_evaluate(teacher_config, root / "teacher", cli.OVERWRITE.value)
  reporting.say("== 2/3 distilled student ==")
  # A teacher retrained since the student was distilled means the student is distilled again.
  trainer.train_and_evaluate(student_config, root / "distilled", cli.OVERWRITE.value,
                             restart_on_new_teacher=True)
  runs = ["teacher", "distilled"]
  if _BASELINE.value:
    reporting.say("== baseline: the same student on hard labels alone ==")
    baseline_config = student_config.copy_and_resolve_references()
    baseline_config.teacher_workdir = ""
    trainer.train_and_evaluate(baseline_config, root / "baseline", cli.OVERWRITE.value)
    runs.append("baseline")
  reporting.say("== 3/3 evaluation ==")
  summary = {run: evaluation.evaluate_checkpoint(root / run) for run in runs}
  reporting.write_json(root / "summary.json", summary)
  plots.test_errors(root, runs)
  reporting.say("Test errors: " + ", ".join(f"{run} {summary[run]['test_errors']}" for run in runs)
                + f". Written: {root / 'summary.json'}")


if __name__ == "__main__":
  cli.run(main, [_TEACHER, _STUDENT])
