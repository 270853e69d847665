"""The teacher configs/distill.py pairs with: 784-1200-1200-10, ReLU, +-2px jitter, max-norm 4,
dropout 0.1 (input) / 0.3 (hidden), Adam with a cosine schedule, 100 epochs.

The paper reports 67 test errors for its teacher; this config had 70 on a 2-core CPU in 17
minutes (results/fidelity). The 2012 dropout recipe's 0.2/0.5 (paper_teacher.py) with
max-norm sqrt(15) trains more slowly: 76 after the same 100 epochs.
"""

import ml_collections

from kd_jax.configs import quick_teacher


def get_config() -> ml_collections.ConfigDict:
  config = quick_teacher.get_config()
  config.num_epochs = 100
  config.data.jitter = 2
  return config
