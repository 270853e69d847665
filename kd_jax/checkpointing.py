"""Orbax checkpoints in RUN/checkpoints/, checksummed: saving, restoring, and the newest intact one.

Each checkpoint step holds these items so that readers take only what they need:
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

import hashlib
import json
import pathlib
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from kd_jax import models, parallelism, population, reporting, rundir
from kd_jax.errors import CheckpointError, CorruptCheckpointError, one_line

def latest_meta(workdir: str | pathlib.Path) -> tuple[int, dict[str, Any]] | None:
  """(step, meta) of the run's latest committed checkpoint, or None: read from the meta item's
  JSON file directly (no orbax), so callers can check runs cheaply. A step directory exists under
  its final name only once orbax has committed it."""
  directory = pathlib.Path(workdir) / rundir.CHECKPOINT_DIR
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
  if not (workdir / rundir.CONFIG_FILE).exists() or rundir.config_differences(rundir.load_config(workdir), config):
    return None
  latest = latest_meta(workdir)
  return latest[0] if latest and latest[1].get("epoch") == config.num_epochs else None


def discard_partial_checkpoints(workdir: pathlib.Path) -> list[pathlib.Path]:
  """Removes checkpoint directories a kill left half-written (orbax's *.orbax-checkpoint-tmp*).

  Orbax writes each step into a temporary directory and renames it when complete, so such a
  directory never holds a usable checkpoint; the previous complete step is used instead.
  """
  directory = workdir / rundir.CHECKPOINT_DIR
  partial = sorted(directory.glob(f"*{rundir.TMP_MARKER}*")) if directory.is_dir() else []
  for path in partial:
    reporting.say(f"Warning: ignoring the half-written checkpoint {path} (left by an "
                  "interrupted save).")
    if reporting.is_main_process():
      shutil.rmtree(path, ignore_errors=True)
  parallelism.sync_processes("kd_jax_discard_partial_checkpoints")
  return partial


def open_manager(workdir: str | pathlib.Path, max_to_keep: int | None = None,
                 read_only: bool = False) -> ocp.CheckpointManager:
  directory = (pathlib.Path(workdir) / rundir.CHECKPOINT_DIR).absolute()
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
  meta = {**meta, "step": step,
          "digests": {name: array_digests(tree) for name, tree in items.items()}}
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
    raise CheckpointError(f"No checkpoint found under {pathlib.Path(workdir) / rundir.CHECKPOINT_DIR}.")
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
  where = f"Checkpoint step {step} in {pathlib.Path(workdir) / rundir.CHECKPOINT_DIR}"
  args = {"meta": ocp.args.JsonRestore()}  # Always: it holds the digests to verify.
  for name, example in items.items():
    if name != "meta":
      _check_against_metadata(manager, step, name, example, where)
      args[name] = ocp.args.StandardRestore(_abstract(example, sharding))
  step_dir = pathlib.Path(workdir) / rundir.CHECKPOINT_DIR / str(step)
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
  rundir.repair_interrupted_overwrite(workdir)
  run_config = rundir.load_config(workdir)
  num_members = len(population.members(run_config))
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
    # The step the checkpoint holds, under its meta's checksum; the folder's name only claims it
    # (checkpoints from before the meta recorded it keep the name's).
    saved_step = int((restored["meta"] or {}).get("step", step))
  finally:
    manager.close()
  if saved_step != step:
    reporting.say(f"Warning: checkpoint {step} in {pathlib.Path(workdir) / rundir.CHECKPOINT_DIR} "
                  f"holds training step {saved_step} (its folder was renamed?); reporting step "
                  f"{saved_step}.")
  variables = {"params": restored["params"], **restored.get("model_state", {})}
  if members:
    variables = jax.tree.map(lambda leaf: leaf[jnp.asarray(members)], variables)
  return variables, run_config, saved_step


def restore_latest(workdir: pathlib.Path, items: dict[str, Any], sharding: jax.sharding.Sharding,
                   max_to_keep: int) -> tuple[ocp.CheckpointManager, int | None, dict[str, Any]]:
  """Opens the run's checkpoint manager and restores `items` of its newest intact checkpoint.

  A checkpoint that fails its checksums is moved to WORKDIR/corrupted_checkpoints/ with a
  warning, and the one before it is used. Returns (manager, step, restored), or (manager, None,
  {}) when there is no checkpoint to resume from.
  """
  manager = open_manager(workdir, max_to_keep=max_to_keep)
  while (step := manager.latest_step()) is not None:
    try:
      return manager, step, restore(manager, step, items, sharding, workdir)
    except CorruptCheckpointError as e:
      manager.close()
      quarantine = workdir / rundir.CORRUPTED_DIR / str(step)
      if reporting.is_main_process():
        quarantine.parent.mkdir(exist_ok=True)
        shutil.rmtree(quarantine, ignore_errors=True)
        (workdir / rundir.CHECKPOINT_DIR / str(step)).rename(quarantine)
      parallelism.sync_processes("kd_jax_quarantine")
      reporting.say(f"Warning: {e} Moved it to {quarantine}; resuming from the checkpoint "
                    "before it.")
      manager = open_manager(workdir, max_to_keep=max_to_keep)
  return manager, None, {}
