"""What the paper's multi-stage commands share: the one stage runner and its timings, and the
helpers that turn evaluation reports and per-epoch metrics into the numbers the tables show.

Timings mean one thing everywhere: ROOT/timings.json holds each stage's wall seconds, summed over
every invocation that worked on it (one stopped by a signal or an error included), so a resumed
study reports the time its stages really took.

Teachers are shared between studies: a teacher stage trains into TEACHERS/teacher-<digest of its
config> (`shared_stage_dir`) and ROOT/<stage> links there, so a second study whose teacher config
is the same (reproduce and fidelity, or two roots of one study) finds the run finished and trains
no teacher; every reader still finds the stage at ROOT/<stage>.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import pathlib
import statistics
import time
from typing import Any, Iterator

import ml_collections
import numpy as np
from absl import flags

from kd_jax import api, checkpointing, config_lib, evaluate, reporting, rundir
from kd_jax.errors import CheckpointError, ConfigError
from kd_jax.paper import bias_correction

# A study script's `--tiny` runs: small batches of a small IDX folder, so its test takes seconds.
TINY_OVERRIDES = {"batch_size": 32, "eval_batch_size": 40, "data__check_counts": False}


@contextlib.contextmanager
def timed_stage(root: pathlib.Path, name: str) -> Iterator[None]:
  """Adds the wall time of the block to stage `name` in ROOT/timings.json, however it ends, and
  the code version and CPU it ran on to ROOT/code_versions.json (`record_code_version`) unless
  it was refused (a config or checkpoint error: that code trained nothing)."""
  start, refused = time.perf_counter(), False
  try:
    yield
  except (ConfigError, CheckpointError):
    refused = True
    raise
  finally:  # A stage stopped by a signal resumes later: its time so far counts too.
    if not refused:
      record_code_version(root, name)
    timings = reporting.stage_timings(root)
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
    root.mkdir(parents=True, exist_ok=True)
    reporting.write_json(root / reporting.TIMINGS_FILE, timings)


CODE_VERSIONS_FILE = "code_versions.json"  # Per stage: every code version and CPU that worked on it.


def record_code_version(root: pathlib.Path, name: str) -> None:
  """Adds this invocation's code version and host CPU to stage `name`'s list in
  ROOT/code_versions.json (once each), so a run resumed across commits or machines names them
  all."""
  versions = code_versions(root)
  entry = f"{reporting.code_version()} on {reporting.describe_machine(reporting.machine())}"
  if entry not in versions.setdefault(name, []):
    versions[name].append(entry)
    root.mkdir(parents=True, exist_ok=True)
    reporting.write_json(root / CODE_VERSIONS_FILE, versions)


def code_versions(root: pathlib.Path) -> dict[str, list[str]]:
  """ROOT/code_versions.json: per stage, the code versions and CPUs that trained it (empty for a
  study run before it was kept)."""
  path = root / CODE_VERSIONS_FILE
  return json.loads(path.read_text()) if path.exists() else {}


def train_stage(root: pathlib.Path, name: str, config: ml_collections.ConfigDict,
                overwrite: bool = False, directory: pathlib.Path | None = None) -> bool:
  """Trains stage `name` into `directory` (default ROOT/name) unless it is finished (then it is
  skipped, untimed); returns whether it trained."""
  directory = directory or root / name
  if not overwrite and checkpointing.finished_step(directory, config) is not None:
    reporting.say(f"{directory} is finished; skipped.")
    return False
  with timed_stage(root, name):
    api.train(config, directory, overwrite=overwrite)
  return True


def holds_config(run: pathlib.Path, config: ml_collections.ConfigDict) -> bool:
  """Whether `run` holds a run of `config`, compared as training compares them (a field added to
  the defaults since it trained does not count); False for a folder without a readable one."""
  try:
    return ((run / rundir.CONFIG_FILE).exists()
            and not rundir.config_differences(rundir.load_config(run), config))
  except CheckpointError:
    return False


def shared_stage_dir(teachers_dir: pathlib.Path, config: ml_collections.ConfigDict
                     ) -> pathlib.Path:
  """Where a teacher with this config trains, whichever study asks for it: a finished run of it
  under `teachers_dir`, else an unfinished one, else TEACHERS/teacher-<digest of the config>."""
  runs = [run for run in sorted(teachers_dir.glob("teacher-*")) if holds_config(run, config)] \
      if teachers_dir.is_dir() else []
  finished = [run for run in runs if checkpointing.finished_step(run, config) is not None]
  return (finished or runs or
          [teachers_dir / f"teacher-{rundir.config_digest(config)}"])[0]


def link_stage(root: pathlib.Path, name: str, config: ml_collections.ConfigDict,
               teachers_dir: pathlib.Path, overwrite: bool = False) -> pathlib.Path:
  """The directory shared stage `name` trains in, with ROOT/name a (relative) link to it: the run
  the link already names when it holds this config; else the shared run of this config
  (`shared_stage_dir`); ROOT/name itself when it is a real folder (a study that trained its
  teacher in place). A link to a run of another config is refused, since the study's finished
  students learnt from it, unless `overwrite` starts the study over."""
  link = root / name
  if link.exists() and not link.is_symlink():
    return link
  if link.exists() and (link / rundir.CONFIG_FILE).exists():
    if holds_config(link, config):
      return link.resolve()
    if not overwrite:
      raise ConfigError(f"{link} links to {link.resolve()}, a run of another config, from which "
                        "this study's students learnt: give --overwrite to start the study over "
                        "with this config's teacher, or another --workdir.")
  target = shared_stage_dir(teachers_dir, config).absolute()
  link.parent.mkdir(parents=True, exist_ok=True)
  link.unlink(missing_ok=True)
  link.symlink_to(os.path.relpath(target, link.parent.absolute()), target_is_directory=True)
  return target


def add_tiny_argument(parser: argparse.ArgumentParser) -> None:
  """The `--tiny` option of a study script (read back with `tiny_overrides`)."""
  parser.add_argument("--tiny", action="store_true",
                      help="the tests' settings: small batches of a small IDX folder")


def tiny_overrides(args: argparse.Namespace) -> dict[str, Any]:
  """The config overrides `--tiny` asks for (none without it)."""
  return dict(TINY_OVERRIDES) if args.tiny else {}


def define_teachers_dir_flag() -> None:
  """--teachers_dir, the studies' shared teacher folder (defined only when a command runs)."""
  flags.DEFINE_string("teachers_dir", None, "Folder of the teachers every study shares, one run "
                      "per teacher config (default: WORKDIR/../teachers).")


