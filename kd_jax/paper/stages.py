"""What the paper's multi-stage commands share: the one stage runner and its timings, and the
helpers that turn evaluation reports into the numbers the tables show.

Timings mean one thing everywhere: ROOT/timings.json holds each stage's wall seconds, summed over
every invocation that worked on it (one stopped by a signal or an error included), so a resumed
study reports the time its stages really took.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import statistics
import time
from typing import Any, Iterator

import ml_collections

from kd_jax import api, checkpointing, config_lib, evaluation, reporting
from kd_jax.errors import ConfigError
from kd_jax.paper import bias_correction


@contextlib.contextmanager
def timed_stage(root: pathlib.Path, name: str) -> Iterator[None]:
  """Adds the wall time of the block to stage `name` in ROOT/timings.json, however it ends."""
  start = time.perf_counter()
  try:
    yield
  finally:  # A stage stopped by a signal resumes later: its time so far counts too.
    timings = reporting.stage_timings(root)
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
    root.mkdir(parents=True, exist_ok=True)
    reporting.write_json(root / reporting.TIMINGS_FILE, timings)


def train_stage(root: pathlib.Path, name: str, config: ml_collections.ConfigDict,
                overwrite: bool = False) -> bool:
  """Trains stage `name` into ROOT/name unless it is finished (then it is skipped, untimed);
  returns whether it trained."""
  if not overwrite and checkpointing.finished_step(root / name, config) is not None:
    reporting.say(f"{root / name} is finished; skipped.")
    return False
  with timed_stage(root, name):
    api.train(config, root / name, overwrite=overwrite)
  return True


def run_stages(stages: dict[str, ml_collections.ConfigDict], root: pathlib.Path,
               overwrite: bool = False, corrections: dict[str, dict[str, Any]] | None = None,
               command: str = "reproduce") -> dict[str, float]:
  """Trains (then bias-corrects) every stage in order, skipping finished ones; returns
  ROOT/timings.json (see the module docstring)."""
  corrections = corrections or {}
  for name, run in stages.items():  # Every config is checked before the first one trains.
    try:
      config_lib.validate(run)
    except ConfigError as e:
      raise ConfigError(f"stage {name}: {e}") from e
  total = len(stages) + len(corrections)
  for number, name in enumerate([*stages, *corrections], start=1):
    reporting.say(f"== {command} {number}/{total}: {name} ==")
    if name in stages:
      train_stage(root, name, stages[name], overwrite)
      continue
    correction = corrections[name]
    with timed_stage(root, name):
      bias_correction.correct_run(root / correction["source"], root / name,
                                  correction["classes"], correction["offset"])
  return reporting.stage_timings(root)


def markdown_table(header: list[str], rows: list[list[Any]]) -> list[str]:
  """A markdown table's lines: the header, its rule, one line per row (cells as str)."""
  line = lambda cells: "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"
  return [line(header), "|" + "---|" * len(header), *(line(row) for row in rows)]


def mean_sd(values) -> dict[str, Any]:
  """Mean, sample standard deviation (0 for one value) and the values themselves."""
  values = [float(v) for v in values]
  return {"mean": statistics.mean(values),
          "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
          "n": len(values), "values": values}


def member_reports(report: dict[str, Any]) -> list[dict[str, Any]]:
  """eval.json's per-member dicts; a single model's report is its only member."""
  return report.get("members") or [report]


def member_errors(report: dict[str, Any], classes=None) -> list[int]:
  """Each member's test errors, on all classes or only on `classes`."""
  if classes is None:
    return [m["test_errors"] for m in member_reports(report)]
  return [sum(m["per_class_errors"][c] for c in classes) for m in member_reports(report)]


def transfer_fraction(alone: float, distilled: float, teacher: float) -> float | None:
  """(alone - distilled) / (alone - teacher): the share of the teacher's advantage transferred."""
  return (alone - distilled) / (alone - teacher) if alone != teacher else None


def evaluated(run: pathlib.Path, ensemble: str = "arithmetic",
              report_name: str = checkpointing.EVAL_FILE) -> dict[str, Any]:
  """The run's evaluation report, reused when it scored the run's latest checkpoint."""
  path = run / report_name
  steps = [int(p.name) for p in (run / checkpointing.CHECKPOINT_DIR).iterdir() if p.name.isdigit()]
  if path.exists():
    report = json.loads(path.read_text())
    if report.get("step") == max(steps) and report.get("ensemble_mean", ensemble) == ensemble:
      return report
  return evaluation.evaluate_checkpoint(run, ensemble=ensemble, report_name=report_name)


