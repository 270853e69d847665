"""The teacher sees another jitter of the same image than the student (Beyer et al. 2022's
"independent noise"). The 2x800 student of configs/distill_jittered.py; set
--config.teacher_workdir.
"""

from kd_jax.configs import _teaching


def get_config():
  return _teaching.get_config("independent")
