"""Distil the registry's CNN into a BatchNorm ConvNet of your own through an intermediate feature:
FitNets hints on the output of one of your submodules, picked by its path, with the paper's soft
targets beside them, and no edit to your module.

  KD_JAX_MNIST_DIR=/path/to/mnist python examples/feature_distillation.py [WORKDIR]

The teacher is the registry CNN (two blocks of 3x3 convolution, BatchNorm, ReLU and 2x2 pooling;
it names each block's output `block_0`, `block_1`). Your student's submodule `block_b` gives a map
of the same 7x7 size; a learned 1x1 adapter takes its channels to the teacher's, and is trained
with the student but never becomes part of it. `KD_JAX_EXAMPLE_TINY=1` shrinks the schedule to
seconds (CI).
"""

import os
import sys

import flax.linen as nn
import jax

import kd_jax


class Block(nn.Module):
  """A strided 3x3 convolution, BatchNorm and ReLU: its output is the feature distilled into."""

  features: int

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = nn.Conv(self.features, (3, 3), strides=(2, 2), use_bias=False)(x)
    return nn.relu(nn.BatchNorm(use_running_average=not train)(x))


class ConvStudent(nn.Module):
  """Two blocks (28x28 -> 14x14 -> 7x7) and a linear read-out."""

  channels: int = 8

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    x = Block(self.channels, name="block_a")(images[..., None], train=train)
    x = Block(2 * self.channels, name="block_b")(x, train=train)
    return nn.Dense(10)(x.reshape((x.shape[0], -1)))


def main(workdir: str) -> None:
  tiny = bool(os.environ.get("KD_JAX_EXAMPLE_TINY"))
  epochs = {"num_epochs": 1, "data__train_subset": 1000} if tiny else {}
  widths = {"model__conv_features": (8, 16), "model__hidden_sizes": (32,)} if tiny else {
      "model__hidden_sizes": (128,)}
  teacher = kd_jax.train(kd_jax.configs.get("quick_teacher", model__name="cnn", **widths, **epochs),
                         workdir=f"{workdir}/cnn_teacher")
  config = kd_jax.configs.get("fitnets", terms__fitnets__student=("block_b",),
                              terms__fitnets__teacher=("block_1",), alpha=0.5, **epochs)
  student = kd_jax.distill(config, teacher=teacher, workdir=f"{workdir}/student",
                           model=ConvStudent())
  last = student.metrics[-1]
  print(f"{student}: {student.evaluate()['test_errors']} test errors (teacher "
        f"{teacher.evaluate()['test_errors']}); last epoch's hint loss "
        f"{last['train_fitnets_loss']:.4f}; variables: {sorted(student.variables)}")


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else "runs/feature_distillation")
