"""The distillation-gap ablation (kd_jax.fidelity): cells as configs, stage order, the report."""

import json
import pathlib
import shutil

import pytest

from conftest import run_command
from kd_jax import config_fields, config_lib, configs, population
from kd_jax.paper import fidelity
from kd_jax.errors import CheckpointError, ConfigError

KEYS = {"teacher_errors", "distilled_errors_mean", "distilled_errors_sd", "alone_errors_mean",
        "transfer", "seeds", "student_epochs"}


def _changed(profile, cell: str) -> dict:
  """The fields a cell of the profile's config changes from the student, with their values."""
  return dict(profile.cells[cell])


def test_cells_are_the_paper_student_with_a_few_fields_changed(tmp_path):
  config = fidelity.load_config("gpu")
  runs = fidelity.stages(config, tmp_path)
  names = list(runs)
  # Hard-label cells need no teacher: first; then the teachers; then every distilled cell.
  first_teacher = names.index("teachers/sqrt15")
  assert all(not config_fields.is_distillation(runs[n]) for n in names[:first_teacher])
  assert all(config_fields.is_distillation(runs[n]) for n in names[first_teacher + 2:])
  paper = runs["cells/paper"]
  assert (paper.temperature, paper.alpha, paper.data.jitter) == (20.0, 0.9, 0)  # The paper's.
  assert paper.members == config.seeds
  assert paper.teacher_workdir == str(tmp_path / "teachers" / "sqrt15")
  assert runs["teachers/sqrt15"].model.max_norm == pytest.approx(15**0.5)
  assert runs["cells/teacher_maxnorm4"].teacher_workdir.endswith("maxnorm4")
  assert runs["cells/jittered_relabelled"].data.jitter == _changed(config, "jittered_relabelled")[
      "data.jitter"] != config.student.data.jitter
  assert runs["cells/no_t_squared"].soft_t_squared is False
  assert runs["cells/sgd_momentum"].optimizer == "sgd_momentum"
  sweep = _changed(config, "t_alpha")
  assert len(population.members(runs["cells/t_alpha"])) == config.seeds * len(
      sweep["sweep.temperature"]) * len(sweep["sweep.alpha"])
  assert runs["cells/longest"].num_epochs == _changed(config, "longest")["num_epochs"]
  assert runs["teachers/sqrt15"].to_dict() == config.teachers.sqrt15.to_dict()
  cpu_config = fidelity.load_config("cpu")
  cpu = fidelity.stages(cpu_config, tmp_path)
  assert list(k for k in cpu if k.startswith("teachers/")) == ["teachers/quick"]
  assert cpu["cells/paper"].num_epochs == cpu_config.student.num_epochs
  assert cpu["cells/paper"].teacher_workdir.endswith("quick")
  long_config = fidelity.load_config("cpu_long")
  long = fidelity.stages(long_config, tmp_path)
  assert set(long) == {"teachers/cpu_long", "teachers/ensemble3", "teachers/sqrt15",
                       "cells/alone", "cells/alone_longer", "cells/alone_jittered", "cells/paper",
                       "cells/paper_ensemble", "cells/paper_ensemble_longer",
                       "cells/jittered_relabelled",
                       "cells/jittered_relabelled_longer", "cells/jittered_relabelled_longest",
                       "cells/jittered_relabelled_ensemble", "cells/teacher_sqrt15"}
  ensemble = long["teachers/ensemble3"]
  assert ensemble.members > 1 and long["teachers/cpu_long"].members == 1
  assert ensemble.to_dict() == {**long["teachers/cpu_long"].to_dict(), "members": ensemble.members}
  assert [m["seed"] for m in population.members(ensemble)] == list(
      range(ensemble.seed, ensemble.seed + ensemble.members))  # Member 0 is the cpu_long teacher.
  for cell in ("paper_ensemble", "paper_ensemble_longer", "jittered_relabelled_ensemble"):
    assert long[f"cells/{cell}"].teacher_workdir == str(tmp_path / "teachers" / "ensemble3")
  # decisive: configs/teacher_ensemble.py's three teachers (those of the first cpu
  # reproduction, which shared the run; its power plan now trains six), member 2 in eval mode
  # beside the same student under 10 dropout masks per image.
  decisive_config = fidelity.load_config("decisive")
  decisive = fidelity.stages(decisive_config, tmp_path)
  assert set(decisive) == {"teachers/ensemble3", "cells/paper", "cells/dropout_masks"}
  assert decisive["teachers/ensemble3"].to_dict() == configs.get("teacher_ensemble").to_dict()
  for run in decisive.values():
    config_lib.validate(run)
  masked = decisive["cells/dropout_masks"].to_dict()
  masks = _changed(decisive_config, "dropout_masks")
  assert masked.pop("teacher_dropout_masks") == masks["teacher_dropout_masks"] > 1
  assert masked["teacher_members"] == masks["teacher_members"] == _changed(
      decisive_config, "paper")["teacher_members"]
  assert {**decisive["cells/paper"].to_dict(), "teacher_dropout_masks": None} == {
      **masked, "teacher_dropout_masks": None}
  # Both teachers train as long, on the same jittered images, with their own recipes' dropout.
  ours, paper_teacher = long["teachers/cpu_long"], long["teachers/sqrt15"]
  assert (paper_teacher.num_epochs, paper_teacher.data.jitter) == (
      ours.num_epochs, ours.data.jitter) and ours.data.jitter > 0
  for run, recipe in ((ours, "teacher"), (paper_teacher, "paper_teacher")):
    model = configs.get(recipe).model
    assert (run.model.input_dropout, run.model.hidden_dropout) == (model.input_dropout,
                                                                   model.hidden_dropout)
  assert long["cells/teacher_sqrt15"].teacher_workdir.endswith("sqrt15")
  assert {run.num_epochs for name, run in long.items() if name.startswith("cells/")} == {
      dict(changes).get("num_epochs", long_config.student.num_epochs)
      for changes in long_config.cells.values()}
  for cell in ("jittered_relabelled_longer", "jittered_relabelled_longest"):
    assert long[f"cells/{cell}"].data.jitter == long["cells/jittered_relabelled"].data.jitter > 0
  for run in [*runs.values(), *long.values()]:
    config_lib.validate(run)
  with pytest.raises(ConfigError, match="does not have"):
    fidelity.cell_config(config, tmp_path, (("model.width", 3),))
  with pytest.raises(ConfigError, match="names teacher 'big'"):
    fidelity.cell_config(config, tmp_path, (("teacher", "big"),))
  with pytest.raises(CheckpointError, match="no stage of this profile has finished"):
    fidelity.finished(runs, tmp_path)  # --report_only on a study not yet run.


