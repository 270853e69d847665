"""Why does the distilled 2x800 fall short of the paper's 74 errors? The ablation, one command.

  python -m kd_jax.fidelity --profile cpu --workdir RUN

Stages (each an ordinary, resumable run directory; finished ones are skipped): RUN/teachers/<name>
for each teacher of the config, then RUN/cells/<name>, each the paper's distilled student with a
few fields changed (see configs/fidelity.py), `seeds` seeds as one population. Every cell is
scored on the test set and, when distilled, by its fit to the teacher on the transfer set and on
the test set (agreement of top classes, KL(teacher || student): `evaluation.fit_to_teacher`),
which tells "cannot fit the teacher" from "fits it, but the transfer set covers too little".
Writes RUN/results.json (with `paper_protocol` and `best_overall`), RUN/RESULTS.md and
RUN/test_errors.png (every stage's curve, a cell's as its seeds' mean). --report_only trains
nothing and reports the finished stages alone (a partial study, e.g. while the rest trains).
"""

from __future__ import annotations

import itertools
import pathlib
import time
from typing import Any

import ml_collections
from absl import flags

from kd_jax import checkpointing, cli, config_fields, configs, plots, reporting
from kd_jax.paper import figures, stages as study
from kd_jax.errors import CheckpointError, ConfigError

PAPER = figures.PAPER["table"]  # The MNIST table's teacher, distilled and alone errors.
JITTER_DEPARTS = "a jittered transfer set relabelled by the teacher departs from the paper's"


def define_flags() -> None:
  """The command's flags (only when run as a command: importing this module defines none)."""
  flags.DEFINE_enum("profile", "cpu", configs.module("fidelity").PROFILES,
                    "Schedules: configs/fidelity.py.")
  flags.DEFINE_string("workdir", None, "Root folder of the stages.", required=True)
  study.define_teachers_dir_flag()
  flags.DEFINE_bool("report_only", False, "Train nothing: write the report from the finished "
                    "stages alone, leaving the others out.")


def load_config(profile: str) -> ml_collections.ConfigDict:
  """configs/fidelity.py's config for `profile`."""
  return configs.module("fidelity").get_config(profile)


def cell_config(config: ml_collections.ConfigDict, root: pathlib.Path,
                changes: tuple) -> ml_collections.ConfigDict:
  """The student with `changes` ((dotted field, value), ...) applied; `teacher` picks a stage."""
  run = config.student.copy_and_resolve_references()
  run.members = config.seeds
  run.teacher_workdir = str(root / "teachers" / config.teacher)
  for field, value in changes:
    if field == "teacher":
      if value not in config.teachers:
        raise ConfigError(f"a cell names teacher {value!r}; the config has {list(config.teachers)}.")
      run.teacher_workdir = str(root / "teachers" / value)
      continue
    try:
      configs.override(run, **{field: value})
    except KeyError as e:
      raise ConfigError(f"a cell changes config.{field}, which the student config does not "
                        "have.") from e
  return run


def stages(config: ml_collections.ConfigDict,
           root: pathlib.Path) -> dict[str, ml_collections.ConfigDict]:
  """Students on hard labels first (they need no teacher), then the teachers, then the rest."""
  teachers = {f"teachers/{name}": teacher for name, teacher in config.teachers.items()}
  cells = {f"cells/{name}": cell_config(config, root, tuple(changes))
           for name, changes in config.cells.items()}
  alone = {k: v for k, v in cells.items() if not config_fields.is_distillation(v)}
  return {**alone, **teachers, **{k: v for k, v in cells.items() if k not in alone}}


def finished(runs: dict[str, ml_collections.ConfigDict],
             root: pathlib.Path) -> dict[str, ml_collections.ConfigDict]:
  """The stages that completed all their epochs under ROOT; an error if none has."""
  done = {name: run for name, run in runs.items()
          if checkpointing.finished_step(root / name, run) is not None}
  if not done:
    raise CheckpointError(f"no stage of this profile has finished under {root}; nothing to report.")
  reporting.say(f"Reporting {len(done)} finished stage(s) of {len(runs)}; left out: "
                f"{', '.join(name for name in runs if name not in done) or 'none'}.")
  return done


