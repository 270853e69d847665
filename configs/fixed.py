"""The teacher's logits computed once on the un-jittered images while the student sees jittered
views (Beyer et al. 2022's "fixed teacher"; the paper's protocol caches them too, with an un-
jittered student). The 2x800 student of configs/distill_jittered.py; set
--config.teacher_workdir.
"""

from kd_jax.configs import _teaching


def get_config():
  return _teaching.get_config("fixed")
