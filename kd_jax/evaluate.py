"""Restores a run's checkpoint (latest or --step) on this machine's devices and scores the test set.

  python -m kd_jax.evaluate --workdir runs/distilled

Prints the result and writes RUN/eval.json; for a population, every member and their ensemble.
"""

from absl import flags

from kd_jax import cli, data, evaluation, losses

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory to evaluate.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_MNIST_DIR = flags.DEFINE_string("mnist_dir", None, "IDX folder (default: the run's config, "
                                 f"then ${data.MNIST_DIR_ENV}, then tensorflow-datasets).")
_ENSEMBLE = flags.DEFINE_enum("ensemble", "arithmetic", losses.ENSEMBLE_MEANS,
                              "A population's ensemble: the arithmetic mean of its members' "
                              "probabilities, or their (normalised) geometric mean.")


def main(argv):
  del argv
  evaluation.evaluate_checkpoint(_WORKDIR.value, _STEP.value, _MNIST_DIR.value,
                                 _ENSEMBLE.value)


if __name__ == "__main__":
  cli.run(main)
