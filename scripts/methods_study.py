"""The distillation methods on MNIST: a registry CNN teacher distilled into a smaller CNN by each
method (and into the 2x800 MLP by the logit methods), beside the student alone and the paper's
KD; test errors over seeds, Welch's test of each method against KD, and each method's epoch time
as a ratio to KD's in the same run.

  KD_JAX_MNIST_DIR=/path/to/mnist python scripts/methods_study.py --workdir runs/methods \
      --out results/methods [--epochs 10] [--seeds 3]

Every stage is an ordinary run directory under WORKDIR (`kd_jax.paper.stages.run_stages`: a
killed study resumes where it stopped, finished stages are reused), its seeds one population.
Writes OUT/results.json and OUT/RESULTS.md. `--tiny` shrinks everything to seconds (the test).
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
from typing import Any

import ml_collections

import kd_jax
from kd_jax import cli, reporting, rundir
from kd_jax.configs import _method_student
from kd_jax.paper import stages, verdicts

TEACHER = {"model__name": "cnn", "model__conv_features": (16, 32), "model__hidden_sizes": (128,)}
MLP = {"model__name": "mlp", "model__hidden_sizes": (800, 800)}
METHODS = ("dkd", "dist", "fitnets", "at", "rkd")
LOGIT_METHODS = ("dkd", "dist")
# A screening of the number each method's result hangs on (one seed per value, one population):
# the shipped values are mdistiller's for CIFAR, and the weights of fitnets and at dwarf MNIST's
# cross-entropy.
SWEEPS = {"fitnets": ("weight", (1.0, 10.0, 100.0)), "at": ("weight", (10.0, 100.0, 1000.0)),
          "dkd": ("beta", (1.0, 2.0, 8.0))}


def plan(root: pathlib.Path, epochs: int, seeds: int, tiny: dict[str, Any],
         methods: tuple[str, ...] = METHODS) -> dict[str, ml_collections.ConfigDict]:
  """Every stage's config by name, the teacher first: each of `methods` beside alone and KD, then
  the screening sweeps (`SWEEPS`) of those methods on the CNN."""
  common = {"num_epochs": epochs, "members": seeds, **tiny}
  teacher = str(root / "teacher")
  kd = {"alpha": 0.9, "temperature": 4.0}  # mdistiller's KD: T 4, 0.9 soft, 0.1 hard.
  student = lambda **overrides: kd_jax.configs.override(_method_student.get_config(), **overrides)
  runs = {"teacher": kd_jax.configs.get("quick_teacher", num_epochs=epochs, **TEACHER, **tiny),
          "cnn/alone": kd_jax.configs.get("student", **_method_student_model(), **common),
          "cnn/kd": student(teacher_workdir=teacher, **kd, **common)}
  for name in methods:
    runs[f"cnn/{name}"] = kd_jax.configs.get(name, teacher_workdir=teacher, **common)
  runs["mlp/alone"] = kd_jax.configs.get("student", **MLP, **common)
  runs["mlp/kd"] = student(teacher_workdir=teacher, **kd, **MLP, **common)
  for name in (m for m in methods if m in LOGIT_METHODS):
    runs[f"mlp/{name}"] = kd_jax.configs.get(name, teacher_workdir=teacher, **MLP, **common)
  for name in (m for m in methods if m in SWEEPS):
    field, values = SWEEPS[name]
    runs[sweep_stage(name)] = kd_jax.configs.get(
        name, teacher_workdir=teacher, num_epochs=epochs, **tiny,
        **{f"sweep__terms__{name}__{field}": values})
  return runs


def sweep_stage(method: str) -> str:
  """The stage of `method`'s screening sweep."""
  return f"cnn/{method}_{SWEEPS[method][0]}"


def _method_student_model() -> dict[str, Any]:
  """The shipped method configs' student, as overrides of a hard-label config."""
  model = _method_student.get_config().model
  return {"model__name": model.name, "model__conv_features": tuple(model.conv_features),
          "model__hidden_sizes": tuple(model.hidden_sizes)}


def epoch_seconds(run: pathlib.Path) -> float:
  """The median epoch time of a run after its first epoch (which compiles)."""
  records = reporting.read_metrics(run / rundir.METRICS_FILE)
  times = [r["epoch_time_s"] for r in records[1:]] or [r["epoch_time_s"] for r in records]
  return statistics.median(times)


