"""The teacher sees exactly the student's view of each image (the same jitter):
configs/distill_jittered.py by its teaching mode's name (Beyer et al. 2022's "consistent
teaching"). The 2x800 student of configs/distill_jittered.py; set --config.teacher_workdir.
"""

from kd_jax.configs import _teaching


def get_config():
  return _teaching.get_config("consistent")
