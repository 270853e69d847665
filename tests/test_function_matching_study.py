"""scripts/function_matching_study.py at tiny settings: every mode trains beside the others and
the long cell, the analysis compares them, and a second call trains nothing."""

import json

import pytest

from kd_jax.paper import verdicts
from conftest import load_script


@pytest.mark.slow  # Six small distillations and a teacher population.
def test_the_study_trains_every_mode_compares_them_and_resumes(tiny_mnist_dir, tmp_path,
                                                               monkeypatch):
  monkeypatch.setenv("KD_JAX_MNIST_DIR", str(tiny_mnist_dir))
  script = load_script("function_matching_study")
  args = ["--tiny", "--epochs", "1", "--seeds", "2", "--long_epochs", "2",
          f"--workdir={tmp_path / 'runs'}", f"--teachers_dir={tmp_path / 'teachers'}"]
  results = script.main([*args, f"--out={tmp_path / 'out'}"])
  assert set(results["cells"]) == {f"modes/{m}" for m in script.MODES} | {
      "long/function_matching"}
  for name, cell in results["cells"].items():
    assert cell["test_errors"]["n"] == 2 and len(cell["test_errors"]["values"]) == 2, name
    assert len(cell["mean_test_errors"]) == len(cell["epochs"]), name
    assert len(cell["teacher_agreement"]) == 2, name  # Fit to the teacher, per seed.
  assert results["cells"]["long/function_matching"]["epochs"] == [2]  # Evaluated at the end.
  assert [c["verdict"] in (verdicts.HOLDS, verdicts.FAILS, verdicts.UNDECIDED)
          for c in results["comparisons"]] == [True] * len(script.COMPARISONS)
  teacher = results["teacher_test_errors"]
  assert len(teacher["members"]) == 3 and 0 <= teacher["ensemble"] <= 200
  written = json.loads((tmp_path / "out" / "results.json").read_text())
  assert written["cells"].keys() == results["cells"].keys() and written["code_versions"]
  assert "| modes/function_matching |" in (tmp_path / "out" / "RESULTS.md").read_text()
  again = script.main([*args, f"--out={tmp_path / 'out2'}"])
  assert again["wall_time_s"] == results["wall_time_s"]  # Nothing trained again.
