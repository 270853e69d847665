"""Distils a student from a trained teacher's soft targets.

  python -m kd_jax.distill --config distill --config.teacher_workdir runs/teacher \
      --workdir runs/distilled
"""

from absl import flags

from kd_jax import api, cli, config_lib

_CONFIG = cli.define_config("config", None, "Distillation config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of the student.", required=True)


def main(argv):
  del argv
  config = _CONFIG.value
  config_lib.validate(config, require_teacher=True)  # Names a missing --config.teacher_workdir.
  api.distill(config, _WORKDIR.value, teacher=config.teacher_workdir,
              overwrite=cli.OVERWRITE.value)


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  cli.run(main, [_CONFIG])
