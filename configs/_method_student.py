"""What the shipped method configs (dkd.py, dist.py) share: a small registry CNN distilled from a
CNN teacher. Not a config itself (its name starts with '_')."""

import ml_collections

from kd_jax import config_lib


def get_config(temperature: float = 4.0, alpha: float = 0.0) -> ml_collections.ConfigDict:
  """A registry CNN of half the default widths (conv 8-16, dense 64), Adam with a cosine schedule
  over 10 epochs, distilling with `alpha` of the paper's soft term at `temperature` (0: the
  method's term and the hard labels alone, as mdistiller trains DKD)."""
  config = config_lib.add_distillation(config_lib.base_config(), temperature=temperature,
                                       alpha=alpha)
  config.model.name = "cnn"
  config.model.conv_features = (8, 16)
  config.model.hidden_sizes = (64,)
  config.num_epochs = 10
  return config