def teachers_dir_flag() -> pathlib.Path | None:
  return pathlib.Path(flags.FLAGS.teachers_dir) if flags.FLAGS.teachers_dir else None


def run_stages(stages: dict[str, ml_collections.ConfigDict], root: pathlib.Path,
               overwrite: bool = False, corrections: dict[str, dict[str, Any]] | None = None,
               command: str = "reproduce", shared: tuple[str, ...] = (),
               teachers_dir: pathlib.Path | None = None) -> dict[str, float]:
  """Trains (then bias-corrects) every stage in order, skipping finished ones; returns
  ROOT/timings.json (see the module docstring). The stages named in `shared` (teachers) train
  under `teachers_dir` (default ROOT/../teachers), one run per distinct config, which
  `overwrite` does not retrain (it may only re-point ROOT/name at another config's run)."""
  corrections = corrections or {}
  teachers_dir = teachers_dir or root.absolute().parent / "teachers"
  for name, run in stages.items():  # Every config is checked before the first one trains.
    try:
      config_lib.validate(run)
    except ConfigError as e:
      raise ConfigError(f"stage {name}: {e}") from e
  total = len(stages) + len(corrections)
  for number, name in enumerate([*stages, *corrections], start=1):
    reporting.say(f"== {command} {number}/{total}: {name} ==")
    if name in shared:  # Never overwritten: a run of the same config is the same teacher.
      train_stage(root, name, stages[name], False,
                  link_stage(root, name, stages[name], teachers_dir, overwrite))
      continue
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
              report_name: str = rundir.EVAL_FILE) -> dict[str, Any]:
  """The run's evaluation report, reused when it scored the run's latest checkpoint."""
  path = run / report_name
  steps = [int(p.name) for p in (run / rundir.CHECKPOINT_DIR).iterdir() if p.name.isdigit()]
  if path.exists():
    report = json.loads(path.read_text())
    if report.get("step") == max(steps) and report.get("ensemble_mean", ensemble) == ensemble:
      return report
  return evaluate.evaluate_checkpoint(run, ensemble=ensemble, report_name=report_name)


def metrics_curves(run: pathlib.Path) -> dict[str, np.ndarray]:
  """step and epoch [E], per-member test (and, when the run has them, validation) errors [E, P]
  and a population's ensemble test errors [E, 1] from RUN/metrics.jsonl's evaluated epochs."""
  records = [r for r in reporting.read_metrics(run / rundir.METRICS_FILE) if "test_errors" in r]
  as_matrix = lambda key: np.array([np.atleast_1d(r[key]) for r in records], float)
  return {"step": np.array([r["step"] for r in records]),
          "epoch": np.array([r["epoch"] for r in records]),
          **{key: as_matrix(key) for key in ("test_errors", "validation_errors",
                                             "ensemble_test_errors") if key in records[0]}}


TAIL_FRACTION = 0.1  # "Over the last 10% of epochs": each member's mean test errors there.


def curve_errors(run: pathlib.Path, tail: bool, key: str = "test_errors") -> np.ndarray:
  """Per member (or one ensemble figure): test errors at the run's last epoch, or (tail) their
  mean over the epochs of its last TAIL_FRACTION (by epoch number, so an epoch whose line a kill
  cut off leaves a gap rather than widening the window)."""
  curves = metrics_curves(run)
  num_epochs = rundir.load_config(run).num_epochs
  window = max(1, math.ceil(TAIL_FRACTION * num_epochs)) if tail else 1
  selected = curves["epoch"] > num_epochs - window
  if not selected.any():  # The window's only line was cut off: the last one written.
    selected = curves["epoch"] == curves["epoch"][-1]
  return curves[key][selected].mean(axis=0)
