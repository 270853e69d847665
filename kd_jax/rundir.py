"""Run directories: which files a run holds, its config on disk, and one writer at a time.

RUN/config.json (the run's config, validated when read, with defaults for fields added since it
was written), RUN/population.json, the records a student or a resumed run is checked against
(data.json, teacher.json), the lock that keeps two writers apart, and the crash-safe replacement
of a run by --overwrite. The checkpoints inside RUN/checkpoints/ are `kd_jax.checkpointing`'s.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pathlib
import shutil
import socket
from typing import Any, Iterator

import ml_collections

from kd_jax import config_fields, config_lib, faults, parallelism, reporting
from kd_jax.errors import CheckpointError, ConfigError

CONFIG_FILE = "config.json"
POPULATION_FILE = "population.json"
CHECKPOINT_DIR = "checkpoints"
DATA_FILE = "data.json"  # Fingerprints of the data the run trained and was scored on.
TEACHER_FILE = "teacher.json"  # Which teacher (path, step, members, digest) a student learnt from.
METRICS_FILE = "metrics.jsonl"  # One JSON line per epoch (reporting.MetricsWriter).
EVAL_FILE = "eval.json"  # The evaluate command's report (kd_jax.evaluate).
TENSORBOARD_DIR = "tensorboard"
TEACHER_LOGITS_FILE = "teacher_logits.npy"  # A streamed run's cached teacher logits, by record,
TEACHER_LOGITS_RECORD = "teacher_logits.json"  # and which teacher and data made them.
RUN_FILES = (CONFIG_FILE, POPULATION_FILE, METRICS_FILE, EVAL_FILE, DATA_FILE, TEACHER_FILE,
             TEACHER_LOGITS_RECORD, TEACHER_LOGITS_FILE)
PRE_CONFIG_FILES = (DATA_FILE, TEACHER_FILE, POPULATION_FILE)  # save_config writes these first.
RECORD_NAMES = {DATA_FILE: "different data", TEACHER_FILE: "a different teacher"}
RECORD_NOTES = ("source", "workdir", "finished")  # Where things are, or notes: not compared.
LOCK_FILE = ".lock"
ASIDE_DIR = ".replaced"
CORRUPTED_DIR = "corrupted_checkpoints"  # Checkpoints that failed their checksums, kept aside.
RUN_DIRS = (CHECKPOINT_DIR, TENSORBOARD_DIR, CORRUPTED_DIR)
# Fields that say where data (or the teacher's stored outputs) live, or how often to save or
# evaluate: they may change when a run resumes.
# How many members run vmapped together changes float rounding at most, like the device count;
# how many streamed steps one call scans changes nothing (tests/test_streaming.py).
RESUMABLE_CHANGES = ("data.mnist_dir", "data.tfds_data_dir", "data.tfds_manual_dir",
                     "checkpoint.every_epochs", "checkpoint.max_to_keep", "member_batch",
                     "data.records_dir", "data.prefetch", "checkpoint.every_steps",
                     "data.steps_per_call",
                     "eval_every_epochs", "teacher_views_dir")
TMP_MARKER = ".orbax-checkpoint-tmp"


def save_config(workdir: str | pathlib.Path, config: ml_collections.ConfigDict,
                members: list[dict[str, Any]], records: dict[str, Any] | None = None) -> None:
  """Writes RUN/config.json and RUN/population.json (the members and their settings), and each
  of `records` (file name -> JSON: the data fingerprint, the teacher) before config.json, so a
  run with a config.json always has them."""
  workdir = pathlib.Path(workdir)
  for name, payload in (records or {}).items():
    reporting.write_json(workdir / name, payload)
  reporting.write_json(workdir / POPULATION_FILE,
                       {"members": members})
  reporting.write_json(workdir / CONFIG_FILE, json.loads(config.to_json_best_effort()))


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for key, value in flat.items():
    *parents, leaf = key.split(".")
    node = tree
    for parent in parents:
      node = node.setdefault(parent, {})
    node[leaf] = value
  return tree


def _defaults_for(saved: dict[str, Any]) -> dict[str, Any]:
  """Defaults of the fields added to kd_jax since runs were first saved (config_fields.ADDED_FIELDS),
  flattened: a run saved before one existed held, in effect, its default. Other missing fields
  stay missing, so validation names them rather than guessing."""
  defaults = config_lib.base_config()
  if "teacher_workdir" in saved:  # Distillation fields, also in a hard-label run that has them.
    defaults = config_lib.add_distillation(defaults)
  flat = _flatten(json.loads(defaults.to_json_best_effort()))
  return {k: v for k, v in flat.items() if k in config_fields.ADDED_FIELDS}


def load_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
  """RUN/config.json with defaults for fields added since it was written, validated: a
  hand-edited file with a missing or mistyped field is a one-line error naming it."""
  path = pathlib.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise CheckpointError(f"{path} does not exist: {workdir} is not a kd_jax run directory "
                          "(train one with `python -m kd_jax.train --workdir ...`).")
  try:
    saved = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path} is not valid JSON ({e}).") from e
  if not isinstance(saved, dict):
    raise CheckpointError(f"{path} does not hold a config (a JSON object).")
  flat = {**_defaults_for(saved), **_flatten(saved)}  # Both from JSON: tuples came as lists.
  flat = {k: tuple(v) if isinstance(v, list) else v for k, v in flat.items()}
  config = ml_collections.ConfigDict(_unflatten(flat))
  try:
    config_lib.validate(config)
  except ConfigError as e:
    raise CheckpointError(f"{path} is invalid: {e}") from e
  return config


def config_differences(saved: ml_collections.ConfigDict,
                       current: ml_collections.ConfigDict) -> list[str]:
  """Dotted names of fields that differ (ignoring RESUMABLE_CHANGES)."""
  old = _flatten(json.loads(saved.to_json_best_effort()))
  new = _flatten(json.loads(current.to_json_best_effort()))
  old = {**{k: v for k, v in _defaults_for(old).items() if k in new}, **old}
  old = {k: v for k, v in old.items()  # A field since removed, at its old default: the same run.
         if not (k not in new and config_fields.REMOVED_FIELDS.get(k, object()) == v)}
  return sorted(k for k in old.keys() | new.keys()
                if k not in RESUMABLE_CHANGES and old.get(k) != new.get(k))


def config_digest(config: ml_collections.ConfigDict) -> str:
  """12 hex digits naming a config: equal configs, equal digests, leaving out the fields a run may
  change when it resumes (RESUMABLE_CHANGES, such as the MNIST folder)."""
  flat = {k: v for k, v in _flatten(json.loads(config.to_json_best_effort())).items()
          if k not in RESUMABLE_CHANGES}
  return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------- one writer, safely


@contextlib.contextmanager
def locked(workdir: pathlib.Path) -> Iterator[None]:
  """Holds WORKDIR/.lock exclusively while a run writes there: one writer per workdir.

  A POSIX record lock (fcntl.lockf): the kernel drops it when its process dies, so a SIGKILL never
  leaves it stale, and NFS (v4, or v3 with lockd) and Lustre mounted with `flock` enforce it across
  hosts. The file holds the holder's PID and host, for the message a second writer gets. Only
  process 0 of a multi-process run locks. Creating the workdir here also checks that it can be
  written before anything expensive starts.
  """
  if not reporting.is_main_process():
    yield
    return
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    handle = open(workdir / LOCK_FILE, "a+", encoding="utf-8")  # pylint: disable=consider-using-with
  except OSError as e:
    raise CheckpointError(f"cannot write to the workdir {workdir}: {e.strerror or e}.") from e
  try:
    try:
      fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      handle.seek(0)
      holder = handle.read().strip() or "another process"
      raise CheckpointError(f"{workdir} is in use by {holder}: one run writes a workdir at a "
                            "time. Wait for it, stop it, or use another --workdir.") from e
    handle.seek(0)
    handle.truncate()
    handle.write(f"PID {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    yield
  finally:
    handle.close()  # Releases the lock.


def recover_replacement(workdir: pathlib.Path) -> None:
  """Finishes or undoes an `--overwrite` that a kill interrupted (see `set_aside`).

  WORKDIR/.replaced holds the old run while it is replaced; its config.json moves last, and the
  new run writes its own config.json only after that. So a config.json in both places means the
  new run started (the old one is deleted); anything else means it never did (the old run is
  moved back, and the command then decides afresh).
  """
  aside = workdir / ASIDE_DIR
  if not reporting.is_main_process() or not aside.is_dir():
    return
  if (aside / CONFIG_FILE).exists() and (workdir / CONFIG_FILE).exists():
    shutil.rmtree(aside)
    return
  for entry in aside.iterdir():  # The new run died before its config.json: it never started.
    new = workdir / entry.name
    if entry.name in PRE_CONFIG_FILES and new.is_file():  # Records it wrote first.
      new.unlink()
    elif new.is_dir() and not any(new.iterdir()):  # checkpoints/, created empty by orbax.
      new.rmdir()
  for entry in sorted(aside.iterdir()):
    if (workdir / entry.name).exists():
      raise CheckpointError(f"{workdir} holds both {entry.name} and {aside / entry.name} after an "
                            "interrupted --overwrite; remove the one that is not wanted.")
    entry.rename(workdir / entry.name)
  aside.rmdir()
  reporting.say(f"Warning: an interrupted --overwrite of {workdir} was undone; the previous run "
                "is back in place.")


def repair_interrupted_overwrite(workdir: str | pathlib.Path) -> None:
  """What a reader of a workdir does first: finishes or undoes an interrupted `--overwrite`
  (`recover_replacement`) under the workdir's lock, so a command that reads the run sees the old
  run or the new one, as training would. A run being written now holds the lock: that is
  reported, and the workdir left to its writer."""
  workdir = pathlib.Path(workdir)
  if (workdir / ASIDE_DIR).is_dir():
    with locked(workdir):
      recover_replacement(workdir)


def set_aside(workdir: pathlib.Path) -> None:
  """Moves the run in `workdir` into WORKDIR/.replaced (config.json last), to be deleted once the
  new run has written its config.json (`discard_set_aside`): a kill at any moment leaves the old
  run or the new one, never a mixture (see `recover_replacement`)."""
  if reporting.is_main_process():
    aside = workdir / ASIDE_DIR
    aside.mkdir()
    for name in (*RUN_DIRS, *RUN_FILES[::-1]):  # RUN_FILES starts with config.json.
      if (workdir / name).exists():
        (workdir / name).rename(aside / name)
        faults.point(f"set_aside:{name}")
  parallelism.sync_processes("kd_jax_set_aside")
  reporting.say(f"Replacing the previous run in {workdir} (--overwrite); it is deleted once the "
                "new one has started.")


def discard_set_aside(workdir: pathlib.Path) -> None:
  """Deletes the replaced run, now that the new one has written its config.json."""
  if reporting.is_main_process() and (workdir / ASIDE_DIR).is_dir():
    faults.point("discard_set_aside")
    shutil.rmtree(workdir / ASIDE_DIR)


def config_mismatch(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> str | None:
  """Why the run in `workdir` is not a run of `config` (which fields differ), or None when it is,
  or when the workdir holds no run. Cheap: checked before any data is read."""
  if not (workdir / CONFIG_FILE).exists():
    return None
  differences = config_differences(load_config(workdir), config)
  if not differences:
    return None
  shown = ", ".join(differences[:6]) + (" ..." if len(differences) > 6 else "")
  return f"a different config ({shown})"


def records_mismatch(workdir: pathlib.Path, records: dict[str, Any]) -> str | None:
  """Why the run in `workdir` did not train on these records (data.json, teacher.json: other
  data or another teacher), or None when they match or it holds no run."""
  if not (workdir / CONFIG_FILE).exists():
    return None
  for name, current in records.items():
    path = workdir / name
    if not path.exists():  # A run from before these records (or none): nothing to compare.
      continue
    saved = json.loads(path.read_text())
    fields = sorted(k for k in saved.keys() | current.keys()
                    if k not in RECORD_NOTES and saved.get(k) != current.get(k))
    if fields:
      return (f"{RECORD_NAMES[name]}: {', '.join(fields)} was "
              f"{', '.join(str(saved.get(f)) for f in fields)} when it trained, now "
              f"{', '.join(str(current.get(f)) for f in fields)}")
  return None


def remove_if_unused(workdir: pathlib.Path) -> None:
  """Removes `workdir` when it holds nothing but the lock (a run refused before writing)."""
  if reporting.is_main_process() and workdir.is_dir() and {
      p.name for p in workdir.iterdir()} <= {LOCK_FILE}:
    shutil.rmtree(workdir)


