"""Temperature versus a small student: 2x30 students distilled at ten temperatures, 3 seeds each.

The paper (section 3): with 30 units per layer, temperatures from 2.5 to 4 work clearly better
than higher or lower ones. Set --config.teacher_workdir to a teacher run (one model or a
population). All 30 members train as one population: one compilation, one pass over the data.
"""

from kd_jax import config_lib


def get_config():
  config = config_lib.add_distillation(config_lib.base_config(), temperature=4.0, alpha=0.9)
  config.model.hidden_sizes = (30, 30)
  config.num_epochs = 10
  config.members = 3
  config.sweep.temperature = (1.0, 2.0, 2.5, 3.0, 4.0, 6.0, 8.0, 12.0, 20.0, 30.0)
  return config
