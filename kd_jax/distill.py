"""Distils a student from a trained teacher's soft targets.

  python -m kd_jax.distill --config configs/distill.py --config.teacher_workdir runs/teacher \
      --workdir runs/distilled
"""

from absl import flags
from ml_collections import config_flags

from kd_jax import cli, config_lib, trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Distillation config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of the student.", required=True)


def main(argv):
  del argv
  config_lib.validate(_CONFIG.value, require_teacher=True)
  trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value, cli.OVERWRITE.value)


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  cli.run(main, [_CONFIG])
