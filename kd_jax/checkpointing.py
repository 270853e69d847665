"""Run directories: RUN/config.json, RUN/population.json and orbax checkpoints in RUN/checkpoints/.

Everything that reads or prepares a run directory lives here. Each checkpoint step holds three
items so that readers take only what they need:
  params     the members' parameters, stacked on a leading member axis [P, ...] (all that
             distillation and evaluation restore; P = 1 for a single model),
  train      step, optimizer state and each member's base PRNG key (what resuming needs),
  meta       JSON: epoch and the test metrics at that point.
Restoring builds an abstract target on the current devices, so a checkpoint written on 8 devices
restores on 1 and the other way round.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from kd_jax import config_lib, models, parallelism, reporting
from kd_jax.errors import CheckpointError, one_line

CONFIG_FILE = "config.json"
POPULATION_FILE = "population.json"
CHECKPOINT_DIR = "checkpoints"
RUN_FILES = (CONFIG_FILE, POPULATION_FILE, "metrics.jsonl", "eval.json")
RUN_DIRS = (CHECKPOINT_DIR, "tensorboard")
# Fields that say where data lives or how often to save: they may change when a run resumes.
# How many members run vmapped together changes float rounding at most, like the device count.
RESUMABLE_CHANGES = ("data.mnist_dir", "data.tfds_data_dir", "data.tfds_manual_dir",
                     "checkpoint.every_epochs", "checkpoint.max_to_keep", "member_batch")
TMP_MARKER = ".orbax-checkpoint-tmp"


def save_config(workdir: str | pathlib.Path, config: ml_collections.ConfigDict) -> None:
  """Writes RUN/config.json and RUN/population.json (the members and their settings)."""
  reporting.write_json(pathlib.Path(workdir) / CONFIG_FILE,
                       json.loads(config.to_json_best_effort()))
  reporting.write_json(pathlib.Path(workdir) / POPULATION_FILE,
                       {"members": config_lib.population_members(config)})


def load_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
  path = pathlib.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise CheckpointError(f"{path} does not exist: {workdir} is not a kd_jax run directory "
                          "(train one with `python -m kd_jax.train --workdir ...`).")
  try:
    return ml_collections.ConfigDict(json.loads(path.read_text()))
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path} is not valid JSON ({e}).") from e


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def config_differences(saved: ml_collections.ConfigDict,
                       current: ml_collections.ConfigDict) -> list[str]:
  """Dotted names of fields that differ (ignoring RESUMABLE_CHANGES)."""
  old = _flatten(json.loads(saved.to_json_best_effort()))
  new = _flatten(json.loads(current.to_json_best_effort()))
  return sorted(k for k in old.keys() | new.keys()
                if k not in RESUMABLE_CHANGES and old.get(k) != new.get(k))


def prepare_workdir(workdir: pathlib.Path, config: ml_collections.ConfigDict,
                    overwrite: bool) -> None:
  """Checks that `workdir` is new or holds this same run; with `overwrite`, clears the old run.

  Runs before anything is written, so a refused command leaves every file as it was.
  """
  if not (workdir / CONFIG_FILE).exists():
    return
  if overwrite:
    if reporting.is_main_process():
      for name in RUN_FILES:
        (workdir / name).unlink(missing_ok=True)
      for name in RUN_DIRS:
        shutil.rmtree(workdir / name, ignore_errors=True)
    parallelism.sync_processes("kd_jax_overwrite")
    reporting.say(f"Removed the previous run in {workdir} (--overwrite).")
    return
  differences = config_differences(load_config(workdir), config)
  if differences:
    shown = ", ".join(differences[:6]) + (" ..." if len(differences) > 6 else "")
    raise CheckpointError(
        f"{workdir} already holds a run with a different config ({shown}). Use another "
        "--workdir, or pass --overwrite to delete that run and start afresh.")


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
              "meta": ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def save(manager: ocp.CheckpointManager, step: int, params: Any, train: Any,
         meta: dict[str, Any]) -> None:
  """Starts an asynchronous save; call `manager.wait_until_finished()` before exiting."""
  manager.save(step, args=ocp.args.Composite(
      params=ocp.args.StandardSave(params), train=ocp.args.StandardSave(train),
      meta=ocp.args.JsonSave(meta)))


def _abstract(tree: Any, sharding: jax.sharding.Sharding) -> Any:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def latest_step(manager: ocp.CheckpointManager, workdir: str | pathlib.Path) -> int:
  step = manager.latest_step()
  if step is None:
    raise CheckpointError(f"No checkpoint found under {pathlib.Path(workdir) / CHECKPOINT_DIR}.")
  return step


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """Leaf shapes by path, with dict keys, attributes and indices all written alike ('a/0/mu').

  orbax stores named tuples (optax states) as dicts, so paths must not depend on container type.
  """

  def name(entry) -> str:
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        return str(getattr(entry, attr))
    return str(entry)

  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(name(e) for e in path): tuple(leaf.shape) for path, leaf in leaves}


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
  args = {}
  for name, example in items.items():
    if name == "meta":
      args[name] = ocp.args.JsonRestore()
    else:
      _check_against_metadata(manager, step, name, example, where)
      args[name] = ocp.args.StandardRestore(_abstract(example, sharding))
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**args))
  except Exception as e:  # pylint: disable=broad-except  # orbax raises many kinds.
    raise CheckpointError(f"{where} could not be restored: it is corrupted ({one_line(e)}).") from e
  return {name: restored[name] for name in items}


def abstract_member_params(model_config: ml_collections.ConfigDict, num_members: int) -> Any:
  """Shapes and dtypes of `num_members` stacked parameter sets of the configured model."""
  model = models.model_from_config(model_config)
  init = lambda key: model.init(key, jnp.zeros((1, 784)), train=False)["params"]
  return jax.eval_shape(jax.vmap(init), jax.random.split(jax.random.PRNGKey(0), num_members))


def restore_params(workdir: str | pathlib.Path, mesh: jax.sharding.Mesh, step: int | None = None,
                   members: tuple[int, ...] | None = None
                   ) -> tuple[Any, ml_collections.ConfigDict, int]:
  """Stacked params [M, ...] of a run (latest or `step`), built from that run's own config.

  `members` selects member indices (default: all); a single model comes back with M = 1.
  """
  run_config = load_config(workdir)
  num_members = len(config_lib.population_members(run_config))
  if members and max(members) >= num_members:
    raise CheckpointError(f"{workdir} has {num_members} member(s) (indices 0 to "
                          f"{num_members - 1}); member {max(members)} was asked for.")
  example = abstract_member_params(run_config.model, num_members)
  manager = open_manager(workdir, read_only=True)
  try:
    step = latest_step(manager, workdir) if step is None else step
    params = restore(manager, step, {"params": example}, parallelism.replicated(mesh),
                     workdir)["params"]
  finally:
    manager.close()
  if members:
    params = jax.tree.map(lambda leaf: leaf[jnp.asarray(members)], params)
  return params, run_config, step
