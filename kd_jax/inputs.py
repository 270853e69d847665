"""A run's inputs, placed once: the training data and the evaluation splits on the mesh.

The memory pipeline puts the whole dataset on every device (the compiled epoch gathers its own
batches) and each evaluation split padded to whole batches with a mask; the grain pipeline places
nothing yet: it says which records train and evaluate, and streams them later. Either way the run
gets one `Inputs`, and every placement of data on devices happens here.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import ml_collections
import numpy as np

from kd_jax import data, faults, parallelism
from kd_jax.errors import ConfigError


class DeviceSplit(flax.struct.PyTreeNode):
  """An evaluation split on device, padded, with a mask of its real examples."""

  images: jax.Array
  labels: jax.Array
  mask: jax.Array
  num_examples: int = flax.struct.field(pytree_node=False)
  # A distilled run's test split: its teacher's log-probabilities at T = 1 [N, C], so that each
  # evaluation also measures the student's agreement and KL with it (`evaluation.evaluate`).
  teacher_log_probs: jax.Array | None = None


def put_eval_split(images: np.ndarray, labels: np.ndarray, batch_size: int,
                   mesh: jax.sharding.Mesh) -> DeviceSplit:
  padded = data.pad_for_eval(images, labels, batch_size)
  return DeviceSplit(*(parallelism.put_replicated(x, mesh) for x in padded),
                     num_examples=len(images))


@flax.struct.dataclass
class Inputs:
  """Everything a run reads, placed (memory) or located (grain) before the first epoch."""

  # Memory pipeline: 'image', 'label' and maybe cached 'teacher_logits'; streamed: {}.
  train_data: dict[str, jax.Array]
  eval_splits: dict[str, Any]  # DeviceSplit, or streamed: streaming.StreamedSplit.
  source: str = flax.struct.field(pytree_node=False)
  fingerprint: dict[str, str] = flax.struct.field(pytree_node=False)  # data.fingerprint
  eval_batch: int = flax.struct.field(pytree_node=False)  # Evaluation batch on this mesh.
  num_train: int = flax.struct.field(pytree_node=False, default=0)
  # Streamed (data.pipeline = "grain"): the prepared folder, and the record index of each
  # training example (after any class filter or subset); None in memory.
  prepared: Any = flax.struct.field(pytree_node=False, default=None)
  train_records: Any = flax.struct.field(pytree_node=False, default=None)

  @property
  def streamed(self) -> bool:
    return self.prepared is not None


def place(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Inputs:
  """The config's data (config.data), checked against its model's input shape, placed."""
  faults.point("put_data")
  data_config, input_shape = config.data, tuple(config.model.input_shape)
  eval_batch = parallelism.eval_batch_size(config.eval_batch_size, mesh)
  if data_config.pipeline == "grain":
    return _locate_streams(data_config, input_shape, eval_batch, mesh)
  splits = data.load_dataset(data_config)
  _check_shape(input_shape, splits.train_images.shape[1:], splits.source)
  eval_splits = {"test": put_eval_split(splits.test_images, splits.test_labels, eval_batch, mesh)}
  if data_config.validation_size:
    eval_splits["validation"] = put_eval_split(
        splits.validation_images, splits.validation_labels, eval_batch, mesh)
  train_data = {"image": parallelism.put_replicated(splits.train_images, mesh),
                "label": parallelism.put_replicated(splits.train_labels, mesh)}
  return Inputs(train_data=train_data, eval_splits=eval_splits, source=splits.source,
                fingerprint=data.fingerprint(splits), eval_batch=eval_batch,
                num_train=len(splits.train_labels))


def _check_shape(input_shape: tuple[int, ...], images_shape: tuple[int, ...], source: str) -> None:
  if tuple(images_shape) != input_shape:
    raise ConfigError(f"config.model.input_shape={input_shape} does not match the images of "
                      f"{source}, {tuple(images_shape)}.")


def _locate_streams(data_config: ml_collections.ConfigDict, input_shape: tuple[int, ...],
                    eval_batch: int, mesh: jax.sharding.Mesh) -> Inputs:
  """The grain pipeline's inputs: which records train and evaluate, nothing read or placed yet."""
  from kd_jax.data import streaming  # pylint: disable=g-import-not-at-top  # grain: only here.
  prepared = data.open_records(data_config)
  _check_shape(input_shape, prepared.image_shape, prepared.source)
  streaming.check_mesh(mesh)
  streaming.check_grain_workers(data_config.grain_workers)
  num_train = prepared.splits["train"]["num_examples"]
  cut = data.train_validation_cut(num_train, data_config.validation_size)
  train_records = data.select_examples(
      np.asarray(prepared.labels("train")[:cut]), tuple(data_config.train_classes),
      data_config.train_subset, data_config.subset_seed, prepared.num_classes)
  eval_splits = {"test": streaming.StreamedSplit.of(prepared, "test", eval_batch)}
  if data_config.validation_size:
    eval_splits["validation"] = streaming.StreamedSplit.of(prepared, "train", eval_batch,
                                                           np.arange(cut, num_train))
  return Inputs(train_data={}, eval_splits=eval_splits, source=prepared.source,
                fingerprint=streaming.fingerprint(prepared, train_records,
                                                  data_config.validation_size),
                eval_batch=eval_batch, num_train=len(train_records), prepared=prepared,
                train_records=train_records)
