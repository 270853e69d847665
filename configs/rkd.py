"""Relational KD (Park et al. 2019) into a small CNN: cross-entropy plus RKD's distance (x 25)
and angle (x 50) terms between the batch's embeddings in the student's and the teacher's first
dense layer ('hidden_0', sizes free to differ), the paper's soft term off (alpha 0).

Distils from a registry CNN (or MLP) of any widths:
    kd_jax.distill(kd_jax.configs.get("rkd"), "runs/rkd", teacher="runs/cnn_teacher")
"""

from kd_jax.configs import _method_student


def get_config():
  config = _method_student.get_config()
  config.terms.rkd.weight = 1.0
  config.terms.rkd.student = ("hidden_0",)
  config.terms.rkd.teacher = ("hidden_0",)
  return config
