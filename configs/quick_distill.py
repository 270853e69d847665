"""The paper's 2x800 student distilled at T=20 in 10 epochs (pairs with quick_teacher.py)."""

from kd_jax import config_lib


def get_config():
  config = config_lib.add_distillation(config_lib.base_config(), temperature=20.0, alpha=0.9)
  config.num_epochs = 10
  return config
