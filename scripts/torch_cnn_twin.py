"""The registry CNN's twin in a plain PyTorch loop: the yardstick of issue 33's CNN epoch time.

  python scripts/torch_cnn_twin.py --epochs 3        # needs torch and numpy; not a kd_jax dependency

The network of `python -m kd_jax.train --config student --config.model.name=cnn
--config.model.hidden_sizes='(256,)'`: conv 16-32 3x3 (no bias), BatchNorm, ReLU, 2x2 max-pool,
dense 256, 10 logits; Adam (lr 1e-3), batch 128, 468 steps per epoch over in-memory tensors in a
fresh random order, no jitter. Prints one JSON line per epoch (seconds) and the median.
MNIST from $KD_JAX_MNIST_DIR (the IDX files), else random images of the same shape.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import pathlib
import statistics
import time

import numpy as np
import torch
from torch import nn


def images() -> tuple[np.ndarray, np.ndarray]:
  folder = os.environ.get("KD_JAX_MNIST_DIR")
  if not folder:
    return (np.random.default_rng(0).integers(0, 256, (60_000, 28, 28), np.uint8),
            np.random.default_rng(1).integers(0, 10, 60_000))
  with gzip.open(pathlib.Path(folder) / "train-images-idx3-ubyte.gz") as f:
    x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
  with gzip.open(pathlib.Path(folder) / "train-labels-idx1-ubyte.gz") as f:
    y = np.frombuffer(f.read(), np.uint8, offset=8)
  return x, y.astype(np.int64)


def network() -> nn.Module:
  layers, channels = [], 1
  for features in (16, 32):
    layers += [nn.Conv2d(channels, features, 3, padding=1, bias=False),
               nn.BatchNorm2d(features, momentum=0.1), nn.ReLU(), nn.MaxPool2d(2)]
    channels = features
  return nn.Sequential(*layers, nn.Flatten(), nn.Linear(32 * 7 * 7, 256), nn.ReLU(),
                       nn.Linear(256, 10))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--batch_size", type=int, default=128)
  args = parser.parse_args()
  x, y = images()
  x = torch.from_numpy((x.astype(np.float32) / 255.0 - 0.1307) / 0.3081).unsqueeze(1)
  y = torch.from_numpy(y)
  torch.manual_seed(0)
  model = network()
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
  loss_fn = nn.CrossEntropyLoss()
  steps = x.shape[0] // args.batch_size
  times = []
  for epoch in range(args.epochs):
    start = time.perf_counter()
    order = torch.randperm(x.shape[0])
    model.train()
    for step in range(steps):
      index = order[step * args.batch_size:(step + 1) * args.batch_size]
      optimizer.zero_grad(set_to_none=True)
      loss = loss_fn(model(x[index]), y[index])
      loss.backward()
      optimizer.step()
    times.append(time.perf_counter() - start)
    print(json.dumps({"epoch": epoch + 1, "epoch_time_s": round(times[-1], 3),
                      "loss": round(loss.item(), 4), "threads": torch.get_num_threads(),
                      "torch": torch.__version__}), flush=True)
  print(json.dumps({"median_epoch_time_s": round(statistics.median(times), 3)}))


if __name__ == "__main__":
  main()
