"""The grain pipeline (`data.pipeline = "grain"`): a prepared folder streamed batch by batch.

Each process reads only its share of every global batch, from ArrayRecord shards
(`kd_jax.data.records`) through grain: `train_batches` is a grain MapDataset whose element s is
this process's slice of global batch s of the run (all epochs end to end), decoded and, when
distilling from cached logits, joined with the teacher's rows from a file on disk (the step
jitters the images on the device, as the memory pipeline's does). The global
order is a pure function of (seed, epoch) — `epoch_order` — so 1 process with 4 devices and 2
processes with 2 each see the same global batches, and the iterator's position (grain's
`get_state()`) is all a checkpoint needs to resume mid-epoch bitwise. Reading, decoding and
batching run in grain's threads or worker processes (`data.grain_workers`), `data.prefetch`
batches ahead of the step.

Evaluation splits stream the same way (`eval_batches`: padded, with a mask of real examples).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from typing import Any, Iterator

import grain
import jax
import numpy as np

from kd_jax import parallelism
from kd_jax.data import records
from kd_jax.errors import ConfigError

def epoch_seed(seed: int, epoch: int) -> int:
  """The 32-bit seed of one epoch's permutation: a pure function of (seed, epoch)."""
  return int(np.random.SeedSequence((seed, epoch)).generate_state(1)[0])


def epoch_order(seed: int, epoch: int, num_examples: int, positions: np.ndarray) -> np.ndarray:
  """Which example (0..num_examples-1) sits at each of `positions` in epoch `epoch`'s
  permutation: grain's index shuffle (`grain.experimental.index_shuffle`, 4 rounds), O(1) memory
  whatever the dataset's size, computed for all the positions at once (`index_shuffle`)."""
  return index_shuffle(positions, num_examples - 1, epoch_seed(seed, epoch))


@functools.lru_cache(maxsize=64)
def _round_keys(seed: int, rounds: int) -> tuple[int, ...]:
  """The cipher's round keys as grain draws them: C++'s std::seed_seq{seed}.generate(rounds)."""
  mask, words = 0xFFFFFFFF, [0x8B8B8B8B] * rounds
  n, seeds = rounds, [seed & 0xFFFFFFFF]
  t = 11 if n >= 623 else 7 if n >= 68 else 5 if n >= 39 else 3 if n >= 7 else (n - 1) // 2
  p = (n - t) // 2
  q, m = p + t, max(len(seeds) + 1, n)
  scramble = lambda x: x ^ (x >> 27)
  for k in range(m):
    r1 = 1664525 * scramble(words[k % n] ^ words[(k + p) % n] ^ words[(k - 1) % n]) & mask
    r2 = r1 + (len(seeds) if k == 0 else k % n + seeds[k - 1] if k <= len(seeds) else k % n)
    words[(k + p) % n] = (words[(k + p) % n] + r1) & mask
    words[(k + q) % n] = (words[(k + q) % n] + r2) & mask
    words[k % n] = r2 & mask
  for k in range(m, m + n):
    r3 = 1566083941 * scramble((words[k % n] + words[(k + p) % n] + words[(k - 1) % n]) & mask)
    r3 &= mask
    words[(k + p) % n] ^= r3
    words[(k + q) % n] ^= (r3 - k % n) & mask
    words[k % n] = (r3 - k % n) & mask
  return tuple(words)


