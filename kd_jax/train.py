"""Trains a run from its config: the teacher (configs/teacher.py), a student baseline, or a
population of either; a config naming a teacher distils (it is validated as distillation).

  python -m kd_jax.train --config teacher --workdir runs/teacher
"""

from absl import flags

from kd_jax import api, cli

_CONFIG = cli.define_config("config", None, "Training config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics).",
                               required=True)


def main(argv):
  del argv
  api.train(_CONFIG.value, _WORKDIR.value, overwrite=cli.OVERWRITE.value)


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  cli.run(main, [_CONFIG])
