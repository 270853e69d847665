"""The paper's teacher for a laptop CPU in 1.5 minutes: lighter dropout (0.1/0.3), 1px jitter,
10 epochs (paper_teacher.py otherwise)."""

import ml_collections

from kd_jax.configs import paper_teacher


def get_config() -> ml_collections.ConfigDict:
  config = paper_teacher.get_config()
  config.num_epochs = 10
  config.model.input_dropout = 0.1
  config.model.hidden_dropout = 0.3
  config.data.jitter = 1
  return config
