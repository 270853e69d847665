"""The paper's distilled net: 784-800-800-10 matching the teacher's soft targets at T = 20
(alpha = 0.9: the hard labels keep a tenth of the weight), on the un-jittered training set, Adam
with a cosine schedule, 40 epochs. The best recipe we measured that keeps the paper's transfer set.

The paper reports 74 test errors from a 67-error teacher. Set --config.teacher_workdir to a run of
configs/teacher_ensemble.py (three teachers, 63 errors together): 81.3 +- 3.8 test errors over 3
seeds on a 2-core CPU (results/fidelity, cell paper_ensemble; 80 epochs gave 82.3 +- 4.0), or of
configs/teacher.py (one 70-error teacher, as in the paper): 97.0 +- 4.6 (cell paper). In the
short-schedule ablation (results/fidelity/cpu) no T x alpha point, constant rate, SGD-momentum or
longer schedule did better beyond one sd. What keeps it above 80 is the un-jittered transfer set:
configs/distill_jittered.py departs from the paper there and reaches 71.7 +- 2.1.
"""

from kd_jax import config_lib


def get_config():
  config = config_lib.add_distillation(config_lib.base_config(), temperature=20.0, alpha=0.9)
  config.num_epochs = 40
  return config
