"""What the teaching-mode configs (consistent.py, fixed.py, independent.py, function_matching.py)
share: configs/distill_jittered.py's 2x800 student on +-2-pixel jittered views, its teacher's view
set by `teaching`. Not a config itself (its name starts with '_')."""

import ml_collections

from kd_jax.configs import distill_jittered


def get_config(teaching: str) -> ml_collections.ConfigDict:
  """The jittered recipe (T = 20, alpha = 0.9, Adam with a cosine schedule, 80 epochs) taught in
  mode `teaching` (function matching: alpha 1, the student fits the teacher's function alone, as
  Beyer et al. 2022 train it)."""
  config = distill_jittered.get_config()
  config.teaching = teaching
  if teaching == "function_matching":
    config.alpha = 1.0
  return config
