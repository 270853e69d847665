"""Decoupled KD (Zhao et al. 2022) into a small CNN: cross-entropy plus DKD's target-class and
non-target parts (alpha 1, beta 8, T 4: mdistiller's CIFAR-100 settings), the paper's soft term
off (alpha 0). mdistiller ramps DKD in over 20 of 240 epochs; here over 1 of 10.

Distils from any run whose logits fit MNIST (a registry CNN of any widths, an MLP):
    kd_jax.distill(kd_jax.configs.get("dkd"), "runs/dkd", teacher="runs/cnn_teacher")
"""

from kd_jax.configs import _method_student


def get_config():
  config = _method_student.get_config()
  config.terms.dkd.weight = 1.0
  config.terms.dkd.warmup_epochs = 1
  return config
