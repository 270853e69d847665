"""The best distillation recipe we measured overall, DEPARTING FROM THE PAPER: the 2x800 student
on a jittered transfer set (+-2 px, the teacher's own augmentation), the teacher relabelling every
jittered view inside the step (T = 20, alpha = 0.9, Adam with a cosine schedule, 200 epochs).

The paper's transfer set "does not contain any translations" (configs/distill.py keeps that).
Pairs with configs/teacher.py. Measured on a 2-core CPU, teacher 70 errors (results/fidelity,
cell jittered_relabelled_longest): 77.7 +- 4.2 test errors over 3 seeds (79.0 +- 4.6 in 80 epochs,
at 40% of the cost; 86.0 +- 4.4 in 40), against 97.0 +- 4.6 without jitter and 91.3 +- 3.2 for
the student alone on jittered data (both 40 epochs). The paper's 74 was not reached here; past 80
epochs the teacher, not the schedule, bounds the student (results/fidelity/RESULTS.md).
"""

from kd_jax import config_lib


def get_config():
  config = config_lib.add_distillation(config_lib.base_config(), temperature=20.0, alpha=0.9)
  config.num_epochs = 200
  config.data.jitter = 2
  return config
