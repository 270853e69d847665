"""DIST (Huang et al. 2022) into a small CNN: cross-entropy plus DIST's inter- and intra-class
relations (beta 2, gamma 2, T 4: the authors' CIFAR-100 settings), the paper's soft term off
(alpha 0).

Distils from any run whose logits fit MNIST (a registry CNN of any widths, an MLP):
    kd_jax.distill(kd_jax.configs.get("dist"), "runs/dist", teacher="runs/cnn_teacher")
"""

from kd_jax.configs import _method_student


def get_config():
  config = _method_student.get_config()
  config.terms.dist.weight = 1.0
  config.terms.dist.beta = 2.0
  config.terms.dist.gamma = 2.0
  config.terms.dist.temperature = 4.0
  return config
