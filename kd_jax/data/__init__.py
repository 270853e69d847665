"""Datasets on the host (MNIST IDX files, MNIST pairs, TFDS, prepared ArrayRecord folders) and
the memory pipeline on the device.

A config names its dataset (`config.data.name`): "mnist" (the LeCun files or TFDS), "mnist_pairs"
(100 classes 00..99, two MNIST digits side by side, see `make_pairs`) or "tfds:NAME" (any TFDS
image classification dataset, e.g. "tfds:cifar100", where TFDS can download it). The host side
reads the whole dataset once as uint8 numpy arrays. Everything per-epoch —
shuffling, batching, jitter and normalisation — is a pure JAX function of a PRNG key so it can be
traced into the compiled epoch (see `kd_jax.steps`). That is the memory pipeline
(`data.pipeline = "memory"`); `kd_jax.data.streaming` streams a prepared folder (`data.records_dir`,
`kd_jax.data.records`) through grain instead, for datasets that do not fit.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.util
import os
import pathlib
import tempfile
from typing import TYPE_CHECKING, Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from kd_jax.errors import ConfigError, DataError, one_line

if TYPE_CHECKING:  # For the annotation only; the functions import records where they use it.
  from kd_jax.data import records

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
PAIR_BASE = 10  # mnist_pairs: label = 10 * left digit + right digit.
DATASETS = ("mnist", "mnist_pairs", "tfds:NAME")
MNIST_DIR_ENV = "KD_JAX_MNIST_DIR"


# name -> (file stem, IDX magic number, number of records)
_IDX_FILES = {
    "train_images": ("train-images-idx3-ubyte", 2051, 60_000),
    "train_labels": ("train-labels-idx1-ubyte", 2049, 60_000),
    "test_images": ("t10k-images-idx3-ubyte", 2051, 10_000),
    "test_labels": ("t10k-labels-idx1-ubyte", 2049, 10_000),
}
_HOW_TO_GET = (
    f"Point {MNIST_DIR_ENV} (or config.data.mnist_dir) at a folder holding the four LeCun IDX "
    "files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
    "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]), or leave both unset to download "
    "MNIST with tensorflow-datasets (pip install 'kd_jax[tfds]')."
)


@dataclasses.dataclass(frozen=True)
class Splits:
  """Host copies of a dataset: uint8 images [N, H, W(, C)] and int32 labels [N] per split."""

  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  validation_images: np.ndarray
  validation_labels: np.ndarray
  source: str
  num_classes: int = NUM_CLASSES


# ----------------------------------------------------------------------------- host side


def is_dataset_name(name) -> bool:
  """Whether `name` is one of DATASETS: mnist, mnist_pairs or tfds:NAME."""
  return isinstance(name, str) and (name in ("mnist", "mnist_pairs") or (
      name.startswith("tfds:") and len(name) > len("tfds:")))


def read_idx(path: pathlib.Path, expected_magic: int, expected_count: int | None) -> np.ndarray:
  """Reads one (optionally gzipped) IDX file, checking its magic number, count and size."""
  try:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError) as e:
    raise DataError(f"Cannot read MNIST file {path}: {e}. {_HOW_TO_GET}") from e
  if len(raw) < 8:
    raise DataError(f"MNIST file {path} is truncated ({len(raw)} bytes).")
  magic = int.from_bytes(raw[0:4], "big")
  if magic != expected_magic:
    raise DataError(f"MNIST file {path} has magic number {magic}, expected {expected_magic}: "
                    "it is not an IDX file of the right kind.")
  ndim = magic & 0xFF
  header_size = 4 + 4 * ndim
  dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
  if expected_count is not None and dims[0] != expected_count:
    raise DataError(f"MNIST file {path} holds {dims[0]} records, expected {expected_count}.")
  if ndim == 3 and tuple(dims[1:]) != IMAGE_SHAPE:
    raise DataError(f"MNIST file {path} holds images of shape {tuple(dims[1:])}, expected "
                    f"{IMAGE_SHAPE}.")
  expected_bytes = header_size + int(np.prod(dims))
  if len(raw) != expected_bytes:
    raise DataError(f"MNIST file {path} is truncated or padded: {len(raw)} bytes, expected "
                    f"{expected_bytes}.")
  return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(dims)


def _find_idx_file(folder: pathlib.Path, stem: str) -> pathlib.Path:
  """stem.gz or stem; both is refused unless they hold the same bytes (which one would be the
  data otherwise depends on a rule the user never sees)."""
  gzipped, plain = folder / f"{stem}.gz", folder / stem
  if gzipped.exists() and plain.exists():
    try:
      same = gzip.decompress(gzipped.read_bytes()) == plain.read_bytes()
    except (OSError, EOFError):
      same = False
    if not same:
      raise DataError(f"{folder} holds both {gzipped.name} and {plain.name} with different "
                      "contents: remove the one that is not MNIST.")
  for candidate in (gzipped, plain):
    if candidate.exists():
      return candidate
  raise DataError(f"MNIST file {stem}[.gz] is missing from {folder}. {_HOW_TO_GET}")


def load_idx_folder(folder: str | os.PathLike, check_counts: bool = True) -> dict[str, np.ndarray]:
  """Reads the four LeCun files from `folder`; `check_counts=False` accepts small test folders."""
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise DataError(f"MNIST folder {folder} does not exist. {_HOW_TO_GET}")
  arrays = {}
  for name, (stem, magic, count) in _IDX_FILES.items():
    arrays[name] = read_idx(_find_idx_file(folder, stem), magic, count if check_counts else None)
  for split in ("train", "test"):
    if len(arrays[f"{split}_images"]) != len(arrays[f"{split}_labels"]):
      raise DataError(f"MNIST {split} images and labels in {folder} differ in count "
                      f"({len(arrays[f'{split}_images'])} vs {len(arrays[f'{split}_labels'])}).")
    if arrays[f"{split}_labels"].max(initial=0) >= NUM_CLASSES:
      raise DataError(f"MNIST {split} labels in {folder} hold values above 9.")
  return arrays


def _tfds_missing(error: ImportError, name: str) -> str:
  """The one-line message for a TFDS path without its extra (or with a broken install)."""
  package = {"tensorflow_datasets": "tensorflow-datasets", "tensorflow": "tensorflow",
             "importlib_resources": "importlib_resources"}.get((error.name or "").split(".")[0])
  alternative = (f", or point {MNIST_DIR_ENV} (or config.data.mnist_dir) at the four MNIST IDX "
                 "files" if name == "mnist" else f" to load tfds:{name}")
  if package is None:  # Installed, but something inside it does not import.
    return (f"tensorflow-datasets does not import ({one_line(error)}): reinstall it with pip "
            f"install 'kd_jax[tfds]'{alternative}.")
  return f"{package} is not installed: pip install 'kd_jax[tfds]'{alternative}."


def load_tfds(data_dir: str | None = None, manual_dir: str | None = None,
              name: str = "mnist") -> dict[str, np.ndarray]:
  """Loads a TFDS image classification dataset (MNIST by default) through tensorflow-datasets,
  imported here so the IDX path never needs it. Single-channel images lose their channel axis.

  With `manual_dir` (for MNIST: a folder of the four original .gz files) TFDS prepares offline.
  """
  try:  # An extra (kd_jax[tfds]). TFDS imports tensorflow only once it builds (printing a banner
    # when it is missing), so that is looked for here too, without importing it.
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    if importlib.util.find_spec("tensorflow") is None:
      raise ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")
  except ImportError as e:
    raise DataError(_tfds_missing(e, name)) from e
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    builder.download_and_prepare(download_config=download_config)
    splits = tfds.as_numpy(builder.as_dataset(split=["train", "test"], batch_size=-1))
  except Exception as e:  # pylint: disable=broad-except  # TFDS raises many kinds offline.
    raise DataError(f"tensorflow-datasets could not load {'MNIST' if name == 'mnist' else name} "
                    f"({one_line(e)}). "
                    f"{_HOW_TO_GET if name == 'mnist' else ''}") from e
  arrays = {"num_classes": builder.info.features["label"].num_classes}
  for split, examples in zip(("train", "test"), splits):
    images = examples["image"]
    arrays[f"{split}_images"] = (images[..., 0] if images.shape[-1] == 1 else images).astype(
        np.uint8)
    arrays[f"{split}_labels"] = examples["label"]
  return arrays


def resolve_mnist_dir(config_dir: str | None) -> str | None:
  """The IDX folder to read: the config field wins over the environment variable."""
  return config_dir or os.environ.get(MNIST_DIR_ENV) or None


def load_mnist(mnist_dir: str | None, validation_size: int = 0, tfds_data_dir: str | None = None,
               tfds_manual_dir: str | None = None, check_counts: bool = True,
               tfds_name: str = "mnist") -> Splits:
  """Loads MNIST (or with `tfds_name` another TFDS dataset) and carves the last `validation_size`
  training examples off as validation."""
  if mnist_dir and tfds_name == "mnist":
    arrays, source = load_idx_folder(mnist_dir, check_counts), f"idx:{mnist_dir}"
  else:
    arrays = load_tfds(tfds_data_dir, tfds_manual_dir, tfds_name)
    source = "tfds" if tfds_name == "mnist" else f"tfds:{tfds_name}"
  train_images, train_labels = arrays["train_images"], arrays["train_labels"].astype(np.int32)
  cut = train_validation_cut(len(train_images), validation_size)
  return Splits(
      train_images=train_images[:cut], train_labels=train_labels[:cut],
      validation_images=train_images[cut:], validation_labels=train_labels[cut:],
      test_images=arrays["test_images"], test_labels=arrays["test_labels"].astype(np.int32),
      source=source, num_classes=arrays.get("num_classes", NUM_CLASSES))


def make_pairs(images: np.ndarray, labels: np.ndarray, num_pairs: int,
               seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`num_pairs` two-digit examples from one pool of MNIST digits: images [N, 28, 56] (left digit
  beside right digit), labels 10 * left + right in [0, 100), and the pool indices [N, 2] used.

  Both digits are drawn uniformly (with replacement) from the pool by a generator seeded with
  `seed`, so the same pool and seed give the same pairs on every machine.
  """
  if num_pairs and not len(images):
    raise ConfigError("data.pairs asks for pairs from an empty pool of digits (for validation "
                      "pairs, set data.validation_size > 0).")
  indices = np.random.default_rng(seed).integers(0, len(images), size=(num_pairs, 2))
  pair_images = np.concatenate([images[indices[:, 0]], images[indices[:, 1]]], axis=2)
  pair_labels = (PAIR_BASE * labels[indices[:, 0]] + labels[indices[:, 1]]).astype(np.int32)
  return pair_images, pair_labels, indices


