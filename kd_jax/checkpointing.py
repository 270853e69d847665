"""Run directories: RUN/config.json, RUN/population.json and orbax checkpoints in RUN/checkpoints/.

Everything that reads or prepares a run directory lives here. Each checkpoint step holds these
items so that readers take only what they need:
  params       the members' parameters, stacked on a leading member axis [P, ...] (with
               model_state, all that distillation and evaluation restore; P = 1 for one model),
  model_state  only for models with mutable collections: those collections (BatchNorm's
               batch_stats), stacked the same way,
  train        step, optimizer state and each member's base PRNG key (what resuming needs),
  meta         JSON: epoch, the test metrics at that point and every array's digest.
Restoring builds an abstract target on the current devices, so a checkpoint written on 8 devices
restores on 1 and the other way round.
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

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from kd_jax import config_lib, faults, models, parallelism, reporting
from kd_jax.errors import CheckpointError, ConfigError, CorruptCheckpointError, one_line

CONFIG_FILE = "config.json"
POPULATION_FILE = "population.json"
CHECKPOINT_DIR = "checkpoints"
DATA_FILE = "data.json"  # Fingerprints of the data the run trained and was scored on.
TEACHER_FILE = "teacher.json"  # Which teacher (path, step, members, digest) a student learnt from.
METRICS_FILE = "metrics.jsonl"  # One JSON line per epoch (reporting.MetricsWriter).
EVAL_FILE = "eval.json"  # The evaluate command's report (evaluation.evaluate_checkpoint).
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
# Fields that say where data lives or how often to save: they may change when a run resumes.
# How many members run vmapped together changes float rounding at most, like the device count.
RESUMABLE_CHANGES = ("data.mnist_dir", "data.tfds_data_dir", "data.tfds_manual_dir",
                     "checkpoint.every_epochs", "checkpoint.max_to_keep", "member_batch",
                     "data.records_dir", "data.prefetch", "checkpoint.every_steps")
TMP_MARKER = ".orbax-checkpoint-tmp"


def save_config(workdir: str | pathlib.Path, config: ml_collections.ConfigDict,
                records: dict[str, Any] | None = None) -> None:
  """Writes RUN/config.json and RUN/population.json (the members and their settings), and each
  of `records` (file name -> JSON: the data fingerprint, the teacher) before config.json, so a
  run with a config.json always has them."""
  workdir = pathlib.Path(workdir)
  for name, payload in (records or {}).items():
    reporting.write_json(workdir / name, payload)
  reporting.write_json(workdir / POPULATION_FILE,
                       {"members": config_lib.population_members(config)})
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
  """Defaults of the fields added to kd_jax since runs were first saved (config_lib.ADDED_FIELDS),
  flattened: a run saved before one existed held, in effect, its default. Other missing fields
  stay missing, so validation names them rather than guessing."""
  defaults = config_lib.base_config()
  if "teacher_workdir" in saved:  # Distillation fields, also in a hard-label run that has them.
    defaults = config_lib.add_distillation(defaults)
  flat = _flatten(json.loads(defaults.to_json_best_effort()))
  return {k: v for k, v in flat.items() if k in config_lib.ADDED_FIELDS}


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
  flat = _flatten(saved)
  flat = {k: tuple(v) if isinstance(v, list) else v for k, v in flat.items()}  # JSON lists.
  config = ml_collections.ConfigDict(_unflatten({**_defaults_for(saved), **flat}))
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
         if not (k not in new and config_lib.REMOVED_FIELDS.get(k, object()) == v)}
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


def run_mismatch(workdir: pathlib.Path, config: ml_collections.ConfigDict,
                 records: dict[str, Any]) -> str | None:
  """Why the run in `workdir` is not this run (its config, data or teacher differ), or None when
  it is, or when the workdir holds no run."""
  if not (workdir / CONFIG_FILE).exists():
    return None
  differences = config_differences(load_config(workdir), config)
  if differences:
    shown = ", ".join(differences[:6]) + (" ..." if len(differences) > 6 else "")
    return f"a different config ({shown})"
  for name, current in records.items():
    path = workdir / name
    if not path.exists():  # A run from before these records: nothing to compare.
      continue
    saved = json.loads(path.read_text())
    fields = sorted(k for k in saved.keys() | current.keys()
                    if k not in RECORD_NOTES and saved.get(k) != current.get(k))
    if fields:
      return (f"{RECORD_NAMES[name]}: {', '.join(fields)} was "
              f"{', '.join(str(saved.get(f)) for f in fields)} when it trained, now "
              f"{', '.join(str(current.get(f)) for f in fields)}")
  return None


def latest_meta(workdir: str | pathlib.Path) -> tuple[int, dict[str, Any]] | None:
  """(step, meta) of the run's latest committed checkpoint, or None: read from the meta item's
  JSON file directly (no orbax), so callers can check runs cheaply. A step directory exists under
  its final name only once orbax has committed it."""
  directory = pathlib.Path(workdir) / CHECKPOINT_DIR
  steps = sorted((int(p.name) for p in directory.iterdir() if p.name.isdigit()), reverse=True) \
      if directory.is_dir() else []
  for step in steps:
    try:
      return step, json.loads((directory / str(step) / "meta" / "metadata").read_text())
    except (OSError, json.JSONDecodeError):
      continue  # Unreadable: not a usable checkpoint; restoring reports it.
  return None


def finished_step(workdir: str | pathlib.Path, config: ml_collections.ConfigDict) -> int | None:
  """The final checkpoint step of a run of `config` that completed all its epochs in `workdir`,
  else None: its latest checkpoint's epoch, not metrics.jsonl (whose last line a kill may cut)."""
  workdir = pathlib.Path(workdir)
  if not (workdir / CONFIG_FILE).exists() or config_differences(load_config(workdir), config):
    return None
  latest = latest_meta(workdir)
  return latest[0] if latest and latest[1].get("epoch") == config.num_epochs else None


