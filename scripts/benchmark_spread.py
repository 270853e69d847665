"""The spread of several `python -m kd_jax.benchmark` runs, as a markdown table.

  python scripts/benchmark_spread.py results/benchmark/intel_xeon/run1.json ... \
      > results/benchmark/intel_xeon/RESULTS.md

Per case: each run's epoch time and ratio to its floor (the fastest way the case's bare
operations ran in that run), and the floor's way; the runs must have been made on one machine.
"""

from __future__ import annotations

import json
import sys

from kd_jax import reporting


def _each(records: list[dict], key: str, spec: str) -> str:
  return " / ".join(format(record[key], spec) for record in records)


def main(paths: list[str]) -> None:
  runs = [json.loads(open(path).read()) for path in paths]
  machine = runs[-1]["machine"]
  print("# Benchmark: epoch time against the floor, over runs\n")
  print(f"{reporting.describe_machine(machine)}; {len(runs)} runs "
        f"({', '.join(paths)}), each the median of {runs[0]['repeats']} epochs after a warm-up; "
        f"data: {runs[0]['data']}. Written by `scripts/benchmark_spread.py`.\n")
  print("| case | batch | epoch s (per run) | ratio to floor (per run) | floor's way (per run) |")
  print("|---|---|---|---|---|")
  for index, case in enumerate(runs[0]["training"]):
    records = [run["training"][index] for run in runs]
    assert all(r["case"] == case["case"] for r in records), "the runs' cases differ"
    print(f"| {case['case']} | {case['batch_size']} | {_each(records, 'epoch_s', '.2f')} | "
          f"{_each(records, 'ratio', '.2f')} | {' / '.join(r['floor_way'] for r in records)} |")
  if all("evaluation" in run for run in runs):  # Not with --cases.
    evaluations = [run["evaluation"] for run in runs]
    print(f"| {evaluations[0]['case']} | {evaluations[0]['batch_size']} | "
          f"{_each(evaluations, 'seconds', '.3f')} | {_each(evaluations, 'ratio', '.2f')} | scan |")
  print()
  print("Large GEMM (GFLOP/s, float32 / bfloat16): " + "; ".join(
      f"{run['gemm_gflops']['float32']:.0f} / {run['gemm_gflops']['bfloat16']:.0f}"
      for run in runs) + ".")


if __name__ == "__main__":
  main(sys.argv[1:])
