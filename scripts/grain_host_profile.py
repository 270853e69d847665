"""Where the grain pipeline's host time per batch goes: the reader's three parts, timed alone.

  python scripts/grain_host_profile.py --records runs/pipelines/records --out results/grain/host_profile.json

For --batches batches of 128 of a prepared MNIST folder (`python -m kd_jax.prepare`): the epoch
order (grain's index shuffle of each position), the ArrayRecord reads
(`kd_jax.data.records.Reader`) and the decoding of `kd_jax.data.streaming`'s reader, in
milliseconds per batch (means), and how the shards were written (their ArrayRecord options). On a
2-core CPU this host work runs on the cores that compute the step. (The jitter is the step's, on
the device.)
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np

from kd_jax import reporting
from kd_jax.data import records, streaming


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--records", required=True)
  parser.add_argument("--batches", type=int, default=200)
  parser.add_argument("--out", default="results/grain/host_profile.json")
  args = parser.parse_args()
  prepared = records.open_folder(args.records)
  num_train = prepared.splits["train"]["num_examples"]
  stream = streaming.TrainStream(
      paths=tuple(prepared.paths("train")), image_shape=prepared.image_shape,
      example_records=np.arange(num_train), seed=0, batch_size=128, num_epochs=1,
      process_index=0, process_count=1)
  reader = records.Reader(stream.paths)
  parts = dict.fromkeys(("order", "read", "decode"), 0.0)
  for step in range(args.batches + 1):  # The first batch warms up and is not counted.
    times = [time.perf_counter()]
    epoch, positions = stream.positions(step)
    examples = streaming.epoch_order(stream.seed, epoch, num_train, positions)
    times.append(time.perf_counter())
    raw = reader.read(stream.example_records[examples])
    times.append(time.perf_counter())
    records.decode_many(raw, stream.image_shape)
    times.append(time.perf_counter())
    if step:
      for name, start, end in zip(parts, times, times[1:]):
        parts[name] += end - start
  per_batch_ms = {name: 1e3 * seconds / args.batches for name, seconds in parts.items()}
  per_batch_ms["total"] = sum(per_batch_ms.values())
  result = {"machine": reporting.machine(), "code_version": reporting.code_version(),
            "records": str(args.records), "shards": len(stream.paths),
            "shard_options": records.writer_options(stream.paths[0]), "batch_size": 128,
            "batches": args.batches, "per_batch_ms": per_batch_ms}
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2) + "\n")
  print(json.dumps(per_batch_ms))


if __name__ == "__main__":
  main()
