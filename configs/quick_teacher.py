"""A teacher for a laptop CPU in about two minutes: the paper's net, lighter dropout, 10 epochs."""

from kd_jax import config_lib


def get_config():
  config = config_lib.base_config()
  config.num_epochs = 10
  config.model.hidden_sizes = (1200, 1200)
  config.model.input_dropout = 0.1
  config.model.hidden_dropout = 0.3
  config.model.max_norm = 4.0
  config.data.jitter = 1
  return config
