"""Writes a dataset as ArrayRecord shards for the grain pipeline (`data.pipeline = "grain"`).

    python -m kd_jax.prepare --name mnist --out DIR [--shards 4]

(or `python -m kd_jax.data.prepare`, its earlier name) reads the dataset as training does
(config.data's source: the IDX folder in $KD_JAX_MNIST_DIR, or TFDS) and writes
DIR/{train,test}-NNNNN-of-MMMMM.array_record, the labels and metadata.json
(`kd_jax.data.records`). Train with `--config.data.records_dir=DIR --config.data.pipeline=grain`.
"""

from __future__ import annotations

import pathlib

from absl import flags

from kd_jax import config_lib, data, reporting
from kd_jax.data import records
from kd_jax.errors import ConfigError


def prepare(name: str, out: str | pathlib.Path, num_shards: int = 1, mnist_dir: str | None = None,
            check_counts: bool = True, overwrite: bool = False) -> records.Folder:
  """Writes dataset `name` (all of its train split; validation is carved at training time) as a
  prepared folder and returns its description."""
  out = pathlib.Path(out)
  if num_shards < 1:
    raise ConfigError(f"--shards={num_shards}: expected a positive integer.")
  if name == "mnist_pairs":
    raise ConfigError("--name=mnist_pairs cannot be prepared: its validation pairs are drawn from "
                      "held-out digits, which a prepared folder's last training records are not.")
  # A folder of ours: prepared, or left half-written by a prepare that was killed (its marker).
  prepared_before = ((out / records.METADATA_FILE).exists()
                     or (out / records.PREPARING_MARKER).exists())
  if out.exists() and any(out.iterdir()) and not (overwrite and prepared_before):
    raise ConfigError(f"{out} is not empty: choose a new --out"
                      f"{', or pass --overwrite' if prepared_before else ''} "
                      "(--overwrite replaces only a prepared folder).")
  config = config_lib.base_config()
  config.data.name, config.data.check_counts = name, check_counts
  config_lib.check_field(config, "data.name", data.is_dataset_name,
                         f"one of {data.DATASETS} (--name)")
  splits = data.load_dataset(config.data, mnist_dir)
  out.mkdir(parents=True, exist_ok=True)
  # Until metadata.json is written the folder is marked as ours and half-written, so that
  # --overwrite replaces what a killed prepare left.
  (out / records.PREPARING_MARKER).touch()
  for stale in (out / records.METADATA_FILE, *out.glob("*.array_record"),  # Its own files only.
                *out.glob("*_labels.npy")):
    stale.unlink(missing_ok=True)
  records.write_arrays(out, name, splits.num_classes, splits.source,
                       {"train_images": splits.train_images, "train_labels": splits.train_labels,
                        "test_images": splits.test_images, "test_labels": splits.test_labels},
                       num_shards)
  (out / records.PREPARING_MARKER).unlink()
  return records.open_folder(out)


def define_flags() -> None:
  """The command's flags (defined only when it runs, so `prepare` imports without them)."""
  flags.DEFINE_string("name", "mnist", f"The dataset: one of {data.DATASETS}.")
  flags.DEFINE_string("out", None, "The folder to write (new, or empty; --overwrite replaces "
                      "one).")
  flags.DEFINE_integer("shards", 1, "ArrayRecord files per split.")
  flags.DEFINE_string("mnist_dir", None, "The IDX folder (default: $KD_JAX_MNIST_DIR, else "
                      "tensorflow-datasets).")
  flags.DEFINE_bool("check_counts", True, "Insist on MNIST's sizes (False accepts smaller IDX "
                    "folders, for tests).")


def main(argv):
  del argv
  f = flags.FLAGS
  if not f.out:
    raise ConfigError("--out is required: the folder to write.")
  prepared = prepare(f.name, f.out, f.shards, f.mnist_dir, f.check_counts, f.overwrite)
  counts = ", ".join(f"{split} {prepared.splits[split]['num_examples']}"
                     for split in records.SPLITS)
  reporting.say(f"Wrote {prepared.name} ({counts}; images {prepared.image_shape}, "
                f"{prepared.num_classes} classes) to {prepared.path}. Train on it with "
                f"--config.data.records_dir={prepared.path} --config.data.pipeline=grain.")


if __name__ == "__main__":
  from kd_jax import cli  # pylint: disable=g-import-not-at-top  # The command only.
  define_flags()
  cli.run(main)
