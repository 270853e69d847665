"""Accuracy against inference cost: what a distilled student saves over its teacher and ensemble.

  python -m kd_jax.frontier --root runs/reproduce_quick --out results/frontier

Reads the runs of a `kd_jax.reproduce` root (the teacher population, the table's students, the
temperature sweep's students at their best T and the same students alone), exports one model of
each kind with `kd_jax.export` (the ensemble as a whole), and measures each artifact as a user
would serve it: parameters, FLOPs per image (of its dense layers, counted from the sizes),
latency at batch 1 (median and p99 over many calls) and throughput at batch 1000. Test errors are
the runs' own (mean ± sd over seeds). Writes OUT/frontier.json and OUT/frontier.png.
"""

from __future__ import annotations

import json
import pathlib
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from kd_jax import cli, data, export, plots, reporting, rundir
from kd_jax.paper import stages
from kd_jax.errors import CheckpointError

def frontier_models(root: pathlib.Path) -> list[dict[str, Any]]:
  """The models to compare: name, kind, run directory, which member to export (None: all, an
  ensemble) and the members whose test errors it stands for."""
  results = json.loads((root / "results.json").read_text())
  experiments, member = results["experiments"], results["teacher_member"]
  student = results["models"]["student"]
  entries = [
      {"name": "teacher", "kind": "teacher", "run": "teachers", "member": member,
       "members": [member]},
      {"name": f"ensemble of {experiments['ensemble']['member_errors']['n']} teachers",
       "kind": "ensemble", "run": "teachers", "member": None, "members": None},
      {"name": f"{student} distilled", "kind": "distilled", "run": "table/distilled",
       "member": 0, "members": "all"},
      {"name": f"{student} alone", "kind": "alone", "run": "table/alone", "member": 0,
       "members": "all"}]
  for tag, sweep in experiments["temperature"]["sizes"].items():
    best = sweep["best_temperature"]
    population = json.loads((root / "temperature" / tag / "population.json").read_text())
    at_best = [m["index"] for m in population["members"] if m["temperature"] == best]
    entries.append({"name": f"{tag} distilled (T = {best:g})", "kind": "distilled",
                    "run": f"temperature/{tag}", "member": at_best[0], "members": at_best})
    entries.append({"name": f"{tag} alone", "kind": "alone", "run": f"temperature/{tag}_alone",
                    "member": 0, "members": "all"})
  return entries


def errors_of(report: dict[str, Any], members) -> dict[str, Any]:
  """Mean ± sd of the chosen members' test errors; None: the ensemble's own errors."""
  if members is None:
    return stages.mean_sd([report["test_errors"]])
  errors = stages.member_errors(report)
  return stages.mean_sd(errors if members == "all" else [errors[i] for i in members])


def matmul_flops(hidden_sizes, num_members: int) -> int:
  """FLOPs per image of the dense layers (2 per multiply-add), all members together: exact for
  these MLPs up to the elementwise ReLU, bias and softmax, which add well under 1%. (XLA's cost
  analysis counts a loop over members once, so it under-counts ensembles.)"""
  sizes = (data.IMAGE_SHAPE[0] * data.IMAGE_SHAPE[1], *hidden_sizes, data.NUM_CLASSES)
  return 2 * num_members * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def _timed_calls(fn, images: jax.Array, calls: int) -> list[float]:
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    jax.block_until_ready(fn(images))
    times.append(time.perf_counter() - start)
  return times


def measure(folder: pathlib.Path, images: np.ndarray, latency_calls: int,
            throughput_calls: int) -> dict[str, Any]:
  """Timings of one exported model: batch-1 latency and batch-1000 throughput."""
  exported = jax.export.deserialize(bytearray((folder / export.MODEL_FILE).read_bytes()))
  serve = jax.jit(exported.call)
  one, thousand = jnp.asarray(images[:1]), jnp.asarray(images[:1000])
  jax.block_until_ready(serve(one))  # Compile both shapes before timing.
  jax.block_until_ready(serve(thousand))
  latency = _timed_calls(serve, one, latency_calls)
  batch_times = _timed_calls(serve, thousand, throughput_calls)
  return {"latency_batch1_ms": {"median": 1e3 * statistics.median(latency),
                                "p99": 1e3 * float(np.percentile(latency, 99))},
          "throughput_batch1000_per_s": len(thousand) / statistics.median(batch_times)}


