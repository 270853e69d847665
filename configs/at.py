"""Attention transfer (Zagoruyko & Komodakis 2017) into a small CNN: cross-entropy plus 1000 x
the mean squared difference of the student's and the teacher's attention maps after each
convolution block (the registry CNN's features 'block_0' and 'block_1'; mdistiller's weight),
the paper's soft term off (alpha 0).

Distils from a registry CNN of any widths with two convolution blocks (the maps compare the
blocks' spatial positions, 14x14 and 7x7 on MNIST; channels may differ):
    kd_jax.distill(kd_jax.configs.get("at"), "runs/at", teacher="runs/cnn_teacher")
"""

from kd_jax.configs import _method_student


def get_config():
  config = _method_student.get_config()
  config.terms.at.weight = 1000.0
  config.terms.at.student = ("block_0", "block_1")
  config.terms.at.teacher = ("block_0", "block_1")
  return config
