"""The benchmark command in --quick mode writes well-formed results (never a timing assertion)."""

import json
import math

import pytest

from conftest import load_script, run_command

pytestmark = pytest.mark.slow  # Every test here starts processes (see conftest.py).


@pytest.mark.optimized  # Times its cases several ways each: running dominates.
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
  assert len(cases) == 7 and any("population" in c for c in cases)
  for record in report["training"] + [report["evaluation"]]:
    for key in ("examples_per_s", "floor_s", "ratio", "compile_s"):
      assert math.isfinite(record[key]) and record[key] > 0, (record["case"], key)
  drivers = {r["case"]: r["epoch_driver"] for r in report["training"]}
  assert drivers["user convnet 16-32 + 256 (flax nn.Conv)"] == "steps"  # lax convs on a CPU.
  assert drivers["cnn 16-32 conv + 256 (registry)"] == drivers["teacher 2x1200"] == "scan"
  for record in report["training"]:  # The floor is the fastest of the ways its operations ran.
    assert record["floor_s"] == min(record["floor_ways_s"].values())
    assert {way.split(", ")[-1] for way in record["floor_ways_s"]} == {"scan", "per_step"}
  convnet = next(r for r in report["training"] if r["case"].startswith("cnn"))
  assert len(convnet["floor_ways_s"]) == 4  # lax and GEMM convolutions, each two ways.
  assert report["machine"]["host_vector_extensions"] is not None
  assert report["memory"]["host_peak_rss_mb"] > 0
  populations = [r for r in report["training"] if r["members"] > 1]
  assert len(populations) == 1 and all(r["ratio_to_single_runs"] > 0 for r in populations)
  for memory in report["population_memory"].values():
    assert memory["bytes_per_member"] > 0 and memory["max_members"]["24 GiB"] >= 1
  assert "examples/s" in result.stdout and "ratio" in result.stdout  # The table.


def test_benchmark_cases_flag_times_only_the_named_cases(tmp_path):
  out = tmp_path / "bench.json"
  result = run_command("benchmark", "--quick", "--cases=teacher 2x1200,cached", f"--out={out}",
                       timeout=600)
  report = json.loads(out.read_text())
  assert [r["case"] for r in report["training"]] == [
      "teacher 2x1200", "distill 2x800, cached teacher logits"]
  assert "evaluation" not in report and "population_memory" not in report
  assert "teacher 2x1200" in result.stdout and "Written:" in result.stdout


@pytest.mark.slow  # Compiles three populations distilled from a 3-teacher ensemble.
def test_shared_teacher_timing_times_own_and_shared_batches_against_single_runs(tmp_path,
                                                                               monkeypatch):
  monkeypatch.delenv("KD_JAX_MNIST_DIR", raising=False)  # --quick: random images either way.
  script = load_script("shared_teacher_timing")
  results = script.main(["--quick", "--members", "1,2", f"--out={tmp_path / 'timing.json'}"])
  assert [(c["members"], c["batches"]) for c in results["cases"]] == [
      (1, "own"), (2, "own"), (2, "shared")]
  assert results["cases"][0]["ratio_to_single_runs"] == 1.0
  assert all(c["epoch_s"] > 0 for c in results["cases"]) and results["teachers"] == 3
  assert "| 2 | shared |" in (tmp_path / "timing.md").read_text()


def test_optimizer_cost_script_times_the_teachers_update_three_ways(tmp_path):
  script = load_script("optimizer_cost")
  out = tmp_path / "cost.json"
  results = script.main(["--steps", "4", "--repeats", "1", f"--out={out}"])
  assert json.loads(out.read_text()) == results
  assert results["parameters"] == 784 * 1200 + 1200 * 1200 + 1200 * 10 + 1200 + 1200 + 10
  assert set(results["seconds"]) == {"gradients only", "optimizer", "optimizer and max-norm"}
  assert all(math.isfinite(s) and s > 0 for s in results["seconds"].values())
  assert results["floor_s"] > 0
  seconds = results["seconds"]
  assert results["fused_adam_estimate_s"] == pytest.approx(seconds["gradients only"] * 7 / 3)
  floor, estimate = results["floor_s"], results["fused_adam_estimate_s"]
  assert results["fused_adam_ratio"] == pytest.approx((floor + estimate) / floor)
  max_norm = seconds["optimizer and max-norm"] - seconds["optimizer"]
  assert results["with_max_norm_ratio"] == pytest.approx((floor + estimate + max_norm) / floor)
