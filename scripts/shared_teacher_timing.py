"""What a population of distilled students pays for its teacher (issue 30): epoch time of M
2x800 students with a 3-teacher ensemble in the step (jitter 2), each member on its own batches
against members sharing theirs (`data.shared_order`: one teacher forward per batch), as a ratio to
M single runs, all measured in this one process.

  KD_JAX_MNIST_DIR=/path/to/mnist python scripts/shared_teacher_timing.py \
      --out results/shared_teacher/timing.json [--members 1,3,5] [--repeats 3]

Each case is set up by the trainer's own `trainer.build` and `epochs.build` (`kd_jax.benchmark`'s
`built_case`) on initialised (untrained) paper teachers; timings do not depend on their weights.
`--quick`: 1,024 random images and one timed epoch, to check the plumbing.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import tempfile
from typing import Any

from kd_jax import benchmark, cli, config_lib, parallelism, reporting, runtime


def measure(members: list[int], repeats: int, quick: bool, teachers: int = 3) -> dict[str, Any]:
  """Epoch seconds per (M, own or shared batches), and each over M times the single run's."""
  mesh = parallelism.make_mesh()
  scratch = pathlib.Path(tempfile.mkdtemp(prefix="kd_jax_shared_teacher_"))
  try:
    folder, source = benchmark.data_folder(quick, scratch)
    with runtime.quiet_logs():
      teacher = benchmark.random_teacher(scratch / "teacher", mesh, members=teachers)
    config = config_lib.add_distillation(config_lib.base_config())
    config.data.jitter = 2  # The teacher relabels every view in the step.
    cases = []
    for size in members:
      for shared in ((False,) if size == 1 else (False, True)):
        _, state, driver = benchmark.built_case(config, folder, teacher, mesh, members=size,
                                                data__shared_order=shared)
        epoch = benchmark.time_epochs(driver, state, repeats)
        cases.append({"members": size, "batches": "shared" if shared else "own",
                      "epoch_s": epoch["seconds"], "epoch_times_s": epoch["times_s"],
                      "compile_s": epoch["compile_s"]})
        print(f"M={size} {cases[-1]['batches']} batches: {epoch['seconds']:.2f}s per epoch",
              flush=True)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  single = next(c["epoch_s"] for c in cases if c["members"] == 1)
  for case in cases:
    case["ratio_to_single_runs"] = case["epoch_s"] / (case["members"] * single)
  return {"machine": reporting.machine(), "code_version": reporting.code_version(),
          "data": source, "repeats": repeats, "teachers": teachers, "student": "2x800",
          "cases": cases}


def markdown(results: dict[str, Any]) -> str:
  machine = results["machine"]
  lines = [f"Epoch time of M 2x800 students distilled from an ensemble of {results['teachers']} "
           "paper teachers in the step (jitter 2), batch 128, median of "
           f"{results['repeats']} epochs; {reporting.describe_machine(machine)}, code "
           f"{results['code_version']}.", "",
           "| M | batches | epoch (s) | / M single runs |", "|---|---|---|---|"]
  lines += [f"| {c['members']} | {c['batches']} | {c['epoch_s']:.2f} | "
            f"{c['ratio_to_single_runs']:.2f} |" for c in results["cases"]]
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="results/shared_teacher/timing.json")
  parser.add_argument("--members", default="1,3,5")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args(argv)
  results = measure([int(m) for m in args.members.split(",")], 1 if args.quick else args.repeats,
                    args.quick)
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  reporting.write_json(out, results)
  out.with_suffix(".md").write_text(markdown(results))
  print(markdown(results))
  return results


if __name__ == "__main__":
  cli.run_script(main)