def write_plot(entries: list[dict[str, Any]], path: pathlib.Path) -> None:
  """Test errors against FLOPs per image and against batch-1 latency (log scales)."""
  plt = plots.pyplot()
  if plt is None:
    return
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
  for ax, key, label in ((axes[0], "flops_per_image", "FLOPs per image"),
                         (axes[1], "latency_median_ms", "latency at batch 1, median (ms)")):
    for kind, style in (("distilled", "o-"), ("alone", "s--")):
      curve = sorted((e for e in entries if e["kind"] == kind), key=lambda e: e[key])
      ax.errorbar([e[key] for e in curve], [e["test_errors"]["mean"] for e in curve],
                  yerr=[e["test_errors"]["sd"] for e in curve], fmt=style, capsize=3,
                  label=f"students, {'distilled' if kind == 'distilled' else 'hard labels alone'}")
    for kind, marker in (("teacher", "^"), ("ensemble", "*")):
      for e in (e for e in entries if e["kind"] == kind):
        ax.plot(e[key], e["test_errors"]["mean"], marker, markersize=12, label=e["name"])
    for e in entries:
      ax.annotate(e["name"].split(" (")[0], (e[key], e["test_errors"]["mean"]), fontsize=7,
                  xytext=(4, 4), textcoords="offset points")
    ax.set(xscale="log", yscale="log", xlabel=label, ylabel="MNIST test errors (of 10,000)")
    ax.grid(True, which="both", alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.suptitle("Accuracy against inference cost")
  plots.save(fig, path)


def define_flags() -> None:
  """The command's flags (defined only when it runs, so the library imports without them)."""
  flags.DEFINE_string("root", None, "A kd_jax.reproduce workdir.", required=True)
  flags.DEFINE_string("out", None, "Folder for frontier.json and frontier.png.", required=True)
  flags.DEFINE_integer("latency_calls", 500, "Batch-1 calls timed per model.")
  flags.DEFINE_integer("throughput_calls", 20, "Batch-1000 calls timed per model.")


def main(argv):
  del argv
  root, out = pathlib.Path(flags.FLAGS.root), pathlib.Path(flags.FLAGS.out)
  if not (root / "results.json").exists():
    raise CheckpointError(f"{root / 'results.json'} does not exist: run `python -m "
                          f"kd_jax.reproduce --workdir {root}` first.")
  splits = data.load_dataset(rundir.load_config(root / "table" / "alone").data)
  images = np.resize(splits.test_images, (1000, *data.IMAGE_SHAPE))
  entries = []
  for entry in frontier_models(root):
    folder = root / "exports" / entry["run"].replace("/", "_") / str(entry["member"])
    if not (folder / export.MODEL_FILE).exists():
      export.export_run(root / entry["run"], folder, member=entry["member"], platforms=(
          jax.default_backend(),), overwrite=True)
    metadata = json.loads((folder / export.METADATA_FILE).read_text())
    report = json.loads((root / entry["run"] / rundir.EVAL_FILE).read_text())
    cost = measure(folder, images, flags.FLAGS.latency_calls, flags.FLAGS.throughput_calls)
    hidden_sizes = rundir.load_config(root / entry["run"]).model.hidden_sizes
    cost["flops_per_image"] = matmul_flops(hidden_sizes, len(metadata["members"]))
    entries.append({**entry, "model": metadata["model"],
                    "num_parameters": metadata["num_parameters"], **cost,
                    "latency_median_ms": cost["latency_batch1_ms"]["median"],
                    "test_errors": errors_of(report, entry["members"])})
    reporting.say(f"{entry['name']}: {metadata['num_parameters']:,} parameters, "
                  f"{cost['flops_per_image'] / 1e6:.2f} MFLOP/image, batch 1 "
                  f"{cost['latency_batch1_ms']['median']:.3f} ms (p99 "
                  f"{cost['latency_batch1_ms']['p99']:.3f}), batch 1000 "
                  f"{cost['throughput_batch1000_per_s']:,.0f} images/s; test errors "
                  f"{entries[-1]['test_errors']['mean']:.1f}.")
  out.mkdir(parents=True, exist_ok=True)
  reporting.write_json(out / "frontier.json", {"machine": reporting.machine(),
                                               "code_version": reporting.code_version(),
                                               "root": str(root), "models": entries})
  write_plot(entries, out / "frontier.png")
  reporting.say(f"Written: {out / 'frontier.json'}, {out / 'frontier.png'}.")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
