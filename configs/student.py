"""The paper's small net trained alone: 784-800-800-10, no regularisation, hard labels.

The paper reports 146 test errors for it.
"""

from kd_jax import config_lib


def get_config():
  config = config_lib.base_config()
  config.num_epochs = 30
  return config