def mnist_pairs(digits: Splits, pairs_config) -> Splits:
  """The 100-class two-digit dataset: training pairs only from MNIST's training digits,
  validation pairs only from the held-out training digits, test pairs only from its test digits
  (so no MNIST image is in two splits). Each split has its own seed (pairs.seed + 0, 1, 2)."""
  made = {}
  for offset, split in enumerate(("train", "validation", "test")):
    made[split] = make_pairs(getattr(digits, f"{split}_images"),
                             getattr(digits, f"{split}_labels"),
                             pairs_config[f"num_{split}"], pairs_config.seed + offset)
  return Splits(
      train_images=made["train"][0], train_labels=made["train"][1],
      validation_images=made["validation"][0], validation_labels=made["validation"][1],
      test_images=made["test"][0], test_labels=made["test"][1],
      source=f"mnist_pairs(seed {pairs_config.seed}) of {digits.source}",
      num_classes=PAIR_BASE**2)


def select_examples(labels: np.ndarray, classes: tuple[int, ...] = (), subset_size: int = 0,
                    seed: int = 0, num_classes: int = NUM_CLASSES) -> np.ndarray:
  """Indices (sorted) of the examples whose label is in `classes` (empty: all), then, with
  `subset_size`, a class-balanced subset of that many drawn from `seed`.

  Balanced means each kept class gets subset_size // len(classes) examples, the first
  subset_size % len(classes) classes one more; a class with too few examples is an error.
  """
  kept_classes = tuple(classes) or tuple(range(num_classes))
  indices = np.flatnonzero(np.isin(labels, kept_classes))
  if not subset_size:
    return indices
  rng = np.random.default_rng(seed)
  share, extra = divmod(subset_size, len(kept_classes))
  chosen = []
  for rank, label in enumerate(kept_classes):
    of_class = indices[labels[indices] == label]
    wanted = share + (rank < extra)
    if wanted > len(of_class):
      raise DataError(f"data.train_subset={subset_size} needs {wanted} training examples of "
                      f"class {label}, but there are only {len(of_class)}.")
    chosen.append(rng.choice(of_class, size=wanted, replace=False))
  return np.sort(np.concatenate(chosen))