def remove_if_unused(workdir: pathlib.Path) -> None:
  """Removes `workdir` when it holds nothing but the lock (a run refused before writing)."""
  if reporting.is_main_process() and workdir.is_dir() and {
      p.name for p in workdir.iterdir()} <= {LOCK_FILE}:
    shutil.rmtree(workdir)


def discard_partial_checkpoints(workdir: pathlib.Path) -> list[pathlib.Path]:
  """Removes checkpoint directories a kill left half-written (orbax's *.orbax-checkpoint-tmp*).

  Orbax writes each step into a temporary directory and renames it when complete, so such a
  directory never holds a usable checkpoint; the previous complete step is used instead.
  """
  directory = workdir / CHECKPOINT_DIR
  partial = sorted(directory.glob(f"*{TMP_MARKER}*")) if directory.is_dir() else []
  for path in partial:
    reporting.say(f"Warning: ignoring the half-written checkpoint {path} (left by an "
                  "interrupted save).")
    if reporting.is_main_process():
      shutil.rmtree(path, ignore_errors=True)
  parallelism.sync_processes("kd_jax_discard_partial_checkpoints")
  return partial


def open_manager(workdir: str | pathlib.Path, max_to_keep: int | None = None,
                 read_only: bool = False) -> ocp.CheckpointManager:
  directory = (pathlib.Path(workdir) / CHECKPOINT_DIR).absolute()
  if read_only and not directory.is_dir():
    raise CheckpointError(f"{directory} does not exist: no checkpoint was written in {workdir}.")
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only,
                                         read_only=read_only, enable_async_checkpointing=True)
  handlers = {"params": ocp.StandardCheckpointHandler(), "train": ocp.StandardCheckpointHandler(),
              "model_state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def variable_items(variables: dict[str, Any]) -> dict[str, Any]:
  """A model's variables as checkpoint items: 'params', and 'model_state' when it has other
  collections (so checkpoints of stateless models keep their layout)."""
  model_state = {k: v for k, v in variables.items() if k != "params"}
  return {"params": variables["params"], **({"model_state": model_state} if model_state else {})}


def save(manager: ocp.CheckpointManager, step: int, items: dict[str, Any],
         meta: dict[str, Any]) -> None:
  """Writes checkpoint `step` (array items by name: params, model_state, train) and waits for it,
  so a failed write (a full disk) is reported now, as one line, not an epoch later. `meta` gets
  the digest of every array, checked whenever the checkpoint is restored."""
  meta = {**meta, "digests": {name: array_digests(tree) for name, tree in items.items()}}
  meta["meta_digest"] = meta_digest(meta)
  try:
    manager.save(step, args=ocp.args.Composite(
        **{name: ocp.args.StandardSave(tree) for name, tree in items.items()},
        meta=ocp.args.JsonSave(meta)))
    manager.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-except  # orbax and tensorstore raise many kinds.
    raise CheckpointError(f"could not write checkpoint step {step} in {manager.directory} "
                          f"({one_line(e)}); is the disk full or read-only? The previous "
                          "checkpoint is intact.") from e


def save_variables(workdir: str | pathlib.Path, step: int, variables: dict[str, Any],
                   meta: dict[str, Any]) -> None:
  """Writes a checkpoint holding only the model's variables and `meta`: a derived model (such as
  a bias-corrected one) that evaluates and distils like any other but does not resume training."""
  manager = open_manager(workdir)
  try:
    save(manager, step, variable_items(variables), meta)
  finally:
    manager.close()


def _abstract(tree: Any, sharding: jax.sharding.Sharding) -> Any:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def latest_step(manager: ocp.CheckpointManager, workdir: str | pathlib.Path) -> int:
  step = manager.latest_step()
  if step is None:
    raise CheckpointError(f"No checkpoint found under {pathlib.Path(workdir) / CHECKPOINT_DIR}.")
  return step


def _by_path(tree: Any) -> dict[str, Any]:
  """Leaves by path, with dict keys, attributes and indices all written alike ('a/0/mu').

  orbax stores named tuples (optax states) as dicts, so paths must not depend on container type.
  """

  def name(entry) -> str:
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        return str(getattr(entry, attr))
    return str(entry)

  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(name(e) for e in path): leaf for path, leaf in leaves}


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  return {path: tuple(leaf.shape) for path, leaf in _by_path(tree).items()}


