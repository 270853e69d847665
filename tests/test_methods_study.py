"""scripts/methods_study.py at tiny settings: every stage trains, the analysis reads them all."""

import json
import logging

import pytest

from kd_jax.paper import verdicts
from conftest import load_script


@pytest.mark.slow  # Nine small runs, CNNs among them.
def test_the_methods_study_trains_every_stage_and_tests_each_against_kd(tiny_mnist_dir, tmp_path,
                                                                        monkeypatch, caplog):
  monkeypatch.setenv("KD_JAX_MNIST_DIR", str(tiny_mnist_dir))
  script = load_script("methods_study")
  args = ["--tiny", "--epochs", "1", "--seeds", "2", "--methods", "dkd,fitnets",
          f"--workdir={tmp_path / 'runs'}"]
  with caplog.at_level(logging.WARNING):
    results = script.main([*args, f"--out={tmp_path / 'out'}"])
  assert not [r for r in caplog.records if "read only" in r.getMessage().replace("_", " ")]
  students = results["students"]
  assert set(students) == {f"cnn/{m}" for m in ("alone", "kd", "dkd", "fitnets")} | {
      f"mlp/{m}" for m in ("alone", "kd", "dkd")}
  for name, entry in students.items():
    assert entry["test_errors"]["n"] == 2 and entry["epoch_s"] > 0, name
    assert ("against_kd" in entry) == (entry["method"] != "kd"), name
    if "against_kd" in entry:
      assert entry["against_kd"]["verdict"] in (verdicts.HOLDS, verdicts.FAILS,
                                                verdicts.UNDECIDED)
  assert students["cnn/kd"]["epoch_time_ratio_to_kd"] == 1.0
  # The screening sweeps: one member per value, in the order swept, each with its own errors.
  assert set(results["sweeps"]) == {"dkd", "fitnets"}
  for name, sweep in results["sweeps"].items():
    assert sweep["values"] == list(script.SWEEPS[name][1]), name
    assert len(sweep["test_errors"]) == 3 and all(e >= 0 for e in sweep["test_errors"]), name
  written = json.loads((tmp_path / "out" / "results.json").read_text())
  assert written["students"].keys() == students.keys() and written["code_versions"]
  report = (tmp_path / "out" / "RESULTS.md").read_text()
  assert "| cnn/fitnets |" in report and "| fitnets | weight | 1: " in report
  # Resumed, nothing trains again.
  again = script.main([*args, f"--out={tmp_path / 'out2'}"])
  assert again["wall_time_s"] == results["wall_time_s"]