def cell_results(report: dict[str, Any], run: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  """One row per sweep point of a cell: its settings, test errors (mean, sd over seeds) and, when
  distilled, the mean fit to the teacher on the transfer set."""
  members = study.member_reports(report)
  fit = report.get("transfer_fit") or {}
  key = lambda m: (m.get("temperature"), m.get("alpha"), m.get("learning_rate"))
  rows = []
  for point, group in itertools.groupby(sorted(range(len(members)), key=lambda i: key(members[i])),
                                        key=lambda i: key(members[i])):
    group = list(group)
    row = {"temperature": point[0], "alpha": point[1], "learning_rate": point[2],
           "student_epochs": run.num_epochs,
           "test_errors": study.mean_sd([members[i]["test_errors"] for i in group])}
    for figure in ("train_agreement", "train_kl", "test_agreement", "test_kl"):
      if figure in fit:  # Test-set figures are absent from reports made before they were.
        row[figure] = study.mean_sd([fit[figure][i] for i in group])
    rows.append(row)
  return rows


def summarise(config: ml_collections.ConfigDict, root: pathlib.Path,
              runs: dict[str, ml_collections.ConfigDict]) -> dict[str, Any]:
  """Every cell's rows with its transfer fraction against the hard-label cell of equal epochs,
  the teachers' errors, and the best cell under the paper's protocol and overall."""
  reports = {name: study.evaluated(root / name) for name in runs}
  teachers = {name.split("/", 1)[1]: reports[name]["test_errors"]
              for name in runs if name.startswith("teachers/")}
  alone = {run.num_epochs: cell_results(reports[name], run)[0]["test_errors"]["mean"]
           for name, run in runs.items()
           if name.startswith("cells/") and not config_fields.is_distillation(run)
           and not run.data.jitter}
  cells = {}
  for name, run in runs.items():
    if not name.startswith("cells/"):
      continue
    rows = cell_results(reports[name], run)
    teacher = pathlib.Path(run.teacher_workdir).name if run.teacher_workdir else None
    chosen = tuple(run.get("teacher_members", ()))
    if teacher in teachers and chosen:  # Some members of a population teacher: theirs.
      teacher_report = reports[f"teachers/{teacher}"]
      teacher = f"{teacher}[{','.join(map(str, chosen))}]"
      teachers[teacher] = (study.member_errors(teacher_report)[chosen[0]] if len(chosen) == 1
                           else None)  # Several members' own ensemble is not scored.
    for row in rows:
      row["teacher"] = teacher
      row["teacher_errors"] = teachers.get(teacher)
      row["paper_protocol"] = not run.data.jitter
      reference = alone.get(run.num_epochs)
      row["alone_errors_mean"] = reference
      row["transfer"] = (study.transfer_fraction(reference, row["test_errors"]["mean"],
                                                     teachers[teacher])
                         if teachers.get(teacher) is not None and reference is not None
                         else None)
    cells[name.split("/", 1)[1]] = rows

  def best(protocol_only: bool) -> dict[str, Any] | None:
    candidates = [(cell, row) for cell, rows in cells.items() for row in rows
                  if row["teacher"] and (row["paper_protocol"] or not protocol_only)]
    if not candidates:
      return None
    cell, row = min(candidates, key=lambda c: c[1]["test_errors"]["mean"])
    return {"cell": cell, "temperature": row["temperature"], "alpha": row["alpha"],
            "teacher_errors": row["teacher_errors"],
            "distilled_errors_mean": row["test_errors"]["mean"],
            "distilled_errors_sd": row["test_errors"]["sd"],
            "alone_errors_mean": row["alone_errors_mean"], "transfer": row["transfer"],
            "seeds": row["test_errors"]["n"], "student_epochs": row["student_epochs"]}

  return {"teachers": teachers, "cells": cells, "paper_protocol": best(True),
          "best_overall": best(False)}


def render_markdown(results: dict[str, Any]) -> str:
  machine = results["machine"]
  lines = [f"# The distillation gap: ablation ({results['profile']} profile)", "",
           f"Machine: {reporting.describe_machine(machine)}; code {results['code_version']}; "
           "wall time "
           f"{sum(results['wall_time_s'].values()) / 60:.1f} min. Test errors, mean ± "
           "sd over seeds; fit to the teacher on the transfer set (top-class agreement, "
           "KL(teacher || student) at T = 1) and on the test set; "
           "transfer = (alone − distilled) / (alone − teacher) "
           f"against the hard-label cell of equal epochs. Paper: teacher {PAPER['teacher_errors']}"
           f", distilled {PAPER['distilled_errors']}, alone {PAPER['alone_errors']}, transfer "
           f"{PAPER['transfer']}.", "",
           "Teachers: " + ", ".join(f"{name} {'—' if errors is None else errors}"
                                    for name, errors in results["teachers"].items()) + ".", ""]
  rows = []
  for cell, cell_rows in results["cells"].items():
    for row in cell_rows:
      stats = row["test_errors"]
      fit = [value for split in ("train", "test") for value in (
          (f"{100 * row[f'{split}_agreement']['mean']:.2f}%", f"{row[f'{split}_kl']['mean']:.4f}")
          if f"{split}_agreement" in row else ("—", "—"))]
      rows.append([f"{cell}{'' if row['paper_protocol'] else ' †'}",
                   row["temperature"] if row["temperature"] is not None else "—",
                   row["alpha"] if row["alpha"] is not None else "—", row["student_epochs"],
                   f"{stats['mean']:.1f} ± {stats['sd']:.1f} (n={stats['n']})", *fit,
                   "" if row["transfer"] is None else f"{row['transfer']:.2f}"])
  lines += study.markdown_table(["cell", "T", "alpha", "epochs", "test errors",
                                 "train agreement", "train KL", "test agreement", "test KL",
                                 "transfer"], rows)
  lines += ["", f"† {JITTER_DEPARTS} protocol.", ""]
  for key, label in (("paper_protocol", "under the paper's protocol"), ("best_overall", "overall")):
    best = results[key]
    if best:
      transfer = "—" if best["transfer"] is None else f"{best['transfer']:.2f}"
      lines.append(f"- Best {label}: {best['cell']} (T {best['temperature']}, "
                   f"alpha {best['alpha']}, {best['student_epochs']} epochs): "
                   f"{best['distilled_errors_mean']:.1f} ± {best['distilled_errors_sd']:.1f} "
                   f"errors, teacher {best['teacher_errors']}, transfer {transfer}.")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  config = load_config(flags.FLAGS.profile)
  root = pathlib.Path(flags.FLAGS.workdir)
  start = time.perf_counter()
  runs = stages(config, root)
  if flags.FLAGS.report_only:
    runs = finished(runs, root)
    timings = {name: seconds for name, seconds in reporting.stage_timings(root).items()
               if name in runs}
  else:
    timings = study.run_stages(runs, root, flags.FLAGS.overwrite, command="fidelity",
                               shared=tuple(name for name in runs if name.startswith("teachers/")),
                               teachers_dir=study.teachers_dir_flag())
  reporting.say("== fidelity: evaluating every stage ==")
  results = {"profile": config.profile, "machine": reporting.machine(),
             "code_version": reporting.code_version(), "wall_time_s": timings, "paper": PAPER,
             **summarise(config, root, runs)}
  reporting.write_json(root / "results.json", results)
  (root / "RESULTS.md").write_text(render_markdown(results))
  plots.test_errors(root, list(runs))
  reporting.say(f"Done in {(time.perf_counter() - start) / 60:.1f} min (this invocation). "
                f"Written: {root / 'RESULTS.md'}, {root / 'results.json'}, "
                f"{root / 'test_errors.png'}.")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
