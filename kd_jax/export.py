"""A trained run as a self-contained serving artifact: uint8 images in, class probabilities out.

  python -m kd_jax.export --workdir runs/distilled --out exported/distilled [--member i]

Writes OUT/model.jax_exported (the forward pass with its parameters, serialised StableHLO from
`jax.export`, batch dimension symbolic, lowered for CPU and CUDA) and OUT/metadata.json (what it
was made from, its input and output). Normalisation is inside, so callers need no constants; the
output is softmax at T = 1, for a population the average of its members' probabilities (its
arithmetic ensemble) unless --member picks one. Serving needs jax alone, not kd_jax:

  from jax import export
  model = export.deserialize(open("OUT/model.jax_exported", "rb").read())
  probabilities = model.call(images)  # uint8 [B, 28, 28] -> float32 [B, 10]

With TensorFlow installed (pip install 'kd_jax[tf]'), --saved_model also writes
OUT/saved_model/ through jax2tf.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import tempfile
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from kd_jax import checkpointing, data, losses, parallelism, reporting, rundir, runs, targets
from kd_jax.errors import CheckpointError, ConfigError, one_line

MODEL_FILE = "model.jax_exported"
METADATA_FILE = "metadata.json"
EXPORT_FORMAT = "kd_jax export 1"  # metadata.json's "format": how a previous export is known.
DEFAULT_PLATFORMS = ("cpu", "cuda")

def serving_fn(model, member_variables: Any) -> Callable[[jax.Array], jax.Array]:
  """uint8 [B, 28, 28] -> probabilities [B, C]: the members' softmax (T = 1), averaged; a model
  with BatchNorm uses its running statistics."""

  def serve(images: jax.Array) -> jax.Array:
    logits = targets.member_logits(model, member_variables, data.normalize(images))
    return jnp.exp(losses.ensemble_log_probabilities(logits))

  return serve


def _finished_epochs(workdir: pathlib.Path, step: int) -> int | None:
  manager = checkpointing.open_manager(workdir, read_only=True)
  try:
    meta = checkpointing.restore(manager, step, {"meta": None}, None, workdir)["meta"]
  finally:
    manager.close()
  return int(meta["epoch"]) if meta and "epoch" in meta else None


def export_run(workdir: str | pathlib.Path, out: str | pathlib.Path, step: int | None = None,
               member: int | None = None, platforms: Sequence[str] = DEFAULT_PLATFORMS,
               overwrite: bool = False, saved_model: bool = False,
               model=None) -> dict[str, Any]:
  """Exports the run's checkpoint (latest or `step`; one member or the ensemble) into `out`.

  Everything is checked before `out` is touched; an existing `out` is refused unless `overwrite`.
  Returns (and writes as OUT/metadata.json) what was exported.
  """
  workdir, out = pathlib.Path(workdir), pathlib.Path(out)
  _check_destination(workdir, out, overwrite)
  if saved_model:
    _tensorflow()  # Before the restore and the lowering, not after them.
  if member is not None and member < 0:
    raise ConfigError(f"--member={member} is invalid: expected a member index >= 0.")
  mesh = parallelism.make_mesh(jax.devices()[:1])
  run = runs.Run.open(workdir, mesh=mesh, step=step, model=model,
                      members=None if member is None else (member,))
  run_config, variables, step = run.config, run.variables, run.step
  epochs = _finished_epochs(workdir, step)
  if epochs is not None and epochs < run_config.num_epochs:
    reporting.say(f"Warning: checkpoint step {step} of {workdir} is from epoch {epochs} of "
                  f"{run_config.num_epochs}: the run has not finished.")
  model, num_members = run.model, run.num_members
  batch = jax.export.symbolic_shape("batch")[0]
  image_shape = tuple(run_config.model.input_shape)
  images_spec = jax.ShapeDtypeStruct((batch, *image_shape), jnp.uint8)
  try:
    exported = jax.export.export(jax.jit(serving_fn(model, variables)),
                                 platforms=tuple(platforms))(images_spec)
  except (ValueError, NotImplementedError) as e:
    raise ConfigError(f"could not lower the model for --platforms={','.join(platforms)}: "
                      f"{e}") from e
  metadata = {
      "format": EXPORT_FORMAT, "source_workdir": str(workdir.absolute()), "step": step,
      "epochs": epochs,
      "model": run.describe(),
      "members": [member] if member is not None else list(range(num_members)),
      "output": ("class probabilities at T = 1" if num_members == 1 else
                 f"class probabilities at T = 1, averaged over {num_members} members"),
      "input": f"uint8 [batch, {', '.join(str(d) for d in image_shape)}] (raw pixels)",
      "platforms": list(exported.platforms), "jax": jax.__version__,
      "num_parameters": int(sum(np.prod(x.shape) for x in jax.tree.leaves(variables["params"]))),
      "files": [MODEL_FILE, METADATA_FILE] + (["saved_model"] if saved_model else [])}
  out.parent.mkdir(parents=True, exist_ok=True)
  # Created exclusively, with a name no user folder has: never someone else's to delete.
  staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.kd_jax-export-", dir=out.parent))
  try:
    (staging / MODEL_FILE).write_bytes(exported.serialize())
    if saved_model:
      _write_saved_model(serving_fn(model, variables), image_shape, staging / "saved_model")
    reporting.write_json(staging / METADATA_FILE, metadata)
    if out.exists():  # A previous export (checked above): moved aside, then deleted.
      old = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.kd_jax-replaced-",
                                          dir=out.parent))
      out.rename(old / out.name)
      staging.rename(out)
      shutil.rmtree(old)
    else:
      staging.rename(out)
  except OSError as e:
    raise CheckpointError(f"could not write the export into {out} ({e.strerror or e}): is the "
                          "disk full or read-only?") from e
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  reporting.say(f"Exported {workdir} (step {step}, {metadata['model']}, "
                f"{'member ' + str(member) if member is not None else f'{num_members} member(s)'}"
                f") to {out} for {', '.join(exported.platforms)}.")
  return metadata


def is_export(folder: pathlib.Path) -> bool:
  """A folder this command wrote: its metadata.json says so and the model file is there."""
  try:
    metadata = json.loads((folder / METADATA_FILE).read_text())
  except (OSError, json.JSONDecodeError):
    return False
  return (isinstance(metadata, dict) and (folder / MODEL_FILE).is_file()
          and (metadata.get("format") == EXPORT_FORMAT or "source_workdir" in metadata))


def _check_destination(workdir: pathlib.Path, out: pathlib.Path, overwrite: bool) -> None:
  """Refuses an --out that is not absent (or an empty folder) or, with --overwrite, a previous
  export: a run directory, the source run, or any other folder is left untouched."""
  if not out.exists() or (out.is_dir() and not any(out.iterdir())):
    return
  resolved = out.resolve()
  if resolved == workdir.resolve() or resolved in workdir.resolve().parents:
    raise ConfigError(f"--out={out} is (or holds) the run being exported, {workdir}; choose "
                      "another --out.")
  if not is_export(out):
    what = ("a kd_jax run directory" if (out / rundir.CONFIG_FILE).exists() else
            "a folder that is not a kd_jax export")
    raise ConfigError(f"--out={out} is {what}; it is left as it is. Choose another --out "
                      "(--overwrite replaces only a previous export).")
  if not overwrite:
    raise ConfigError(f"{out} already holds an export; pass --overwrite to replace it, or choose "
                      "another --out.")


def _tensorflow() -> tuple[Any, Any]:
  """(tensorflow, jax2tf), or a one-line ConfigError naming the extra that brings them."""
  try:  # An extra (kd_jax[tf]): the base install has no TensorFlow.
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    if (e.name or "").split(".")[0] == "tensorflow":
      raise ConfigError("tensorflow is not installed: pip install 'kd_jax[tf]' for --saved_model "
                        "(model.jax_exported alone needs no TensorFlow).") from e
    raise ConfigError(f"--saved_model needs tensorflow and jax2tf, which do not import "
                      f"({one_line(e)}): pip install 'kd_jax[tf]'.") from e
  return tf, jax2tf


def _write_saved_model(serve: Callable[[jax.Array], jax.Array], image_shape: tuple[int, ...],
                       path: pathlib.Path) -> None:
  """A TF SavedModel with the same signature (jax2tf, polymorphic batch)."""
  tf, jax2tf = _tensorflow()
  module = tf.Module()
  module.serve = tf.function(
      jax2tf.convert(serve, polymorphic_shapes=[f"(b, {', '.join(map(str, image_shape))})"],
                     with_gradient=False),
      input_signature=[tf.TensorSpec([None, *image_shape], tf.uint8)], autograph=False)
  tf.saved_model.save(module, str(path))


def load(folder: str | pathlib.Path) -> Callable[[np.ndarray], np.ndarray]:
  """The exported model as a function: images [B, H, W] -> probabilities [B, C]. Images are
  uint8 pixels as stored, or floats in [0, 1] (turned back into the pixels they came from);
  anything else is a ValueError."""
  path = pathlib.Path(folder) / MODEL_FILE
  if not path.exists():
    raise CheckpointError(f"{path} does not exist: {folder} is not a kd_jax export.")
  exported = jax.export.deserialize(bytearray(path.read_bytes()))
  image_shape = tuple(exported.in_avals[0].shape[1:])
  output = exported.out_avals[0]  # [B, C] probabilities.

  def predict(images: np.ndarray) -> np.ndarray:
    images = data.check_images(images, image_shape)
    if not len(images):  # As Run.predict: (0, C); the exported program needs a batch >= 1.
      return np.zeros((0, *output.shape[1:]), output.dtype)
    if images.dtype != np.uint8:
      images = np.round(images * 255).astype(np.uint8)
    return np.asarray(exported.call(jnp.asarray(images)))

  return predict


def define_flags() -> None:
  """The command's flags (defined only when it runs, so the library imports without them)."""
  flags.DEFINE_string("workdir", None, "Run directory to export.", required=True)
  flags.DEFINE_string("out", None, "Folder for the artifact (must not exist, unless --overwrite).",
                      required=True)
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_integer("member", None, "Export this member of a population alone (default: the "
                       "whole population as its ensemble).")
  flags.DEFINE_list("platforms", list(DEFAULT_PLATFORMS),
                    "Platforms the artifact is lowered for (cpu, cuda, rocm, tpu).")
  flags.DEFINE_bool("saved_model", False, "Also write a TF SavedModel through jax2tf (needs "
                    "tensorflow: pip install 'kd_jax[tf]').")


def main(argv):
  del argv
  f = flags.FLAGS
  export_run(f.workdir, f.out, f.step, f.member, f.platforms, f.overwrite, f.saved_model)


if __name__ == "__main__":
  from kd_jax import cli  # pylint: disable=g-import-not-at-top  # The command only.
  define_flags()
  cli.run(main)