def _leaf_digest(leaf: jax.Array) -> jax.Array:
  """Two position-weighted sums of the leaf's 32-bit words (mod 2**32): a changed byte always
  changes the first, since each word is multiplied by an odd weight. Computed on device."""
  bits = jnp.dtype(f"uint{8 * leaf.dtype.itemsize}")
  words = jax.lax.bitcast_convert_type(leaf, bits).reshape(-1)
  if leaf.dtype.itemsize == 8:  # Two 32-bit words each.
    words = jnp.stack([words & 0xFFFFFFFF, words >> 32]).reshape(-1)
  words = words.astype(jnp.uint32)
  index = jnp.arange(words.shape[0], dtype=jnp.uint32)
  return jnp.stack([jnp.sum(words * (2 * index + 1), dtype=jnp.uint32),
                    jnp.sum((words ^ index) * (index * jnp.uint32(2654435761) | 1),
                            dtype=jnp.uint32)])


_digest_leaves = jax.jit(lambda leaves: [_leaf_digest(leaf) for leaf in leaves])


def array_digests(tree: Any) -> dict[str, str]:
  """A digest (16 hex digits) per array of `tree`, by path: recorded in each checkpoint's meta at
  save and compared after every restore, so flipped bytes are caught rather than trained on."""
  by_path = _by_path(tree)
  digests = jax.device_get(_digest_leaves(list(by_path.values())))
  return {path: f"{int(d[0]):08x}{int(d[1]):08x}" for path, d in zip(by_path, digests)}


def meta_digest(meta: dict[str, Any]) -> str:
  """The digest of a checkpoint's meta item (epoch, figures and the arrays' digests): a changed
  epoch would silently resume at the wrong point, so it is checked like the arrays."""
  content = {k: v for k, v in meta.items() if k != "meta_digest"}
  return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def combined_digest(digests: dict[str, str]) -> str:
  """One hex digest for a whole tree (a teacher's parameters), from its per-array digests."""
  return hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()[:16]


def _check_against_metadata(manager: ocp.CheckpointManager, step: int, name: str, example: Any,
                            where: str) -> None:
  """Compares what the config expects with what the checkpoint holds, before reading arrays.

  A mismatch is reported by name and shape; a failed restore inside orbax would instead leave
  half-finished I/O behind and print tracebacks at exit.
  """
  try:
    stored = _shapes(manager.item_metadata(step)[name])
  except Exception as e:  # pylint: disable=broad-except  # orbax raises many kinds.
    raise CheckpointError(f"{where} could not be read: it is corrupted or incomplete "
                          f"({one_line(e)}).") from e
  expected = _shapes(example)
  if stored != expected:
    differing = sorted(k for k in stored.keys() | expected.keys()
                       if stored.get(k) != expected.get(k))
    key = differing[0]
    raise CheckpointError(
        f"{where} does not match the run's config.json: {name}/{key} has shape "
        f"{stored.get(key, 'absent')} in the checkpoint but {expected.get(key, 'absent')} from "
        f"the config ({len(differing)} entries differ).")


