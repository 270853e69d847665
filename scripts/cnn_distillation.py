"""Distillation across architectures on MNIST: a CNN teacher (models.CNN, BatchNorm) distilled into
the 2x800 MLP, and an MLP teacher distilled into the CNN, beside each student alone; test errors,
epoch times and their ratio to the bare conv/matmul floor of the same epoch, measured in this run.

  KD_JAX_MNIST_DIR=/path/to/mnist python scripts/cnn_distillation.py --epochs 10 \
      --workdir runs/cnn --out results/cnn_distillation

Writes OUT/results.json and OUT/RESULTS.md. Resumable: finished runs are reused.
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp

import kd_jax
from kd_jax import benchmark, data, reporting
from kd_jax.paper import stages

CNN = {"model__name": "cnn", "model__conv_features": (16, 32), "model__hidden_sizes": (128,)}


def conv_floor_epoch(conv_features, hidden_sizes, batch_size: int, num_steps: int):
  """A compiled epoch of only the CNN's convolutions and matrix products, forward and backward
  (no BatchNorm, activations, pooling arithmetic or optimizer): the work the step cannot avoid."""
  key = jax.random.PRNGKey(0)
  kernels, channels = [], 1
  for features in conv_features:
    kernels.append(jax.random.normal(key, (3, 3, channels, features)) * 0.1)
    channels = features
  side = 28 // 2 ** len(conv_features)
  sizes = [side * side * channels, *hidden_sizes, data.NUM_CLASSES]
  dense = [jax.random.normal(key, (m, n)) * 0.01 for m, n in zip(sizes[:-1], sizes[1:])]
  x = jax.random.normal(key, (batch_size, 28, 28, 1))

  def forward(weights, images):
    kernels, dense = weights
    h = images
    for kernel in kernels:
      h = jax.lax.conv_general_dilated(h, kernel, (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
      h = h[:, ::2, ::2]  # Pooling's shape change, without its arithmetic.
    h = h.reshape((h.shape[0], -1))
    for w in dense:
      h = h @ w
    return jnp.sum(h)

  def step(weights, index):
    grads = jax.grad(forward)(weights, x + index.astype(jnp.float32))
    return jax.tree.map(lambda w, g: w - 1e-6 * g, weights, grads), None

  epoch = jax.jit(lambda weights: jax.lax.scan(step, weights, jnp.arange(num_steps))[0])
  return epoch, ((kernels, dense),)


@functools.cache
def _floor(name: str, conv_features: tuple, hidden_sizes: tuple, batch_size: int,
           repeats: int) -> float:
  config = kd_jax.configs.get("student", model__name=name, model__conv_features=conv_features,
                              model__hidden_sizes=hidden_sizes, batch_size=batch_size)
  return floor_seconds(config, repeats)


def floor_seconds(config, repeats: int = 2) -> float:
  """Median seconds of the bare epoch of `config`'s student (the teacher's logits are cached)."""
  num_steps = 60_000 // config.batch_size
  if config.model.name == "cnn":
    fn, args = conv_floor_epoch(tuple(config.model.conv_features),
                                tuple(config.model.hidden_sizes), config.batch_size, num_steps)
  else:
    fn, args = benchmark.bare_matmul_epoch([784, *config.model.hidden_sizes, 10], None,
                                           config.batch_size, num_steps, 1, 1, jnp.float32)
  return benchmark._time(fn, args, repeats, lambda out, args, i: (out,))["seconds"]  # pylint: disable=protected-access


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--epochs", type=int, default=10)
  parser.add_argument("--workdir", default="runs/cnn")
  parser.add_argument("--out", default="results/cnn_distillation")
  args = parser.parse_args()
  root, out = pathlib.Path(args.workdir), pathlib.Path(args.out)
  epochs = {"num_epochs": args.epochs}
  plan = {  # name -> (config, teacher name or None)
      "teacher_cnn": (kd_jax.configs.get("quick_teacher", **epochs, **CNN), None),
      "teacher_mlp": (kd_jax.configs.get("quick_teacher", **epochs), None),
      "mlp_from_cnn": (kd_jax.configs.get("quick_distill", **epochs), "teacher_cnn"),
      "mlp_alone": (kd_jax.configs.get("student", **epochs), None),
      "cnn_from_mlp": (kd_jax.configs.get("quick_distill", **epochs, **CNN), "teacher_mlp"),
      "cnn_alone": (kd_jax.configs.get("student", **epochs, **CNN), None),
  }
  results = {}
  for name, (config, teacher) in plan.items():
    start = time.perf_counter()
    run = (kd_jax.train(config, root / name) if teacher is None else
           kd_jax.distill(config, root / name, teacher=root / teacher))
    report = run.evaluate()
    epoch_times = [r["epoch_time_s"] for r in run.metrics]
    results[name] = {"model": report["model"], "teacher": teacher,
                     "test_errors": report["test_errors"], "epochs": len(run.metrics),
                     "epoch_s": statistics.median(epoch_times), "epoch_times_s": epoch_times,
                     "wall_s_this_invocation": time.perf_counter() - start}
    if teacher:
      results[name]["test_agreement"] = report["transfer_fit"]["test_agreement"][0]
  for name, (config, teacher) in plan.items():  # Floors after training: nothing else runs.
    floor = _floor(config.model.name, tuple(config.model.conv_features),
                   tuple(config.model.hidden_sizes), config.batch_size, 2)
    results[name].update(floor_s=floor, ratio=results[name]["epoch_s"] / floor)
  summary = {"machine": reporting.machine(), "code_version": reporting.code_version(),
             "epochs": args.epochs, "runs": results}
  out.mkdir(parents=True, exist_ok=True)
  reporting.write_json(out / "results.json", summary)
  lines = [f"# CNN <-> MLP distillation on MNIST ({args.epochs} epochs each)", "",
           f"Machine: {summary['machine']['host_cpu']}, {summary['machine']['host_cores']} cores, "
           f"jax {summary['machine']['jax']}; code {summary['code_version']}.", ""]
  lines += stages.markdown_table(
      ["run", "model", "teacher", "test errors", "agreement with teacher (test)", "epoch (s)",
       "floor (s)", "ratio"],
      [[name, r["model"], r["teacher"] or "", r["test_errors"],
        f"{100 * r['test_agreement']:.2f}%" if "test_agreement" in r else "",
        f"{r['epoch_s']:.2f}", f"{r['floor_s']:.2f}", f"{r['ratio']:.2f}"]
       for name, r in results.items()])
  (out / "RESULTS.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))
  print(json.dumps({k: v["test_errors"] for k, v in results.items()}))


if __name__ == "__main__":
  main()
