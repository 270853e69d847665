"""Bias correction for classes a transfer set left out or over-represented (paper, section 3).

A student distilled on a transfer set without any 3s still learns a lot about 3s from the soft
targets, but its output bias for 3 ends up too low; the paper raises it by 3.5 (and lowers the
biases of 7 and 8 by 7.6 for a student that saw only 7s and 8s). `search_offsets` tunes that
offset per member on a validation split held out of the training set (never the test set);
`correct_run` writes the corrected model as a run directory that evaluates like any other.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kd_jax import checkpointing, data, parallelism, population, reporting, rundir, runs, targets
from kd_jax.errors import ConfigError

REPORT_FILE = "bias_correction.json"
# Offsets tried by the search: -15 to 15 in steps of 0.1 (the paper's 3.5 and -7.6 lie inside).
DEFAULT_GRID = tuple(np.round(np.arange(-150, 151) / 10, 1).tolist())


def shift_output_bias(member_params: Any, classes: Sequence[int], offsets: jax.Array) -> Any:
  """Adds offsets[m] to member m's output bias of each class in `classes` (params [P, ...])."""
  bias = member_params["output"]["bias"]
  offsets = jnp.broadcast_to(jnp.asarray(offsets, bias.dtype), bias.shape[:1])
  shifted = bias.at[:, jnp.asarray(classes)].add(offsets[:, None])
  return {**member_params, "output": {**member_params["output"], "bias": shifted}}


def class_mask(num_classes: int, classes: Sequence[int]) -> jax.Array:
  """1.0 for the classes whose bias moves, 0.0 elsewhere: f32[num_classes]."""
  return jnp.zeros(num_classes).at[jnp.asarray(classes)].set(1.0)


@jax.jit
def offset_errors(logits: jax.Array, labels: jax.Array, class_mask: jax.Array,
                  offsets: jax.Array) -> jax.Array:
  """Errors [P, K] of each member's logits [P, N, C] with each offset [K] added to the classes
  of `class_mask` [C]; one offset at a time, so memory stays that of the logits."""
  def errors_at(offset):
    predictions = jnp.argmax(logits + offset * class_mask, axis=-1)
    return jnp.sum(predictions != labels, axis=-1)
  return jax.lax.map(errors_at, offsets).T


def search_offsets(logits: jax.Array, labels: jax.Array, classes: Sequence[int],
                   grid: Sequence[float] = DEFAULT_GRID) -> tuple[np.ndarray, np.ndarray]:
  """Per member, the offset of `grid` with the fewest errors on (logits [P, N, C], labels [N]);
  ties go to the smallest |offset|. Returns (offsets [P], errors at them [P])."""
  grid = np.asarray(sorted(grid, key=abs), np.float32)
  errors = np.asarray(offset_errors(logits, labels, class_mask(logits.shape[-1], classes),
                                    jnp.asarray(grid)))
  best = errors.argmin(axis=1)
  return grid[best], errors[np.arange(len(best)), best]


def correct_run(source: str | pathlib.Path, target: str | pathlib.Path, classes: Sequence[int],
                offset: float | None = None, grid: Sequence[float] = DEFAULT_GRID,
                mnist_dir: str | None = None) -> dict[str, Any]:
  """Writes `target`: the latest checkpoint of `source` with the output biases of `classes`
  shifted, by `offset` or, when None, by each member's offset searched on the run's validation
  split. Returns (and writes as TARGET/bias_correction.json) what was done. A target that
  already holds a finished correction is returned as it is; a half-written one is redone.
  """
  source, target = pathlib.Path(source), pathlib.Path(target)
  report_path = target / REPORT_FILE
  if report_path.exists():
    return json.loads(report_path.read_text())
  mesh = parallelism.make_mesh()
  run = runs.Run.open(source, mesh=mesh)
  variables, run_config, step = run.variables, run.config, run.step
  if offset is None and not run_config.data.validation_size:
    raise ConfigError(f"{source} has no validation split (data.validation_size=0), and the "
                      "offset is tuned on held-out training data, never on the test set: train "
                      "it with --config.data.validation_size=N, or give a fixed offset.")
  splits = data.load_dataset(run_config.data, mnist_dir)
  validation_logits = jnp.swapaxes(targets.member_logits(
      run.model, variables, data.normalize(jnp.asarray(splits.validation_images)), member_batch=1), 0, 1)
  labels = jnp.asarray(splits.validation_labels)
  # A fixed offset is a search over a one-point grid.
  offsets, errors_after = search_offsets(validation_logits, labels, classes,
                                         grid if offset is None else (offset,))
  errors_before = np.asarray(jnp.sum(jnp.argmax(validation_logits, -1) != labels, axis=-1))
  if target.exists() and reporting.is_main_process():
    shutil.rmtree(target)  # A correction killed before its report: redo it from scratch.
  target.mkdir(parents=True, exist_ok=True)
  rundir.save_config(target, run_config, population.members(run_config))
  corrected = {**variables, "params": shift_output_bias(variables["params"], classes, offsets)}
  checkpointing.save_variables(target, step, corrected,
                               {"source": str(source), "source_step": step})
  report = {"source": str(source.absolute()), "source_step": step, "classes": list(classes),
            "tuned_on": "validation" if offset is None else None,
            "offsets": [round(float(o), 4) for o in offsets],
            "validation_examples": int(len(labels)),
            "validation_errors_before": [int(e) for e in errors_before],
            "validation_errors_after": [int(e) for e in errors_after]}
  reporting.write_json(report_path, report)
  how = "tuned on the validation split" if offset is None else "fixed"
  reporting.say(f"Bias correction of classes {list(classes)} in {source} -> {target}: offsets "
                f"{[round(float(o), 2) for o in offsets]} ({how}); validation errors "
                f"{report['validation_errors_before']} -> {report['validation_errors_after']}.")
  return report
