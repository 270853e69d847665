"""Distillation across architectures on MNIST: a CNN teacher (models.CNN, BatchNorm) distilled into
the 2x800 MLP, and an MLP teacher distilled into the CNN, beside each student alone; test errors,
epoch times and their ratio to the floor of the same epoch (the fastest way its bare convolutions
and matrix products ran, `kd_jax.benchmark.case_floor`), measured in this run.

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

import kd_jax
from kd_jax import benchmark, cli, reporting
from kd_jax.paper import stages

CNN = {"model__name": "cnn", "model__conv_features": (16, 32), "model__hidden_sizes": (128,)}


@functools.cache
def _floor(name: str, conv_features: tuple, hidden_sizes: tuple, batch_size: int,
           repeats: int) -> tuple[str, float]:
  """(way, seconds) of the fastest way the student's bare epoch ran (`benchmark.case_floor`: its
  convolutions and matrix products, scanned and per step; the teacher's logits are cached)."""
  config = kd_jax.configs.get("student", model__name=name, model__conv_features=conv_features,
                              model__hidden_sizes=hidden_sizes, batch_size=batch_size)
  # Lax's convolutions scanned run ~8x slower than any other way here (results/benchmark): the
  # benchmark measures that way; it is never the floor, so it is not repeated for each run.
  ways = benchmark.case_floor(config, None, 60_000 // batch_size, 1, 1, repeats,
                              skip=("lax conv, scan",))
  way = min(ways, key=ways.get)
  return way, ways[way]


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
    way, floor = _floor(config.model.name, tuple(config.model.conv_features),
                        tuple(config.model.hidden_sizes), config.batch_size, 2)
    results[name].update(floor_s=floor, floor_way=way, ratio=results[name]["epoch_s"] / floor)
  summary = {"machine": reporting.machine(), "code_version": reporting.code_version(),
             "epochs": args.epochs, "runs": results}
  out.mkdir(parents=True, exist_ok=True)
  reporting.write_json(out / "results.json", summary)
  lines = [f"# CNN <-> MLP distillation on MNIST ({args.epochs} epochs each)", "",
           f"Machine: {reporting.describe_machine(summary['machine'])}; code "
           f"{summary['code_version']}.", ""]
  lines += stages.markdown_table(
      ["run", "model", "teacher", "test errors", "agreement with teacher (test)", "epoch (s)",
       "floor (s)", "floor's way", "ratio"],
      [[name, r["model"], r["teacher"] or "", r["test_errors"],
        f"{100 * r['test_agreement']:.2f}%" if "test_agreement" in r else "",
        f"{r['epoch_s']:.2f}", f"{r['floor_s']:.2f}", r["floor_way"], f"{r['ratio']:.2f}"]
       for name, r in results.items()])
  (out / "RESULTS.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))
  print(json.dumps({k: v["test_errors"] for k, v in results.items()}))


if __name__ == "__main__":
  cli.run_script(main)
