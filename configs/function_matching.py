"""Function matching (Beyer et al. 2022): the teacher and the student see the same jittered view,
mixed with a batch neighbour by mixup (a ~ Beta(1, 1), a = max(a, 1 - a)), and the student fits
the teacher's function alone (alpha = 1). The 2x800 student of configs/distill_jittered.py; set
--config.teacher_workdir.
"""

from kd_jax.configs import _teaching


def get_config():
  return _teaching.get_config("function_matching")