def index_shuffle(positions: np.ndarray, max_index: int, seed: int, rounds: int = 4) -> np.ndarray:
  """`grain.experimental.index_shuffle` of many positions at once, bit for bit (tested): a Simon
  cipher on the smallest even block of >= 16 bits that holds `max_index`, cycle-walked into
  [0, max_index]. grain's takes one index per call, 2.7 us each; a batch of 128 here takes a
  quarter of the time (measured: 0.10 against 0.37 ms)."""
  values = np.array(positions, np.uint64)
  if max_index == 0:
    return np.zeros(len(values), np.int64)
  block = math.ceil(math.log2(max_index))
  word = np.uint64(min(max(block + block % 2, 16), 64) // 2)
  mask = np.uint64((1 << int(word)) - 1)
  keys = [np.uint64(key) & mask for key in _round_keys(seed, rounds)]
  rotate = lambda x, r: ((x << np.uint64(r)) | (x >> (word - np.uint64(r)))) & mask
  mix = lambda x: (rotate(x, 1) & rotate(x, 8)) ^ rotate(x, 2)
  todo = np.arange(len(values))
  while len(todo):  # Cycle walking: encrypt again whatever lands past max_index.
    left, right = (values[todo] >> word) & mask, values[todo] & mask
    for i in range(0, rounds, 2):
      left = left ^ mix(right) ^ keys[i]
      right = right ^ mix(left) ^ keys[i + 1]
    values[todo] = (left << word) | right
    todo = todo[values[todo] > np.uint64(max_index)]
  return values.astype(np.int64)


@dataclasses.dataclass(frozen=True)
class TrainStream:
  """One stream of training batches (a run's, or one population member's)."""

  paths: tuple[str, ...]  # The train split's shards.
  image_shape: tuple[int, ...]
  example_records: np.ndarray  # Record index of each training example (after any selection).
  seed: int
  batch_size: int  # Global.
  num_epochs: int
  process_index: int
  process_count: int
  teacher_logits: str = ""  # .npy of the teacher's logits, rows keyed by record index.

  @property
  def steps_per_epoch(self) -> int:
    return len(self.example_records) // self.batch_size

  @property
  def local_batch(self) -> int:
    return self.batch_size // self.process_count

  def positions(self, step: int) -> tuple[int, np.ndarray]:
    """(epoch, positions in that epoch's order) of this process's share of global batch
    `step` (counted from the start of the run)."""
    epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
    start = step_in_epoch * self.batch_size + self.process_index * self.local_batch
    return epoch, np.arange(start, start + self.local_batch)


class _ReadTrainBatch(grain.transforms.Map):
  """Global step -> this process's share of that batch: {'image', 'label'[, 'teacher_logits']}."""

  def __init__(self, stream: TrainStream):
    self.stream = stream
    self._opened = None  # (source, teacher logits or None), set at once: threads share it.

  def map(self, step: int) -> dict[str, np.ndarray]:
    stream = self.stream
    if self._opened is None:  # Opened lazily, in the worker that reads.
      self._opened = (records.Reader(stream.paths),
                      np.load(stream.teacher_logits, mmap_mode="r")
                      if stream.teacher_logits else None)
    reader, logits = self._opened
    epoch, positions = stream.positions(int(step))
    examples = epoch_order(stream.seed, epoch, len(stream.example_records), positions)
    record_keys = stream.example_records[examples]
    images, labels = records.decode_many(reader.read(record_keys), stream.image_shape)
    batch = {"image": images, "label": labels}
    if logits is not None:
      order = np.argsort(record_keys)  # Sorted reads of the memory map, then back in order.
      rows = np.empty((len(record_keys),) + logits.shape[1:], logits.dtype)
      rows[order] = logits[record_keys[order]]
      batch["teacher_logits"] = rows
    return batch

  def __getstate__(self):  # Sent to grain's workers without open files.
    return {"stream": self.stream}

  def __setstate__(self, state):
    self.__init__(state["stream"])


def _read_options(prefetch: int) -> grain.ReadOptions:
  return grain.ReadOptions(num_threads=max(1, min(prefetch, 4)), prefetch_buffer_size=prefetch)


def _ignore_signals(worker_index: int, worker_count: int) -> None:
  """grain workers leave SIGTERM/SIGINT to the main process, which saves and stops the run (a
  scheduler or Ctrl-C signals the whole process group; a dead worker would end it with a
  traceback instead)."""
  del worker_index, worker_count
  import signal  # pylint: disable=g-import-not-at-top
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  signal.signal(signal.SIGINT, signal.SIG_IGN)


WORKER_STOP_S = 2.0  # How long closing waits for each grain worker process before killing it.


def worker_processes() -> set[int]:
  """PIDs of this process's live multiprocessing children (grain's workers among them)."""
  import multiprocessing  # pylint: disable=g-import-not-at-top
  return {child.pid for child in multiprocessing.active_children()}


def close_iterators(iterators: list[Any], started_before: set[int] | frozenset = frozenset(),
                    stop_s: float = WORKER_STOP_S) -> None:
  """Closes grain iterators without waiting long on their worker processes.

  grain's close joins each worker for up to 25 s (measured: 25-51 s in 4 of 7 runs under a
  group SIGTERM, past SLURM's 30 s KillWait, so the run was SIGKILLed instead of exiting 75); the
  workers ignore SIGTERM (`_ignore_signals`), and what they hold is a prefetch to throw away.
  Here each gets `stop_s`, then SIGKILL; children started since `started_before` that outlive
  close are killed too. Their batches come back pickled, so no shared memory is left behind.
  """
  import multiprocessing  # pylint: disable=g-import-not-at-top
  try:
    # pylint: disable-next=g-import-not-at-top
    from grain._src.python.dataset.transformations import process_prefetch
  except ImportError:  # Another grain layout: its own timeout, then the kill below.
    process_prefetch = None
  saved = getattr(process_prefetch, "_PROCESS_KILL_TIMEOUT_S", None)
  if saved is not None:
    process_prefetch._PROCESS_KILL_TIMEOUT_S = stop_s  # pylint: disable=protected-access
  try:
    for iterator in iterators:
      iterator.close()
  finally:
    if saved is not None:
      process_prefetch._PROCESS_KILL_TIMEOUT_S = saved  # pylint: disable=protected-access
    for child in multiprocessing.active_children():
      if child.pid not in started_before:
        child.kill()
        child.join(stop_s)


def check_grain_workers(workers: int) -> None:
  """grain's worker processes read absl flags; a library call (a notebook) has not parsed them."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if workers and not flags.FLAGS.is_parsed():
    raise ConfigError(f"config.data.grain_workers={workers} starts grain worker processes, which "
                      "read absl flags that this process has not parsed: call "
                      "absl.flags.FLAGS.mark_as_parsed() first, or use data.grain_workers=0 "
                      "(threads).")


def train_batches(stream: TrainStream, workers: int = 0,
                  prefetch: int = 2) -> grain.IterDataset:
  """The run's batches for this process, every epoch in turn; iterate it, save its iterator's
  `get_state()` with a checkpoint, and `set_state` it on resume."""
  check_grain_workers(workers)
  num_steps = stream.num_epochs * stream.steps_per_epoch
  dataset = grain.MapDataset.range(num_steps).map(_ReadTrainBatch(stream)).to_iter_dataset(
      _read_options(prefetch))
  if workers:
    # Batches come back pickled, not in grain's shared memory, whose deferred unlinking leaves
    # segments for Python's resource tracker to report at exit (after the one-line messages).
    dataset = grain.experimental.WithOptionsIterDataset(
        dataset, grain.experimental.DatasetOptions(min_shm_size=2**62))
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=prefetch), worker_init_fn=_ignore_signals)
  return dataset


@dataclasses.dataclass(frozen=True, eq=False)
class StreamedSplit:
  """An evaluation split streamed from shards: the records `record_keys` of them, in order."""

  paths: tuple[str, ...]
  image_shape: tuple[int, ...]
  record_keys: np.ndarray
  batch_size: int  # Global evaluation batch.

  @classmethod
  def of(cls, prepared: records.Folder, split: str, batch_size: int,
         record_keys: np.ndarray | None = None) -> StreamedSplit:
    """Split `split` of a prepared folder: all its records, or `record_keys` of them."""
    if record_keys is None:
      record_keys = np.arange(prepared.splits[split]["num_examples"])
    return cls(tuple(prepared.paths(split)), prepared.image_shape, record_keys, batch_size)

  @property
  def num_examples(self) -> int:
    return len(self.record_keys)

  @property
  def num_batches(self) -> int:
    return -(-self.num_examples // self.batch_size)

  def rows(self, batch: int, process_index: int, process_count: int) -> np.ndarray:
    """Rows of the split in this process's share of eval batch `batch` (some past the end)."""
    local = self.batch_size // process_count
    return batch * self.batch_size + process_index * local + np.arange(local)


class _ReadEvalBatch(grain.transforms.Map):
  """Batch index -> this process's share, padded: {'image', 'label', 'mask'}."""

  def __init__(self, split: StreamedSplit, process_index: int, process_count: int):
    self.split, self.process_index, self.process_count = split, process_index, process_count
    self._reader = None

  def map(self, batch: int) -> dict[str, np.ndarray]:
    split = self.split
    if self._reader is None:
      self._reader = records.Reader(split.paths)
    rows = split.rows(int(batch), self.process_index, self.process_count)
    mask = rows < split.num_examples
    images = np.zeros((len(rows),) + split.image_shape, np.uint8)
    labels = np.zeros(len(rows), np.int32)
    if mask.any():
      images[mask], labels[mask] = records.decode_many(
          self._reader.read(split.record_keys[rows[mask]]), split.image_shape)
    return {"image": images, "label": labels, "mask": mask}

  def __getstate__(self):
    return {"split": self.split, "process_index": self.process_index,
            "process_count": self.process_count}

  def __setstate__(self, state):
    self.__init__(**state)


def eval_batches(split: StreamedSplit, prefetch: int = 2) -> Iterator[dict[str, np.ndarray]]:
  """A split's batches in order, this process's share of each (the last padded, masked)."""
  read = _ReadEvalBatch(split, jax.process_index(), jax.process_count())
  iterator = iter(grain.MapDataset.range(split.num_batches).map(read).to_iter_dataset(
      _read_options(prefetch)))
  try:
    yield from iterator
  finally:
    iterator.close()


def put_batch(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh,
              leading_axes: int = 0) -> dict[str, jax.Array]:
  """This process's share of a batch -> global arrays sharded over the mesh's `data` axis (the
  batch axis, after `leading_axes` others: members, steps of a chunk)."""
  sharding = parallelism.batch_sharded(mesh, leading_axes)
  return {name: jax.make_array_from_process_local_data(sharding, array)
          for name, array in batch.items()}


def _stacked(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {name: np.stack([batch[name] for batch in batches]) for name in batches[0]}


def next_batches(iterators: list[Iterator[dict[str, np.ndarray]]], mesh: jax.sharding.Mesh,
                 shared: bool, steps: int) -> dict[str, jax.Array]:
  """The next `steps` global batches on device, stacked [steps, ...]: one stream's [steps, B,
  ...], or the member streams' [steps, P, B, ...]. StopIteration once a stream ends."""
  def host_batch():
    batches = [next(iterator) for iterator in iterators]
    return batches[0] if shared else _stacked(batches)
  return put_batch(_stacked([host_batch() for _ in range(steps)]), mesh, 1 if shared else 2)


def stream_logits(split: StreamedSplit, logits_fn, mesh: jax.sharding.Mesh,
                  prefetch: int = 2) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(record keys, logits) of each batch of `split`: `logits_fn(uint8 images [B, ...])` gives
  replicated logits [B, ...] of the global batch, whose padding rows are dropped here."""
  for batch_index, batch in enumerate(eval_batches(split, prefetch)):
    logits = np.asarray(jax.device_get(logits_fn(put_batch({"image": batch["image"]},
                                                           mesh)["image"])))
    rows = np.arange(batch_index * split.batch_size,
                     min((batch_index + 1) * split.batch_size, split.num_examples))
    yield split.record_keys[rows], logits[:len(rows)]


def fingerprint(prepared: records.Folder, train_records: np.ndarray,
                validation_size: int) -> dict[str, str]:
  """What a streamed run reads (its data.json): the shards' digests, from metadata.json, and
  which training records it chose (the memory pipeline hashes the arrays themselves)."""
  chosen = hashlib.sha256(np.ascontiguousarray(train_records, np.int64).tobytes()).hexdigest()
  train_digest = prepared.splits["train"]["digest"]
  return {"source": prepared.source, "train": f"{train_digest}:{chosen[:16]}",
          "validation": f"{train_digest}:last {validation_size}",
          "test": prepared.splits["test"]["digest"]}


def check_mesh(mesh: jax.sharding.Mesh) -> None:
  """Process p reads rows p·B/n … of each global batch, where its devices must sit: the mesh's
  devices grouped by process, in process order, as many on each (`parallelism.make_mesh`)."""
  owners = [device.process_index for device in mesh.devices.flat]
  counts = {owner: owners.count(owner) for owner in owners}
  if owners != sorted(owners) or len(set(counts.values())) != 1:
    raise ConfigError("data.pipeline='grain' needs the mesh's devices grouped by process, in "
                      f"process order, as many on each (got processes {owners}).")
