"""FitNets hints (Romero et al. 2015) into a small CNN: cross-entropy plus 100 x the mean squared
error between the student's last convolution block ('block_1') projected by a learned adapter (a
1x1 convolution to the teacher's channels, trained with the student, never part of its
predictions) and the teacher's ('block_1'; mdistiller's weight), the paper's soft term off
(alpha 0). FitNets' first stage (hints alone, then distillation) is left out, as mdistiller does.

Distils from a registry CNN of any widths with two convolution blocks:
    kd_jax.distill(kd_jax.configs.get("fitnets"), "runs/fitnets", teacher="runs/cnn_teacher")
"""

from kd_jax.configs import _method_student


def get_config():
  config = _method_student.get_config()
  config.terms.fitnets.weight = 100.0
  config.terms.fitnets.student = ("block_1",)
  config.terms.fitnets.teacher = ("block_1",)
  return config