def open_records(data_config) -> "records.Folder":
  """The prepared folder `data.records_dir`, checked against the config's `data.name` and, once
  per process, every shard against the digests prepare recorded (`records.verify_files`)."""
  from kd_jax.data import records  # pylint: disable=g-import-not-at-top
  prepared = records.open_folder(data_config.records_dir)
  if prepared.name != data_config.name:
    raise ConfigError(f"config.data.records_dir={data_config.records_dir} holds {prepared.name}, "
                      f"not config.data.name={data_config.name}: set data.name to match.")
  records.verify_files(prepared)
  return prepared


def train_validation_cut(num_train: int, validation_size: int) -> int:
  """Where the validation split starts: the last `validation_size` training examples."""
  if not 0 <= validation_size < num_train:
    raise ConfigError(f"config.data.validation_size={validation_size} is invalid: expected an "
                      f"integer in [0, {num_train}) for this dataset.")
  return num_train - validation_size


def load_records(data_config) -> Splits:
  """A prepared ArrayRecord folder read whole (the memory pipeline)."""
  from kd_jax.data import records  # pylint: disable=g-import-not-at-top
  prepared = open_records(data_config)
  train_images, train_labels = records.load_split(prepared, "train")
  test_images, test_labels = records.load_split(prepared, "test")
  cut = train_validation_cut(len(train_images), data_config.validation_size)
  return Splits(train_images=train_images[:cut], train_labels=train_labels[:cut],
                validation_images=train_images[cut:], validation_labels=train_labels[cut:],
                test_images=test_images, test_labels=test_labels, source=prepared.source,
                num_classes=prepared.num_classes)


