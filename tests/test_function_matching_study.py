"""scripts/function_matching_study.py at tiny settings: every mode trains beside the others and
the long cell, the analysis compares them, and a second call trains nothing."""

import json
import os
import subprocess
import sys

import pytest

from kd_jax import preemption
from kd_jax.paper import verdicts
from conftest import REPO_ROOT, load_script


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
    assert cell["median_epoch_time_s"] > 0, name
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


@pytest.mark.slow  # Starts a Python process.
def test_a_signal_stops_the_study_with_one_line_and_the_commands_exit_code(tiny_mnist_dir,
                                                                          tmp_path):
  """Run as a script, the study handles a scheduler's SIGTERM as the commands do: the stage in
  flight stops (here the teachers, before their first epoch) and the process prints one line and
  exits 75, so a job script requeues it; no traceback."""
  script = REPO_ROOT / "scripts" / "function_matching_study.py"
  argv = [str(script), "--tiny", f"--workdir={tmp_path / 'runs'}", f"--out={tmp_path / 'out'}"]
  signalled = ("import os, runpy, signal, sys\nfrom kd_jax import preemption\n"
               "preemption.install()\nos.kill(os.getpid(), signal.SIGTERM)\n"
               f"sys.argv = {argv!r}\nrunpy.run_path(sys.argv[0], run_name='__main__')\n")
  result = subprocess.run([sys.executable, "-c", signalled], cwd=REPO_ROOT, capture_output=True,
                          text=True, env=dict(os.environ, KD_JAX_MNIST_DIR=str(tiny_mnist_dir)),
                          timeout=300, check=False)
  assert result.returncode == preemption.EXIT_PREEMPTED, result.stderr
  assert result.stderr.startswith("kd_jax: stopped: SIGTERM before the first epoch"), \
      result.stderr
  assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1


def test_modes_choose_the_cells_and_an_unknown_one_is_refused(tmp_path, capsys):
  """--modes picks the modes compared (the teachers and the long cell stay); a misspelt one is
  refused before anything trains."""
  script = load_script("function_matching_study")
  tiny = {"batch_size": 8}
  runs = script.plan(tmp_path, 1, 2, 3, tiny, ("fixed", "consistent"))
  assert list(runs) == ["teachers", "modes/fixed", "modes/consistent", "long/function_matching"]
  assert runs["long/function_matching"].num_epochs == 3 and runs["modes/fixed"].members == 2
  assert list(script.plan(tmp_path, 1, 2, 0, tiny, ())) == ["teachers"]
  with pytest.raises(SystemExit) as stopped:
    script.main(["--modes", "fixed,mixup", f"--workdir={tmp_path / 'runs'}"])
  assert stopped.value.code == 2 and "--modes: unknown ['mixup']" in capsys.readouterr().err
  assert not (tmp_path / "runs").exists()
