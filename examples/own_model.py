"""Distil into a Flax module of your own: any `nn.Module` whose `__call__(images, *, train)` returns
logits can be the student (or the teacher), BatchNorm included.

  KD_JAX_MNIST_DIR=/path/to/mnist python examples/own_model.py [WORKDIR]

The module is recorded in the run (its import path and fields). Defined here, in a script run as
`__main__`, it cannot be imported again by path, so it is passed to `kd_jax.load` once more; a
module that lives in an importable package reloads by itself. `KD_JAX_EXAMPLE_TINY=1` shrinks the
schedule to seconds (CI).
"""

import os
import sys

import flax.linen as nn
import jax

import kd_jax


class ConvStudent(nn.Module):
  """Two 3x3 convolutions with BatchNorm and a linear read-out (about 20k parameters)."""

  channels: int = 16

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    x = images[..., None]  # [B, 28, 28] normalised pixels -> one channel.
    for features in (self.channels, 2 * self.channels):
      x = nn.Conv(features, (3, 3), strides=(2, 2), use_bias=False)(x)
      x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    return nn.Dense(10)(x.reshape((x.shape[0], -1)))


def main(workdir: str) -> None:
  tiny = bool(os.environ.get("KD_JAX_EXAMPLE_TINY"))
  epochs = {"num_epochs": 1} if tiny else {}
  teacher = kd_jax.train(
      kd_jax.configs.get("quick_teacher", **epochs, **({"model__hidden_sizes": (64,)} if tiny
                                                        else {})),
      workdir=f"{workdir}/teacher")
  student = kd_jax.distill(kd_jax.configs.get("quick_distill", **epochs), teacher=teacher,
                           workdir=f"{workdir}/conv_student", model=ConvStudent(channels=8))
  report = student.evaluate()
  print(f"{student}: {report['test_errors']} test errors "
        f"(teacher {teacher.evaluate()['test_errors']}); variables: {sorted(student.variables)}")
  again = kd_jax.load(f"{workdir}/conv_student", model=ConvStudent(channels=8))
  assert again.step == student.step and sorted(again.variables) == ["batch_stats", "params"]


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else "runs/own_model")
