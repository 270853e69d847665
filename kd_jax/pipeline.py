"""The main job: teacher, then a distilled student, then evaluation of both (quick configs).

  python -m kd_jax.pipeline --workdir runs/quick

Also trains the same student on hard labels alone for the same budget (--baseline), so the gain
from distillation is measured, not assumed. Writes ROOT/summary.json and ROOT/test_errors.png.
"""

from __future__ import annotations

import pathlib

from absl import flags

from kd_jax import api, cli, config_lib, plots, reporting
from kd_jax.errors import ConfigError

_TEACHER = cli.define_config("teacher_config", "quick_teacher", "Teacher config.")
_STUDENT = cli.define_config("student_config", "quick_distill", "Distillation config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Root folder: teacher/, distilled/, baseline/.",
                               required=True)
_BASELINE = flags.DEFINE_bool("baseline", True, "Also train the student alone on hard labels.")


def main(argv):
  del argv
  root = pathlib.Path(_WORKDIR.value)
  student_config = _STUDENT.value
  own_teacher = str(root / "teacher")
  if student_config.get("teacher_workdir") not in ("", None, own_teacher):
    raise ConfigError(f"--student_config.teacher_workdir={student_config.teacher_workdir} would "
                      f"be ignored: the pipeline distils from the teacher it trains, {own_teacher}. "
                      "Drop the override, or run kd_jax.distill with that teacher.")
  config_lib.validate(_TEACHER.value)  # Both configs are checked before anything trains.
  with student_config.unlocked():
    student_config.teacher_workdir = own_teacher
  config_lib.validate(student_config, require_teacher=True)

  reporting.say("== 1/3 teacher ==")
  runs = {"teacher": api.train(_TEACHER.value, root / "teacher", overwrite=cli.OVERWRITE.value)}
  reporting.say("== 2/3 distilled student ==")
  # A teacher retrained since the student was distilled means the student is distilled again.
  runs["distilled"] = api.distill(student_config, root / "distilled", teacher=runs["teacher"],
                                  overwrite=cli.OVERWRITE.value, restart_on_new_teacher=True)
  if _BASELINE.value:
    reporting.say("== baseline: the same student on hard labels alone ==")
    baseline_config = student_config.copy_and_resolve_references()
    with baseline_config.unlocked():
      baseline_config.teacher_workdir = ""
    runs["baseline"] = api.train(baseline_config, root / "baseline", overwrite=cli.OVERWRITE.value)
  reporting.say("== 3/3 evaluation ==")
  summary = {}
  for name, run in runs.items():
    reporting.say(f"-- {name}")
    summary[name] = run.evaluate()
  reporting.write_json(root / "summary.json", summary)
  plots.test_errors(root, list(runs))
  reporting.say("Test errors: " + ", ".join(f"{name} {summary[name]['test_errors']}"
                                            for name in runs)
                + f". Written: {root / 'summary.json'}")


if __name__ == "__main__":
  cli.run(main, [_TEACHER, _STUDENT])