def load_dataset(data_config, mnist_dir: str | None = None) -> Splits:
  """The dataset config.data names, with its fields; `mnist_dir` overrides the configured folder.

  The training split (the transfer set, when distilling) keeps only `data.train_classes` and,
  with `data.train_subset`, a class-balanced subset of it; validation and test stay whole.
  """
  name = data_config.name
  if data_config.get("records_dir"):
    splits = load_records(data_config)
  else:
    tfds_name = name.removeprefix("tfds:") if name.startswith("tfds:") else "mnist"
    splits = load_mnist(mnist_dir or resolve_mnist_dir(data_config.mnist_dir),
                        data_config.validation_size, data_config.tfds_data_dir or None,
                        data_config.tfds_manual_dir or None, data_config.check_counts, tfds_name)
    if name == "mnist_pairs":
      splits = mnist_pairs(splits, data_config.pairs)
  classes = tuple(data_config.get("train_classes", ()))
  subset = data_config.get("train_subset", 0)
  if not classes and not subset:
    return splits
  kept = select_examples(splits.train_labels, classes, subset, data_config.get("subset_seed", 0),
                         splits.num_classes)
  return dataclasses.replace(splits, train_images=splits.train_images[kept],
                             train_labels=splits.train_labels[kept])


def fingerprint(splits: Splits) -> dict[str, str]:
  """sha256 (16 hex digits) of each split's images and labels, as the run used them (after any
  class filter or subset), and where they came from: recorded in a run so that resuming or
  evaluating on other data is noticed."""
  def digest(*arrays: np.ndarray) -> str:
    hasher = hashlib.sha256()
    for array in arrays:
      hasher.update(np.ascontiguousarray(array).tobytes())
    return hasher.hexdigest()[:16]

  return {"source": splits.source,
          "train": digest(splits.train_images, splits.train_labels),
          "validation": digest(splits.validation_images, splits.validation_labels),
          "test": digest(splits.test_images, splits.test_labels)}


def write_idx_folder(folder: str | os.PathLike, arrays: dict[str, np.ndarray],
                     compress: bool = True) -> None:
  """Writes arrays as LeCun IDX files (used by tests to make tiny MNIST-shaped folders)."""
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  for name, (stem, magic, _) in _IDX_FILES.items():
    data = np.ascontiguousarray(arrays[name], dtype=np.uint8)
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in data.shape)
    path = folder / (stem + (".gz" if compress else ""))
    with tempfile.NamedTemporaryFile(dir=folder, delete=False) as tmp:
      tmp.write(gzip.compress(header + data.tobytes()) if compress else header + data.tobytes())
    os.replace(tmp.name, path)


# ----------------------------------------------------------------------------- device side


