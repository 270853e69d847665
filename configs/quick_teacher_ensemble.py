"""Ten quick teachers (seeds 0..9) trained together as one population, for ensemble distillation.

Distil them into one student with configs/quick_distill.py and --config.teacher_workdir=RUN: the
targets are the average of the ten teachers' tempered probabilities (--config.teacher_ensemble=
geometric for their geometric mean). 5 epochs each, to keep the example short on a CPU.
"""

from kd_jax.configs import quick_teacher


def get_config():
  config = quick_teacher.get_config()
  config.num_epochs = 5
  config.members = 10
  return config
