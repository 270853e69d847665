"""Ten quick teachers (seeds 0..9) trained together as one population, for ensemble distillation.

Distil them into one student with configs/quick_distill.py and
--config.teacher_workdir=RUN: the targets are the average of the ten teachers' tempered
probabilities (--config.teacher_ensemble=geometric for their geometric mean).
"""

from kd_jax import config_lib


def get_config():
  config = config_lib.paper_teacher()
  config.num_epochs = 5
  config.model.input_dropout = 0.1
  config.model.hidden_dropout = 0.3
  config.data.jitter = 1
  config.members = 10
  return config
