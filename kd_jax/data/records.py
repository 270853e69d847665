"""Datasets as ArrayRecord shards: the one owner of that format (write, describe, read).

A prepared folder (`python -m kd_jax.prepare`) holds, per split (train, test):
SPLIT-NNNNN-of-MMMMM.array_record shards, one record per example (the label as 4 little-endian
bytes, then the image's uint8 pixels), and SPLIT_labels.npy (every label, 4 bytes each, so class
filters and subsets are chosen without reading images); metadata.json names the dataset, its image
shape, classes, counts, a digest of each split's records and, per shard, its size and sha256
(`files`). `verify_files` (which `kd_jax.data.open_records` calls) checks every shard and labels
file against those once per process, so a changed, swapped or truncated shard is a one-line DataError naming it before a run
reads it (folders prepared before the per-file digests open with a notice, unverified). The
streaming pipeline (`kd_jax.data.streaming`) reads records batch by batch; `load_split` reads a
split whole for the memory pipeline.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import pathlib
import threading
from typing import Any, Iterable, Iterator

import numpy as np

from kd_jax import reporting
from kd_jax.errors import DataError

METADATA_FILE = "metadata.json"
PREPARING_MARKER = ".preparing"  # In a folder that `prepare` is writing (or was killed writing).
SPLITS = ("train", "test")
_LABEL_BYTES = 4
_CHUNK = 1 << 22  # Bytes hashed at a time.
# Files already verified in this process, with the (size, mtime_ns) they had: a run opens its
# folder several times (inputs, evaluation, a teacher's cache) and checks each file once; and the
# folders without digests whose notice was shown.
_verified: dict[str, tuple[int, int]] = {}
_unverifiable: set[str] = set()


def shard_paths(folder: str | os.PathLike, split: str, num_shards: int) -> list[pathlib.Path]:
  return [pathlib.Path(folder) / f"{split}-{i:05d}-of-{num_shards:05d}.array_record"
          for i in range(num_shards)]


def encode(image: np.ndarray, label: int) -> bytes:
  return int(label).to_bytes(_LABEL_BYTES, "little", signed=True) + np.ascontiguousarray(
      image, np.uint8).tobytes()


def decode_many(raw: list[bytes], image_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
  """The inverse of `encode` for many records at once: uint8 images [B, ...], int32 labels [B]."""
  labels = np.frombuffer(b"".join(r[:_LABEL_BYTES] for r in raw), "<i4").astype(np.int32)
  images = np.frombuffer(b"".join(r[_LABEL_BYTES:] for r in raw), np.uint8)
  return images.reshape((len(raw),) + tuple(image_shape)), labels


def write_split(folder: str | os.PathLike, split: str, examples: Iterable[tuple[np.ndarray, int]],
                num_examples: int, num_shards: int = 1) -> dict[str, Any]:
  """Writes `examples` (image, label), streamed, into `num_shards` shards of consecutive
  examples and the split's labels; returns its metadata entry (count, shards, shape, digest).
  Never holds more than one example."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  labels = np.lib.format.open_memmap(folder / f"{split}_labels.npy", "w+", np.int32,
                                     (num_examples,))
  hasher, shape, count, examples = hashlib.sha256(), None, 0, iter(examples)
  bounds = [round(shard * num_examples / num_shards) for shard in range(num_shards + 1)]
  for path, first, end in zip(shard_paths(folder, split, num_shards), bounds, bounds[1:]):
    # One record per chunk, uncompressed: random reads of single records (the streaming
    # pipeline's) took 0.29-0.34 ms per MNIST batch of 128, of zstd chunks (ArrayRecord's
    # default) 0.52-0.94 ms (2-core Intel Xeon).
    writer = array_record_module.ArrayRecordWriter(str(path), "group_size:1,uncompressed")
    try:
      for image, label in itertools.islice(examples, end - first):
        record = encode(image, label)
        shape = shape or tuple(np.shape(image))
        hasher.update(record)
        writer.write(record)
        labels[count] = label
        count += 1
    finally:
      writer.close()
  if count != num_examples or next(examples, None) is not None:
    raise DataError(f"{split}: {'more' if count == num_examples else count} examples given, "
                    f"{num_examples} announced.")
  labels.flush()
  del labels
  files = {path.name: file_digest(path) for path in (*shard_paths(folder, split, num_shards),
                                                     folder / f"{split}_labels.npy")}
  return {"num_examples": num_examples, "num_shards": num_shards,
          "image_shape": list(shape or ()), "digest": hasher.hexdigest()[:16], "files": files}


