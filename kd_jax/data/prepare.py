"""Writes a dataset as ArrayRecord shards for the grain pipeline (`data.pipeline = "grain"`).

  python -m kd_jax.data.prepare --name mnist --out DIR [--shards 4]
  python -m kd_jax.data.prepare --name mnist_pairs --out DIR

reads the dataset as training does (config.data's source: the IDX folder in $KD_JAX_MNIST_DIR or
TFDS) and writes DIR/{train,test}-NNNNN-of-MMMMM.array_record, the labels and metadata.json
(`kd_jax.data.records`). Train with `--config.data.records_dir=DIR --config.data.pipeline=grain`.
"""

from __future__ import annotations

from absl import flags

from kd_jax import cli, data, reporting
from kd_jax.data import records
from kd_jax.errors import ConfigError

_NAME = flags.DEFINE_string("name", "mnist", f"The dataset: one of {data.DATASETS}.")
_OUT = flags.DEFINE_string("out", None, "The folder to write (new, or empty; --overwrite "
                           "replaces one).")
_SHARDS = flags.DEFINE_integer("shards", 1, "ArrayRecord files per split.")
_MNIST_DIR = flags.DEFINE_string("mnist_dir", None, "The IDX folder (default: $KD_JAX_MNIST_DIR, "
                                 "else tensorflow-datasets).")
_CHECK_COUNTS = flags.DEFINE_bool("check_counts", True, "Insist on MNIST's sizes (False accepts "
                                  "smaller IDX folders, for tests).")


def main(argv):
  del argv
  if not _OUT.value:
    raise ConfigError("--out is required: the folder to write.")
  prepared = records.prepare(_NAME.value, _OUT.value, _SHARDS.value, _MNIST_DIR.value,
                             _CHECK_COUNTS.value, cli.OVERWRITE.value)
  counts = ", ".join(f"{split} {prepared.splits[split]['num_examples']}" for split in records.SPLITS)
  reporting.say(f"Wrote {prepared.name} ({counts}; images {prepared.image_shape}, "
                f"{prepared.num_classes} classes) to {prepared.path}. Train on it with "
                f"--config.data.records_dir={prepared.path} --config.data.pipeline=grain.")


if __name__ == "__main__":
  cli.run(main)
