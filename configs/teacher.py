"""The paper's teacher: 784-1200-1200-10, dropout (0.2 input, 0.5 hidden), max-norm, +-2px jitter.

The paper reports 67 test errors for it (after far longer training than this default).
"""

from kd_jax import config_lib


def get_config():
  config = config_lib.base_config()
  config.num_epochs = 60
  config.model.hidden_sizes = (1200, 1200)
  config.model.input_dropout = 0.2
  config.model.hidden_dropout = 0.5
  config.model.max_norm = 4.0
  config.data.jitter = 2
  return config
