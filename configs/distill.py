"""The paper's distilled net: 784-800-800-10 matching the teacher's soft targets at T=20.

The paper reports 74 test errors. Set --config.teacher_workdir to a teacher run.
"""

from kd_jax import config_lib


def get_config():
  config = config_lib.add_distillation(config_lib.base_config(), temperature=20.0, alpha=0.9)
  config.num_epochs = 30
  return config