def analyse(root: pathlib.Path, runs: dict[str, ml_collections.ConfigDict]) -> dict[str, Any]:
  """Per student: test errors (mean, sd, members), the test against KD of the same architecture,
  and the epoch time's ratio to KD's; per screening sweep, each value swept and its errors."""
  students, sweeps = {}, {}
  sweep_stages = {sweep_stage(method): method for method in SWEEPS}
  for name in runs:
    if name == "teacher":
      continue
    if name in sweep_stages:
      method = sweep_stages[name]
      field = SWEEPS[method][0]
      members = stages.member_reports(stages.evaluated(root / name))
      sweeps[method] = {"field": field, "values": [m[f"terms.{method}.{field}"] for m in members],
                        "test_errors": [m["test_errors"] for m in members]}
      continue
    arch, method = name.split("/")
    students[name] = {"architecture": arch, "method": method,
                      "test_errors": stages.mean_sd(stages.member_errors(
                          stages.evaluated(root / name))),
                      "epoch_s": epoch_seconds(root / name)}
  for name, entry in students.items():
    kd = students[f"{entry['architecture']}/kd"]
    entry["epoch_time_ratio_to_kd"] = entry["epoch_s"] / kd["epoch_s"]
    if entry["method"] != "kd":
      entry["against_kd"] = verdicts.lower(entry["test_errors"]["values"],
                                           kd["test_errors"]["values"])
  teacher = stages.evaluated(root / "teacher")
  return {"teacher_test_errors": stages.member_errors(teacher), "students": students,
          "sweeps": sweeps}


def markdown(results: dict[str, Any]) -> str:
  machine = results["machine"]
  lines = [
      "# Distillation methods on MNIST", "",
      f"A registry CNN teacher ({results['teacher']}, "
      f"{', '.join(map(str, results['teacher_test_errors']))} test "
      f"errors) distilled for {results['epochs']} epochs into a CNN (conv 8-16, dense 64) and the "
      f"2x800 MLP, {results['seeds']} seeds each (mean ± sd of test errors of 10,000). Each "
      "method is the shipped config (cross-entropy plus its term, the paper's soft term off); "
      "KD is T = 4, alpha = 0.9. Against KD: Welch's test of the method minus KD (negative: "
      "fewer errors), holding only where p < 0.05. Machine: "
      f"{reporting.describe_machine(machine)}; code "
      f"{results['code_version']}.", ""]
  rows = []
  for name, entry in results["students"].items():
    errors = entry["test_errors"]
    against = entry.get("against_kd")
    rows.append([name, f"{errors['mean']:.1f} ± {errors['sd']:.1f} ({errors['n']})",
                 verdicts.describe(against, brief=True) if against else "",
                 against["verdict"] if against else "", f"{entry['epoch_s']:.1f}",
                 f"{entry['epoch_time_ratio_to_kd']:.2f}"])
  lines += stages.markdown_table(["student/method", "test errors", "minus KD", "beats KD",
                                  "epoch (s)", "time / KD's"], rows)
  if results["sweeps"]:
    lines += ["", "Screening: the CNN student's test errors at each value of the number a method "
              "hangs on (one seed, 0, per value; the shipped value last), same epochs.", ""]
    lines += stages.markdown_table(["method", "swept", "values: test errors"], [
        [name, sweep["field"], ", ".join(f"{v:g}: {e}" for v, e in zip(sweep["values"],
                                                                      sweep["test_errors"]))]
        for name, sweep in results["sweeps"].items()])
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="runs/methods")
  parser.add_argument("--out", default="results/methods")
  parser.add_argument("--epochs", type=int, default=10)
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--methods", default=",".join(METHODS),
                      help=f"comma-separated, of {', '.join(METHODS)}")
  stages.add_tiny_argument(parser)
  args = parser.parse_args(argv)
  root, out = pathlib.Path(args.workdir), pathlib.Path(args.out)
  tiny = stages.tiny_overrides(args)
  runs = plan(root, args.epochs, args.seeds, tiny, tuple(args.methods.split(",")))
  timings = stages.run_stages(runs, root, command="methods", shared=("teacher",),
                              teachers_dir=root / "teachers")
  results = {"epochs": args.epochs, "seeds": args.seeds, "machine": reporting.machine(),
             "code_version": reporting.code_version(),
             "code_versions": stages.code_versions(root), "wall_time_s": timings,
             "teacher": kd_jax.load(root / "teacher").describe(), **analyse(root, runs)}
  out.mkdir(parents=True, exist_ok=True)
  reporting.write_json(out / "results.json", results)
  (out / "RESULTS.md").write_text(markdown(results))
  print(markdown(results))
  return results


if __name__ == "__main__":
  cli.run_script(main)