def restore(manager: ocp.CheckpointManager, step: int, items: dict[str, Any],
            sharding: jax.sharding.Sharding, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Restores the named items of `step`; `items` maps name -> example pytree (or None for meta).

  Array items are placed with `sharding` on this process's devices, whatever layout wrote them.
  """
  if step not in manager.all_steps():
    raise CheckpointError(f"Checkpoint step {step} does not exist in {workdir}; available: "
                          f"{list(manager.all_steps())}.")
  where = f"Checkpoint step {step} in {pathlib.Path(workdir) / CHECKPOINT_DIR}"
  args = {"meta": ocp.args.JsonRestore()}  # Always: it holds the digests to verify.
  for name, example in items.items():
    if name != "meta":
      _check_against_metadata(manager, step, name, example, where)
      args[name] = ocp.args.StandardRestore(_abstract(example, sharding))
  step_dir = pathlib.Path(workdir) / CHECKPOINT_DIR / str(step)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**args))
  except Exception as e:  # pylint: disable=broad-except  # orbax raises many kinds.
    if not step_dir.exists():
      raise CheckpointError(f"{where} was removed while it was being read (a trainer keeping "
                            "only its latest checkpoints deleted it); rerun to read a newer "
                            "one.") from e
    raise CorruptCheckpointError(f"{where} could not be restored: it is corrupted "
                                 f"({one_line(e)}).") from e
  meta = restored["meta"] or {}
  if "meta_digest" in meta and meta_digest(meta) != meta["meta_digest"]:  # Older: unchecked.
    raise CorruptCheckpointError(f"{where} is corrupted: its meta item (epoch, figures, "
                                 "digests) does not match the checksum recorded when it was "
                                 "saved.")
  recorded = meta.get("digests", {})
  for name in items:
    if name == "meta" or name not in recorded:  # Checkpoints older than digests: unchecked.
      continue
    actual = array_digests(restored[name])
    bad = sorted(path for path in recorded[name] if actual.get(path) != recorded[name][path])
    if bad:
      raise CorruptCheckpointError(
          f"{where} is corrupted: {name}/{bad[0]} does not match the checksum recorded when it "
          f"was saved ({len(bad)} array(s) differ).")
  return {name: restored[name] for name in ("meta", *items)}


def abstract_member_variables(model: Any, input_shape: tuple[int, ...], num_members: int) -> Any:
  """Shapes and dtypes of `num_members` stacked variable sets of `model` ({'params': ..., and any
  other collections})."""
  init = lambda key: models.init_variables(model, key, input_shape)
  return jax.eval_shape(jax.vmap(init), jax.random.split(jax.random.PRNGKey(0), num_members))


def restore_variables(workdir: str | pathlib.Path, mesh: jax.sharding.Mesh,
                      step: int | None = None, members: tuple[int, ...] | None = None,
                      model: Any = None) -> tuple[dict[str, Any], ml_collections.ConfigDict, int]:
  """Stacked variables {'params': [M, ...], and e.g. 'batch_stats'} of a run (latest or `step`),
  shaped by that run's own config, or by `model` when given (a user's module that the config
  cannot rebuild). Returns (variables, the run's config, step).

  `members` selects member indices (default: all); a single model comes back with M = 1.
  """
  repair_interrupted_overwrite(workdir)
  run_config = load_config(workdir)
  num_members = len(config_lib.population_members(run_config))
  if members and max(members) >= num_members:
    raise CheckpointError(f"{workdir} has {num_members} member(s) (indices 0 to "
                          f"{num_members - 1}); member {max(members)} was asked for.")
  model = models.model_from_config(run_config.model) if model is None else model
  example = variable_items(abstract_member_variables(
      model, tuple(run_config.model.input_shape), num_members))
  manager = open_manager(workdir, read_only=True)
  try:
    step = latest_step(manager, workdir) if step is None else step
    restored = restore(manager, step, example, parallelism.replicated(mesh), workdir)
  finally:
    manager.close()
  variables = {"params": restored["params"], **restored.get("model_state", {})}
  if members:
    variables = jax.tree.map(lambda leaf: leaf[jnp.asarray(members)], variables)
  return variables, run_config, step