def normalize(images: jax.Array) -> jax.Array:
  """Images [B, H, W(, C)] -> float32 of the same shape with MNIST's mean and std: uint8 pixels
  (as stored) are divided by 255; floats are taken to be in [0, 1] already.

  Other datasets get the same fixed affine map: the first layer absorbs any affine input scaling,
  so only the optimiser's conditioning, not the model, depends on it.
  """
  scaled = images.astype(jnp.float32)
  if images.dtype == jnp.uint8:
    scaled = scaled / 255.0
  return (scaled - MNIST_MEAN) / MNIST_STD


def jitter(key: jax.Array, images: jax.Array, max_shift: int) -> jax.Array:
  """Shifts each image [H, W(, C)] by up to `max_shift` pixels in each direction (pad with 0,
  random crop).

  This is torchvision's RandomCrop(28, padding=max_shift), as in the reference notebook. Offsets
  are drawn for the whole batch from one key, so the result does not depend on how the batch is
  sharded across devices.
  """
  chex.assert_rank(images, {3, 4})
  if max_shift == 0:
    return images
  shape = images.shape[1:]
  channels = ((0, 0),) * (images.ndim - 3)
  padded = jnp.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift)) + channels)
  offsets = jax.random.randint(key, (images.shape[0], 2), 0, 2 * max_shift + 1)
  offsets = jnp.pad(offsets, ((0, 0), (0, images.ndim - 3)))
  crop = lambda image, offset: jax.lax.dynamic_slice(image, offset, shape)
  return jax.vmap(crop)(padded, offsets)


def mixup(key: jax.Array, images: jax.Array, labels: jax.Array,
          p: float | jax.Array) -> dict[str, jax.Array]:
  """big_vision's mixup for distillation: one weight a ~ Beta(p, p) per batch, a = max(a, 1 - a),
  each image mixed with its neighbour in the batch (the next, the last with the first): a * x_i
  + (1 - a) * x_{i+1}. Returns the mixed 'image', 'mix_weight' a and 'mix_label' (the
  neighbours' labels, for the hard term's share of 1 - a). Drawn from `key` alone, so a batch's
  mixing is the same on any device layout and on resume."""
  weight = jax.random.beta(key, p, p)
  weight = jnp.maximum(weight, 1 - weight).astype(images.dtype)
  return {"image": weight * images + (1 - weight) * jnp.roll(images, -1, axis=0),
          "mix_weight": weight, "mix_label": jnp.roll(labels, -1, axis=0)}


def epoch_batch_indices(key: jax.Array, num_examples: int, batch_size: int) -> jax.Array:
  """A fresh permutation cut into [num_steps, batch_size]; the incomplete last batch is dropped.

  Every epoch draws a new permutation, so each example is dropped in only some epochs.
  """
  num_steps = num_examples // batch_size
  permutation = jax.random.permutation(key, num_examples)
  return permutation[:num_steps * batch_size].reshape(num_steps, batch_size)


def pad_for_eval(images: np.ndarray, labels: np.ndarray,
                 multiple: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Pads a split to a multiple of the eval batch; the mask marks real examples.

  Evaluation then counts every example exactly once, whatever the batch size or device count.
  """
  num_pad = -len(images) % multiple
  mask = np.concatenate([np.ones(len(images), bool), np.zeros(num_pad, bool)])
  images = np.concatenate([images, np.zeros((num_pad,) + images.shape[1:], images.dtype)])
  labels = np.concatenate([labels, np.zeros(num_pad, labels.dtype)])
  return images, labels, mask


def check_images(images: Any, image_shape: tuple[int, ...]) -> np.ndarray:
  """`images` as a host array a model takes: uint8 pixels, or floats in [0, 1] (as float32), of
  shape [B, *image_shape]; anything else is a ValueError saying what was expected."""
  images = np.asarray(images)
  if tuple(images.shape[1:]) != image_shape:
    raise ValueError(f"images of shape {images.shape}: expected [batch, "
                     f"{', '.join(map(str, image_shape))}].")
  if images.dtype == np.uint8:
    return images
  if not np.issubdtype(images.dtype, np.floating):
    raise ValueError(f"images of dtype {images.dtype}: expected uint8 pixels (0-255) or floats "
                     "in [0, 1].")
  if images.size and (not np.isfinite(images).all() or images.min() < 0 or images.max() > 1):
    raise ValueError(f"float images must lie in [0, 1] (these span {images.min():g} to "
                     f"{images.max():g}); give uint8 pixels as they are, or divide by 255.")
  return images.astype(np.float32)
