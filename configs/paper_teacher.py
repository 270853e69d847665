"""The paper's teacher as the 2012 dropout recipe trains it: 784-1200-1200-10, ReLU, dropout 0.2
(input) / 0.5 (hidden), max-norm 4, +-2-pixel jitter, 60 epochs (Adam, cosine schedule).

The other teachers start from it: quick_teacher.py (lighter dropout, 10 epochs) and teacher.py
(lighter dropout, 100 epochs), which converge faster under Adam; the benchmark times this one.
"""

import ml_collections

from kd_jax import config_lib


def get_config() -> ml_collections.ConfigDict:
  config = config_lib.base_config()
  config.num_epochs = 60
  config.model.hidden_sizes = (1200, 1200)
  config.model.input_dropout = 0.2
  config.model.hidden_dropout = 0.5
  config.model.max_norm = 4.0
  config.data.jitter = 2
  return config
