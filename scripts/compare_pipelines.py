"""The grain pipeline against the memory pipeline on MNIST, on this machine: epoch times of the
teacher (configs/teacher.py) through each, alternated in one run, and the test errors of the quick
teacher (configs/quick_teacher.py, --seeds of them; results/grain ran 8) trained through each.

  python scripts/compare_pipelines.py --out results/grain            # about 25 min on 2 cores
  python scripts/compare_pipelines.py --out /tmp/p --quick           # the plumbing, in seconds
  python scripts/compare_pipelines.py --out results/grain --timing_only  # the epochs: minutes

Writes OUT/results.json and OUT/RESULTS.md; runs go to OUT/../../runs/pipelines (--workdir). Each
stage is skipped when its runs have finished, so a killed comparison resumes where it stopped.
"""

from __future__ import annotations

import json
import pathlib
import statistics

from absl import app, flags

from kd_jax import configs, prepare, reporting, trainer
from kd_jax.data import records
from kd_jax.paper import verdicts

_OUT = flags.DEFINE_string("out", "results/grain", "Where RESULTS.md and results.json go.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/pipelines", "Where the runs and records go.")
_QUICK = flags.DEFINE_bool("quick", False, "Tiny schedules: checks the plumbing only.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed runs of each pipeline, alternated.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Quick teachers through each pipeline.")
_TIMING_ONLY = flags.DEFINE_bool("timing_only", False, "Only the alternated teacher epochs: "
                                 "OUT/timing.json (the machine, each pair, the ratios).")
_STEPS_PER_CALL = flags.DEFINE_list(
    "steps_per_call", [], "With --timing_only, grain runs with these data.steps_per_call timed "
    "too, beside the defaults' (8): 1 times a call per step, alternated in the same run.")
_MARGIN = flags.DEFINE_float("margin", 15.0, "Test errors within which the pipelines count as "
                             "alike (two one-sided tests).")


def _epoch_times(workdir: pathlib.Path) -> list[float]:
  return [json.loads(line)["epoch_time_s"]
          for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def main(argv):
  del argv
  out, root = pathlib.Path(_OUT.value), pathlib.Path(_WORKDIR.value)
  folder = root / "records"
  if not (folder / records.METADATA_FILE).exists():
    prepare.prepare("mnist", folder, num_shards=4)
  grain_fields = {"data.pipeline": "grain", "data.records_dir": str(folder)}

  def config(name, pipeline, **fields):
    chosen = configs.get(name, **{k.replace(".", "__"): v for k, v in {
        **(grain_fields if pipeline == "grain" else {}), **fields}.items()})
    if _QUICK.value:
      chosen.model.hidden_sizes = (32,)
    return chosen

  # Epoch times: 2 epochs per run (the first includes compilation and the first reads), the
  # pipelines alternated so that drift in the machine's speed falls on both.
  timing_epochs = 2
  steps_per_call = [int(k) for k in _STEPS_PER_CALL.value] if _TIMING_ONLY.value else []
  # name in timing.json -> (pipeline, config fields, run folder tag); "grain": its defaults.
  variants = {"memory": ("memory", {}, "memory"), "grain": ("grain", {}, "grain")} | {
      f"grain, {k} steps per call": ("grain", {"data.steps_per_call": k}, f"grain_k{k}")
      for k in steps_per_call}
  timings = {name: [] for name in variants}
  for repeat in range(_REPEATS.value):
    for name, (pipeline, fields, tag) in variants.items():
      workdir = root / f"teacher_epoch_{tag}_{repeat}"
      trainer.train_and_evaluate(config("teacher", pipeline, num_epochs=timing_epochs, **fields),
                                 workdir)
      timings[name].append(_epoch_times(workdir)[-1])
  over_memory = {name: [t / m for t, m in zip(times, timings["memory"])]
                 for name, times in timings.items() if name != "memory"}
  if _TIMING_ONLY.value:
    out.mkdir(parents=True, exist_ok=True)
    reporting.write_json(out / "timing.json", {
        "machine": reporting.machine(), "code_version": reporting.code_version(),
        "teacher_epoch_s": timings, "over_memory": over_memory})
    for name, ratios in over_memory.items():
      print(f"{name} / memory: {', '.join(f'{r:.2f}' for r in ratios)}")
    return
  ratios = over_memory["grain"]

  # Errors of quick teachers, one run per seed, through each pipeline.
  errors = {"memory": [], "grain": []}
  train_s = {"memory": 0.0, "grain": 0.0}  # Sums of the runs' epoch times (resumes included).
  for seed in range(_SEEDS.value):
    for pipeline in ("memory", "grain"):
      workdir = root / f"quick_teacher_{pipeline}_{seed}"
      summary = trainer.train_and_evaluate(
          config("quick_teacher", pipeline, seed=seed,
                 **({"num_epochs": 2} if _QUICK.value else {})), workdir)
      train_s[pipeline] += sum(_epoch_times(workdir))
      errors[pipeline].append(summary["test_errors"])
  comparison = verdicts.welch(errors["grain"], errors["memory"])
  alike = verdicts.alike({"grain": errors["grain"], "memory": errors["memory"]},
                         _MARGIN.value)
  results = {
      "machine": reporting.machine(), "quick": _QUICK.value,
      "teacher_epoch_s": timings, "grain_over_memory": ratios,
      "quick_teacher_errors": errors, "quick_teacher_train_s": train_s,
      "errors_grain_minus_memory": comparison, "errors_alike": alike,
  }
  out.mkdir(parents=True, exist_ok=True)
  reporting.write_json(out / "results.json", results)
  mean_sd = lambda xs: (f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs):.1f}"
                        if len(xs) > 1 else f"{xs[0]}")
  lines = [
      "# The grain pipeline against the memory pipeline (MNIST)", "",
      f"Machine: {reporting.describe_machine(results['machine'])}. Generated by "
      "`python scripts/compare_pipelines.py"
      f"{' --quick' if _QUICK.value else ''}`.", "",
      "## Teacher epoch (configs/teacher.py: 784-1200-1200-10, jitter 2, batch 128)", "",
      "| run | memory (s) | grain (s) | grain / memory |", "|---|---|---|---|",
      *[f"| {i + 1} | {m:.2f} | {g:.2f} | {r:.2f} |"
        for i, (m, g, r) in enumerate(zip(timings["memory"], timings["grain"], ratios))],
      "", f"Ratio {min(ratios):.2f}–{max(ratios):.2f} over {len(ratios)} alternated pairs "
      "(the second epoch of each run).", "",
      f"## Quick teacher (configs/quick_teacher.py), {_SEEDS.value} seeds each", "",
      "| pipeline | test errors | mean ± sd | training time, all seeds (s) |",
      "|---|---|---|---|",
      *[f"| {p} | {', '.join(map(str, errors[p]))} | {mean_sd(errors[p])} | {train_s[p]:.0f} |"
        for p in ("memory", "grain")],
      "", f"Grain − memory: {verdicts.describe(comparison)}.",
      f"Alike within ±{_MARGIN.value:g} errors: **{alike['verdict']}** (90% interval "
      f"{alike['interval'][0]:+.1f} to {alike['interval'][1]:+.1f}).", ""]
  (out / "RESULTS.md").write_text("\n".join(lines))
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