def file_digest(path: str | os.PathLike) -> dict[str, Any]:
  """{'bytes': size, 'sha256': hex digest} of a file, read in chunks."""
  hasher = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK):
      hasher.update(chunk)
  return {"bytes": os.path.getsize(path), "sha256": hasher.hexdigest()}


def write_metadata(folder: str | os.PathLike, name: str, num_classes: int, source: str,
                   splits: dict[str, dict[str, Any]]) -> None:
  shapes = {tuple(s["image_shape"]) for s in splits.values() if s["num_examples"]}
  if len(shapes) != 1:
    raise DataError(f"The splits hold images of different shapes: {sorted(shapes)}.")
  metadata = {"name": name, "source": source, "num_classes": num_classes,
              "image_shape": list(shapes.pop()), "splits": splits}
  (pathlib.Path(folder) / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")


def write_arrays(folder: str | os.PathLike, name: str, num_classes: int, source: str,
                 arrays: dict[str, np.ndarray], num_shards: int = 1) -> None:
  """A folder from in-memory splits {'train_images', 'train_labels', 'test_images', ...}."""
  splits = {split: write_split(folder, split, zip(arrays[f"{split}_images"],
                                                  arrays[f"{split}_labels"]),
                               len(arrays[f"{split}_labels"]), num_shards)
            for split in SPLITS}
  write_metadata(folder, name, num_classes, source, splits)


@dataclasses.dataclass(frozen=True)
class Folder:
  """A prepared folder's description: what the pipelines need before reading any image."""

  path: pathlib.Path
  name: str
  num_classes: int
  image_shape: tuple[int, ...]
  splits: dict[str, dict[str, Any]]

  def paths(self, split: str) -> list[str]:
    return [str(p) for p in shard_paths(self.path, split, self.splits[split]["num_shards"])]

  def labels(self, split: str) -> np.ndarray:
    return np.load(self.path / f"{split}_labels.npy", mmap_mode="r")

  @property
  def source(self) -> str:
    return f"records:{self.path}"


def open_folder(folder: str | os.PathLike) -> Folder:
  """Reads metadata.json, checking the shards it names exist; a one-line DataError otherwise."""
  path = pathlib.Path(folder)
  try:
    metadata = json.loads((path / METADATA_FILE).read_text())
    prepared = Folder(path, metadata["name"], metadata["num_classes"],
                      tuple(metadata["image_shape"]), metadata["splits"])
    for split in SPLITS:
      prepared.splits[split]["num_examples"]  # pylint: disable=pointless-statement
  except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
    raise DataError(f"{path} is not a dataset prepared by kd_jax.data.prepare (its "
                    f"{METADATA_FILE} could not be read: {type(e).__name__}: {e}).") from e
  for split in SPLITS:
    missing = [p for p in (*prepared.paths(split), path / f"{split}_labels.npy")
               if not os.path.exists(p)]
    if missing:
      raise DataError(f"{path} is incomplete: {missing[0]} is missing.")
  return prepared


def verify_files(prepared: Folder) -> None:
  """Checks every shard and labels file against the size and sha256 that prepare recorded in
  metadata.json, once per process per file (again if its size or mtime changes): a changed,
  swapped, truncated or bit-flipped file is a DataError naming it. A folder prepared before
  these digests (none recorded) opens with a one-line notice, unverified."""
  unrecorded = [split for split in SPLITS if "files" not in prepared.splits[split]]
  if unrecorded:
    if str(prepared.path) not in _unverifiable:
      _unverifiable.add(str(prepared.path))
      reporting.say(f"Note: {prepared.path} was prepared before kd_jax recorded each shard's "
                    "sha256, so its shards are not verified; prepare it again (--overwrite) to "
                    "verify them.")
    return
  for split in SPLITS:
    for name, recorded in prepared.splits[split]["files"].items():
      path = prepared.path / name
      stat = path.stat()
      key, seen = str(path.absolute()), (stat.st_size, stat.st_mtime_ns)
      if _verified.get(key) == seen:
        continue
      if stat.st_size != recorded["bytes"]:
        raise DataError(f"{path} holds {stat.st_size} bytes, not the {recorded['bytes']} that "
                        f"prepare wrote (see {prepared.path / METADATA_FILE}): the file was "
                        "changed, truncated or replaced. Prepare the folder again.")
      if file_digest(path)["sha256"] != recorded["sha256"]:
        raise DataError(f"{path} does not match the sha256 that prepare recorded in "
                        f"{prepared.path / METADATA_FILE}: the file was changed, corrupted or "
                        "replaced by another preparation's. Prepare the folder again.")
      _verified[key] = seen


def read_batches(prepared: Folder, split: str,
                 batch: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """A split's examples in order, `batch` records at a time: (images [b, ...], labels [b])."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  for path in prepared.paths(split):
    reader = array_record_module.ArrayRecordReader(path)
    try:
      for first in range(0, reader.num_records(), batch):
        yield decode_many(reader.read(list(range(first, min(first + batch,
                                                            reader.num_records())))),
                          prepared.image_shape)
    finally:
      reader.close()


class Reader:
  """Random access to records by their index in a split (its shards end to end), for the
  streaming pipeline: each record is sought and read in the calling thread, without read-ahead,
  through readers of that thread's own (a reader's position is its state). ArrayRecord's batched
  read(indices) hands the records to its thread pool, which on a 2-core CPU takes the cores the
  step computes on: measured on a 2-core Intel Xeon, 128 random MNIST records of one shard took
  0.73 ms of CPU that way (0.42 ms wall), 0.21 ms sought one by one; grain's
  ArrayRecordDataSource, 5.55-7.03 ms per batch of 4 shards on an AMD EPYC. The shards open on
  a thread's first read."""

  def __init__(self, paths: Iterable[str]):
    self.paths = tuple(paths)
    self._local = threading.local()

  def _open(self) -> tuple[list[Any], np.ndarray]:
    opened = getattr(self._local, "opened", None)
    if opened is None:
      from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
      readers = [array_record_module.ArrayRecordReader(path, "readahead_buffer_size:0,"
                                                       "max_parallelism:0")
                 for path in self.paths]
      opened = self._local.opened = (readers, np.cumsum([0] + [reader.num_records()
                                                               for reader in readers]))
    return opened

  def read(self, keys: np.ndarray) -> list[bytes]:
    """The records at `keys` (indices into the split), in the order given."""
    readers, starts = self._open()
    keys = np.asarray(keys, np.int64)
    if len(keys) and (keys.min() < 0 or keys.max() >= starts[-1]):
      raise IndexError(f"record keys must lie in [0, {starts[-1]}): got {keys.min()} to "
                       f"{keys.max()}")
    shards = np.searchsorted(starts, keys, "right") - 1
    raw = []
    for shard, index in zip(shards.tolist(), (keys - starts[shards]).tolist()):
      reader = readers[shard]
      reader.seek(index)
      raw.append(reader.read())
    return raw


def writer_options(path: str | os.PathLike) -> str:
  """The options a shard was written with (ArrayRecord's own record of them): chunking and
  compression."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  reader = array_record_module.ArrayRecordReader(str(path))
  try:
    return reader.writer_options_string()
  finally:
    reader.close()


def load_split(prepared: Folder, split: str) -> tuple[np.ndarray, np.ndarray]:
  """A whole split in memory (the memory pipeline): uint8 images [N, ...] and int32 labels."""
  count = prepared.splits[split]["num_examples"]
  images, filled = np.empty((count,) + prepared.image_shape, np.uint8), 0
  for batch_images, _ in read_batches(prepared, split):
    images[filled:filled + len(batch_images)] = batch_images
    filled += len(batch_images)
  return images, np.asarray(prepared.labels(split), np.int32)
