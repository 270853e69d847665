"""Three of configs/teacher.py's teachers (seeds 0, 1, 2) trained together as one population: the
teacher of our best recipe overall (configs/distill_jittered.py).

A student distilled from this run matches the average of the three teachers' tempered
probabilities (--config.teacher_ensemble=geometric for their geometric mean). On a 2-core CPU the
ensemble had 63 test errors (57 minutes; results/fidelity/results.json, teacher ensemble3; the
members' own errors were not kept); member 0 is configs/teacher.py's run, bit for bit.
"""

from kd_jax.configs import teacher


def get_config():
  config = teacher.get_config()
  config.members = 3
  return config
