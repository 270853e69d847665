"""The reference notebook's student for comparison: 784-64-10, softmax-MSE at T=3, no T^2.

alpha=1 uses the soft loss only, as the notebook does; its lr and epochs are kept too.
"""

from kd_jax import config_lib


def get_config():
  config = config_lib.add_distillation(config_lib.base_config(), temperature=3.0, alpha=1.0)
  config.soft_loss = "softmax_mse"
  config.model.hidden_sizes = (64,)
  config.num_epochs = 5
  config.lr_schedule = "constant"
  config.data.jitter = 2  # The notebook's loader jitters every image it feeds.
  return config
