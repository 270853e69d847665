"""The benchmark command in --quick mode writes well-formed results (never a timing assertion)."""

import json
import math

import pytest

from conftest import run_command

pytestmark = pytest.mark.slow  # Every test here starts processes (see conftest.py).


def test_quick_benchmark_writes_every_case_with_its_floor(tmp_path):
  out = tmp_path / "bench.json"
  result = run_command("benchmark", "--quick", f"--out={out}", timeout=600)
  report = json.loads(out.read_text())
  assert report["quick"] and report["machine"]["platform"] == "cpu"
  assert report["machine"]["jax"] and report["machine"]["host_cpu"]
  assert set(report["gemm_gflops"]) == {"float32", "bfloat16"}
  cases = [r["case"] for r in report["training"]]
  assert [r["targets"] for r in report["training"]].count("teacher in the step") == 1
  assert [r["targets"] for r in report["training"]].count("cached teacher logits") == 1
  assert len(cases) == 5 and any("population" in c for c in cases)
  for record in report["training"] + [report["evaluation"]]:
    for key in ("examples_per_s", "floor_s", "ratio", "compile_s"):
      assert math.isfinite(record[key]) and record[key] > 0, (record["case"], key)
  assert report["memory"]["host_peak_rss_mb"] > 0
  populations = [r for r in report["training"] if r["members"] > 1]
  assert len(populations) == 1 and all(r["ratio_to_single_runs"] > 0 for r in populations)
  for memory in report["population_memory"].values():
    assert memory["bytes_per_member"] > 0 and memory["max_members"]["24 GiB"] >= 1
  assert "examples/s" in result.stdout and "ratio" in result.stdout  # The table.
