"""Trains a run from its config: the teacher (configs/teacher.py), a student baseline, or a
population of either; a config naming a teacher distils (it is validated as distillation).

  python -m kd_jax.train --config configs/teacher.py --workdir runs/teacher
"""

from absl import flags
from ml_collections import config_flags

from kd_jax import cli, config_lib, trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics).",
                               required=True)


def main(argv):
  del argv
  config_lib.validate(_CONFIG.value)
  trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value, cli.OVERWRITE.value)


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  cli.run(main, [_CONFIG])
