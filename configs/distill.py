"""The paper's distilled net: 784-800-800-10 matching the teacher's soft targets at T = 20
(alpha = 0.9: the hard labels keep a tenth of the weight), on the un-jittered training set, Adam
with a cosine schedule, 40 epochs. The best recipe we measured that keeps the paper's protocol.

The paper reports 74 test errors. Set --config.teacher_workdir to a run of configs/teacher.py:
with its 70-error teacher this config had 97.0 +- 4.6 test errors over 3 seeds on a 2-core CPU
(results/fidelity, cell paper); in the short-schedule ablation (results/fidelity/cpu) no
T x alpha point, constant rate, SGD-momentum or longer schedule did better beyond one sd.
configs/distill_jittered.py departs from the protocol and does better.
"""

from kd_jax import config_lib


def get_config():
  config = config_lib.add_distillation(config_lib.base_config(), temperature=20.0, alpha=0.9)
  config.num_epochs = 40
  return config