@pytest.mark.slow
def test_tiny_ablation_end_to_end(tmp_path, tiny_mnist_dir):
  run_command("fidelity", "--profile=tiny", f"--workdir={tmp_path}",
              f"--teachers_dir={tmp_path / 'teachers_store'}", mnist_dir=tiny_mnist_dir)
  results = json.loads((tmp_path / "results.json").read_text())
  tiny = fidelity.load_config("tiny")
  assert set(results["teachers"]) == set(tiny.teachers)
  cells = results["cells"]
  sweep = dict(tiny.cells.t_alpha)
  assert [(r["temperature"], r["alpha"]) for r in cells["t_alpha"]] == [
      (t, a) for t in sweep["sweep.temperature"] for a in sweep["sweep.alpha"]]
  assert cells["alone_jittered"][0]["paper_protocol"] is False
  for name, rows in cells.items():
    for row in rows:
      assert row["test_errors"]["n"] == tiny.seeds
      assert ("train_agreement" in row) == (row["teacher"] is not None), name
      assert ("test_agreement" in row) == (row["teacher"] is not None), name
  assert KEYS <= set(results["paper_protocol"]) and KEYS <= set(results["best_overall"])
  assert results["paper_protocol"]["cell"] in ("paper", "t_alpha", "dropout_masks")
  assert "† a jittered transfer set" in (tmp_path / "RESULTS.md").read_text()
  assert pathlib.Path(tmp_path / "cells" / "paper" / "eval.json").exists()
  assert (tmp_path / "test_errors.png").stat().st_size > 1000

  # --report_only trains nothing: an unfinished cell is left out, not trained.
  shutil.rmtree(tmp_path / "cells" / "alone_jittered")
  (tmp_path / "results.json").unlink()
  result = run_command("fidelity", "--profile=tiny", f"--workdir={tmp_path}", "--report_only",
                       f"--teachers_dir={tmp_path / 'teachers_store'}", mnist_dir=tiny_mnist_dir)
  assert "left out: cells/alone_jittered." in result.stdout
  assert not (tmp_path / "cells" / "alone_jittered").exists()
  partial = json.loads((tmp_path / "results.json").read_text())
  assert set(partial["cells"]) == set(cells) - {"alone_jittered"}
  assert partial["paper_protocol"] == results["paper_protocol"]
  assert "alone_jittered" not in (tmp_path / "RESULTS.md").read_text()


def test_shipped_configs_are_the_measured_cells(tmp_path):
  """The docstrings of configs/*.py quote these cells' numbers: the configs must be those runs."""
  long = fidelity.stages(fidelity.load_config("cpu_long"), tmp_path)
  pairs = {"teacher": "teachers/cpu_long", "teacher_ensemble": "teachers/ensemble3",
           "distill": "cells/paper", "distill_jittered": "cells/jittered_relabelled_ensemble"}
  for config_name, stage in pairs.items():
    shipped = configs.module(config_name).get_config().to_dict()
    measured = long[stage].to_dict()
    if "teacher_workdir" in measured:  # Cells run 3 seeds and name their teacher's stage.
      measured.update(members=1, teacher_workdir=shipped["teacher_workdir"])
    assert measured == shipped, config_name
