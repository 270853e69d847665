"""Times one training epoch of a config against the bare matrix products the epoch must do.

  python scripts/benchmark_epoch.py --config configs/teacher.py --out runs/bench.json

The floor is a compiled lax.scan over the same number of steps doing only the 3 forward and
5 backward matmuls per step of the MLP (no dropout, jitter, softmax, Adam or max-norm). Both use
the same device(s) and dtype; the ratio says how much the rest of the step costs on top. Random
inputs for the floor; real MNIST (KD_JAX_MNIST_DIR) or a synthetic set of the same size for the
epoch.
"""

from __future__ import annotations

import functools
import json
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from kd_jax import data, models, parallelism, steps

_CONFIG = config_flags.DEFINE_config_file("config", "configs/teacher.py", "Training config.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed epochs (after one compile + warm-up).")
_OUT = flags.DEFINE_string("out", None, "Also write the results as JSON here.")
_SYNTHETIC = flags.DEFINE_bool("synthetic", False, "Use random images instead of MNIST.")


def bare_matmul_epoch(layer_sizes: list[int], batch_size: int, num_steps: int):
  """A compiled epoch of only the MLP's forward and backward matmuls, and its arguments."""
  keys = jax.random.split(jax.random.PRNGKey(0), len(layer_sizes))
  weights = [jax.random.normal(k, (m, n)) * 0.01
             for k, m, n in zip(keys, layer_sizes[:-1], layer_sizes[1:])]
  x = jax.random.normal(keys[-1], (batch_size, layer_sizes[0]))

  def step(carry, _):
    x, weights = carry
    activations = [x]
    for w in weights:  # Forward: one matmul per layer.
      activations.append(activations[-1] @ w)
    grad = activations[-1]
    new_weights = []
    # Backward: dW for every layer, dx for all but the first.
    for i in reversed(range(len(weights))):
      new_weights.append(weights[i] - 1e-6 * (activations[i].T @ grad))
      if i:
        grad = grad @ weights[i].T
    return (x, new_weights[::-1]), None

  epoch = jax.jit(lambda x, w: jax.lax.scan(step, (x, w), None, length=num_steps)[0])
  return epoch, (x, weights)


def time_call(fn, args, repeats: int) -> list[float]:
  jax.block_until_ready(fn(*args))  # Compile and warm up.
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return times


def main(argv):
  del argv
  config = _CONFIG.value
  mesh = parallelism.make_mesh()
  if _SYNTHETIC.value:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60_000, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 60_000).astype(np.int32)
  else:
    splits = data.load_mnist_from_config(config.data)
    images, labels = splits.train_images, splits.train_labels
  steps_per_epoch = len(images) // config.batch_size

  model = models.model_from_config(config.model)
  optimizer = steps.make_optimizer(config, steps_per_epoch)
  step_fn = functools.partial(steps.train_step, model=model, optimizer=optimizer,
                              max_norm=config.model.max_norm)
  epoch_fn = jax.jit(functools.partial(
      steps.train_epoch, step_fn=step_fn, batch_size=config.batch_size,
      max_shift=config.data.jitter, batch_sharding=parallelism.batch_sharded(mesh)),
      out_shardings=parallelism.replicated(mesh))
  state = jax.device_put(steps.create_train_state(jax.random.PRNGKey(0), model,
                                                  optimizer(config.learning_rate)),
                         parallelism.replicated(mesh))
  train_data = {"image": parallelism.put_replicated(images, mesh),
                "label": parallelism.put_replicated(labels, mesh)}
  hparams = {"learning_rate": jnp.float32(config.learning_rate)}
  epoch_times = time_call(lambda s: epoch_fn(s, train_data, hparams, None, jnp.int32(0)),
                          (state,), _REPEATS.value)

  sizes = [784, *config.model.hidden_sizes, data.NUM_CLASSES]
  bare_fn, bare_args = bare_matmul_epoch(sizes, config.batch_size, steps_per_epoch)
  bare_times = time_call(bare_fn, bare_args, _REPEATS.value)

  flops = 2 * config.batch_size * steps_per_epoch * sum(
      m * n * (3 if i else 2) for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:])))
  epoch_s, bare_s = statistics.median(epoch_times), statistics.median(bare_times)
  result = {"device": str(jax.devices()[0].device_kind), "num_devices": mesh.size,
            "jax": jax.__version__, "model": models.describe(config.model),
            "batch_size": config.batch_size, "steps_per_epoch": steps_per_epoch,
            "epoch_s": epoch_s, "bare_matmuls_s": bare_s, "ratio": epoch_s / bare_s,
            "matmul_gflop_per_epoch": flops / 1e9, "epoch_gflops": flops / epoch_s / 1e9,
            "epoch_times_s": epoch_times, "bare_times_s": bare_times}
  print(json.dumps(result, indent=2))
  if _OUT.value:
    pathlib.Path(_OUT.value).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(_OUT.value).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
  app.run(main)
