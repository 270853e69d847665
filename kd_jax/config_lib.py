"""Config defaults shared by the files under configs/, and their validation.

Every training config has num_epochs, batch_size (global, across all devices), learning_rate and
seed at the top level; distillation configs add temperature, alpha, soft_loss and
teacher_workdir. A config with a non-empty teacher_workdir is a distillation run, whichever
command runs it. `validate` turns every bad value into a ConfigError naming the field.

A run is a population: `members` seeds (seed, seed + 1, ...) for each point of the grid spanned by
the non-empty tuples of `sweep` (temperature, alpha, learning_rate); `population_members` lists
them. The default, one member and no sweep, is a single model.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any, Callable

import ml_collections

from kd_jax import data, extensions, losses, models
from kd_jax.errors import ConfigError

LR_SCHEDULES = ("constant", "cosine")
# Fields added after the first runs were saved: a saved config without one held its default.
ADDED_FIELDS = ("members", "sweep.temperature", "sweep.alpha", "sweep.learning_rate",
                "member_batch", "model.compute_dtype", "data.train_classes", "data.train_subset",
                "data.subset_seed", "teacher_members", "teacher_ensemble", "cache_teacher_logits",
                "data.name", "data.pairs.num_train", "data.pairs.num_validation",
                "data.pairs.num_test", "data.pairs.seed", "model.num_classes", "model.input_shape",
                "extension", "optimizer", "sgd.momentum_start",
                "sgd.momentum_end", "sgd.momentum_epochs", "sgd.decay_per_epoch",
                "soft_t_squared", "model.name", "model.conv_features", "teacher_dropout_masks",
                "teacher_dropout_seed", "data.records_dir", "data.pipeline", "data.grain_workers",
                "data.prefetch", "data.shared_order", "checkpoint.every_steps")
# Fields removed from the defaults, with the value they had in runs saved before (their old
# default): such a run is the same run as one without them. (Specialists' fields moved to their
# extension, kd_jax.paper.specialist_lib.)
REMOVED_FIELDS = {"class_subsets": [], "init_workdir": ""}
OPTIMIZERS = ("adam", "sgd_momentum")
PIPELINES = ("memory", "grain")
SWEEPABLE = ("temperature", "alpha", "learning_rate")


def base_config() -> ml_collections.ConfigDict:
  """Hard-label training of a 2x800 MLP with no regularisation (the paper's small net)."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_epochs = 30
  config.batch_size = 128
  config.learning_rate = 1e-3
  config.lr_schedule = "cosine"  # Of Adam; sgd_momentum has its own schedule (config.sgd).
  config.optimizer = "adam"  # Or "sgd_momentum", the 2012 dropout paper's recipe.
  config.sgd = ml_collections.ConfigDict()  # With optimizer="sgd_momentum".
  config.sgd.momentum_start = 0.5
  config.sgd.momentum_end = 0.99
  config.sgd.momentum_epochs = 500
  config.sgd.decay_per_epoch = 0.998
  config.eval_batch_size = 1000

  config.members = 1  # Seeds per setting: seed, seed + 1, ...
  config.sweep = ml_collections.ConfigDict()
  for name in SWEEPABLE:  # Empty: not swept, the top-level value is used.
    config.sweep[name] = ()
  config.member_batch = 0  # Members vmapped together: 0 = auto (1 on CPU, all on accelerators).

  config.model = ml_collections.ConfigDict()
  # "mlp", "cnn" (models.CNN: conv_features, then hidden_sizes; BatchNorm), or a user's module
  # as "package.module:Class" with its dataclass fields in model.fields (kd_jax.train(model=...)
  # records both).
  config.model.name = "mlp"
  config.model.conv_features = (16, 32)  # cnn only: channels of its 3x3 convolutions.
  config.model.hidden_sizes = (800, 800)
  config.model.input_dropout = 0.0
  config.model.hidden_dropout = 0.0
  config.model.max_norm = 0.0  # 0 disables the constraint.
  config.model.compute_dtype = "float32"  # Or "bfloat16" matmuls (parameters stay float32).
  config.model.input_shape = data.IMAGE_SHAPE  # The dataset's image shape.
  config.model.num_classes = data.NUM_CLASSES  # The dataset's classes (a specialist's: its own).

  config.data = ml_collections.ConfigDict()
  config.data.name = "mnist"  # Or "mnist_pairs" (100 two-digit classes), or "tfds:NAME".
  config.data.pairs = ml_collections.ConfigDict()  # mnist_pairs: how many pairs, from which seed.
  config.data.pairs.num_train = 60_000
  config.data.pairs.num_validation = 10_000  # Drawn from the held-out digits (validation_size).
  config.data.pairs.num_test = 10_000
  config.data.pairs.seed = 0
  config.data.mnist_dir = ""  # Empty: $KD_JAX_MNIST_DIR, else tensorflow-datasets.
  config.data.tfds_data_dir = ""  # Empty: TFDS's default (~/tensorflow_datasets).
  config.data.tfds_manual_dir = ""  # The four original .gz files, for TFDS to prepare offline.
  config.data.validation_size = 0
  config.data.jitter = 0  # Max shift in pixels (the paper's teacher uses 2).
  # The training (transfer) set: only these classes (empty: all), and with train_subset > 0 a
  # class-balanced subset of that many examples drawn from subset_seed. Validation/test stay whole.
  config.data.train_classes = ()
  config.data.train_subset = 0
  config.data.subset_seed = 0
  config.data.check_counts = True  # False accepts IDX folders smaller than MNIST (tests).
  # A folder made by `python -m kd_jax.data.prepare` (ArrayRecord shards), read instead of the
  # source data.name names (which must match what it was prepared from).
  config.data.records_dir = ""
  # "memory": the dataset on every device, epochs compiled whole (fastest where it fits); "grain":
  # records_dir streamed by grain, each process reading its share of every batch.
  config.data.pipeline = "memory"
  config.data.grain_workers = 0  # grain: worker processes (0: threads of this process).
  config.data.prefetch = 2  # grain: batches read ahead of the step, per stream.
  config.data.shared_order = False  # grain: a population's members read one stream, one order.

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_epochs = 1
  config.checkpoint.max_to_keep = 3
  config.checkpoint.every_steps = 0  # grain: also checkpoint within epochs (0: epochs only).

  # "package.module:NAME" of a kd_jax.extensions.Extension that changes the run (the paper's
  # specialists); empty for a plain run.
  config.extension = ""
  return config


def add_distillation(config: ml_collections.ConfigDict, temperature: float = 20.0,
                     alpha: float = 0.9) -> ml_collections.ConfigDict:
  """Adds the distillation fields; alpha weights the soft term, (1 - alpha) the hard term."""
  config.teacher_workdir = ""
  config.temperature = temperature
  config.alpha = alpha
  config.soft_loss = "soft_cross_entropy"
  config.teacher_members = ()  # Indices into a population teacher; empty: all its members.
  config.teacher_ensemble = "arithmetic"  # How members' tempered probabilities are combined.
  config.cache_teacher_logits = True  # Without jitter, compute teacher logits once per run.
  config.soft_t_squared = True  # The paper's T^2 on the soft term (False: an ablation).
  # > 0: the cached targets average the teacher's tempered probabilities over this many dropout
  # masks per image (train mode, masks from teacher_dropout_seed); 0: the teacher in eval mode.
  config.teacher_dropout_masks = 0
  config.teacher_dropout_seed = 0
  return config


def is_distillation(config: ml_collections.ConfigDict) -> bool:
  """The config alone decides: a teacher workdir makes it a distillation run."""
  return bool(config.get("teacher_workdir"))


def hparam_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The per-member hyperparameters of a run: the learning rate, and T and alpha to distil."""
  return SWEEPABLE if is_distillation(config) else ("learning_rate",)


def population_members(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  """The members of the run, in order: every sweep point (temperature, alpha, learning_rate, in
  that nesting) times `members` seeds. Each is {index, seed, learning_rate[, temperature, alpha]};
  a run's extension may add members or settings (specialists: one set per class subset).

  Reads saved configs of older runs too (no `members` or `sweep`: one member).
  """
  names = hparam_names(config)
  sweep = config.get("sweep") or {}
  grids = [tuple(sweep.get(name) or ()) or (config[name],) for name in names]
  members = []
  for point in itertools.product(*grids):
    for offset in range(config.get("members", 1)):
      members.append({"index": len(members), "seed": config.seed + offset,
                      **{name: float(value) for name, value in zip(names, point)}})
  extension = extensions.of(config)
  return extension.members(config, members) if extension else members


def is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def check_field(config: ml_collections.ConfigDict, field: str, ok: Callable[[Any], bool],
                expected: str) -> None:
  """Raises ConfigError naming `field` (dotted) when it is missing or `ok(value)` is False."""
  value = config
  for part in field.split("."):
    if part not in value:
      raise ConfigError(f"config.{field} is missing (expected {expected}).")
    value = value[part]
  try:
    good = ok(value)
  except TypeError:
    good = False
  if not good:
    raise ConfigError(f"config.{field}={value!r} is invalid: expected {expected}.")


def dataset_classes(config: ml_collections.ConfigDict) -> int | None:
  """How many classes the config's dataset has, where kd_jax knows it without reading it."""
  return {"mnist": data.NUM_CLASSES, "mnist_pairs": data.PAIR_BASE**2}.get(config.data.name)


def is_class_tuple(config: ml_collections.ConfigDict, value: Any) -> bool:
  """A tuple of distinct class labels of the config's dataset."""
  num_classes = dataset_classes(config) or 2**31
  return isinstance(value, tuple) and len(set(value)) == len(value) and all(
      is_int(c) and 0 <= c < num_classes for c in value)


def validate(config: ml_collections.ConfigDict, require_teacher: bool = False) -> None:
  """Raises ConfigError for the first value that is missing, mistyped or out of range.

  Distillation fields are checked whenever the config names a teacher; `require_teacher` (the
  distill command) also insists that it does.
  """

  check = functools.partial(check_field, config)
  is_num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
  check("num_epochs", lambda v: is_int(v) and v > 0, "a positive integer")
  check("batch_size", lambda v: is_int(v) and v > 0, "a positive integer")
  check("eval_batch_size", lambda v: is_int(v) and v > 0, "a positive integer")
  check("learning_rate", lambda v: is_num(v) and v > 0, "a positive finite number")
  check("lr_schedule", lambda v: v in LR_SCHEDULES, f"one of {LR_SCHEDULES}")
  check("optimizer", lambda v: v in OPTIMIZERS, f"one of {OPTIMIZERS}")
  if config.optimizer == "sgd_momentum":
    check("sgd.momentum_start", lambda v: is_num(v) and 0 <= v < 1, "a number in [0, 1)")
    check("sgd.momentum_end", lambda v: is_num(v) and 0 <= v < 1, "a number in [0, 1)")
    check("sgd.momentum_epochs", lambda v: is_num(v) and v > 0, "a number of epochs > 0")
    check("sgd.decay_per_epoch", lambda v: is_num(v) and 0 < v <= 1, "a number in (0, 1]")
  check("seed", lambda v: is_int(v) and 0 <= v and v + config.get("members", 1) <= 2**32,
        "an integer in [0, 2**32 - members] (PRNG seeds are 32-bit: 2**32 would equal 0)")
  check("model.name", lambda v: isinstance(v, str) and (v in models.MODELS or ":" in v),
        f"one of {models.MODELS}, or 'package.module:Class' for a module of your own")
  if config.model.name == "mlp":
    check("model.hidden_sizes", lambda v: len(v) > 0 and all(is_int(s) and s > 0 for s in v),
          "a non-empty tuple of positive integers")
  check("model.hidden_sizes", lambda v: isinstance(v, tuple) and all(is_int(s) and s > 0
                                                                     for s in v),
        "a tuple of positive integers")
  check("model.conv_features", lambda v: isinstance(v, tuple) and all(
      is_int(s) and s > 0 for s in v), "a tuple of positive integers (the cnn's channels)")
  check("model.input_dropout", lambda v: is_num(v) and 0 <= v < 1, "a number in [0, 1)")
  check("model.hidden_dropout", lambda v: is_num(v) and 0 <= v < 1, "a number in [0, 1)")
  check("model.max_norm", lambda v: is_num(v) and v >= 0, "a number >= 0 (0 disables it)")
  check("model.compute_dtype", lambda v: v in models.COMPUTE_DTYPES,
        f"one of {models.COMPUTE_DTYPES}")
  check("data.validation_size", lambda v: is_int(v) and v >= 0, "an integer >= 0")
  check("data.jitter", lambda v: is_int(v) and 0 <= v < 14,
        "an integer number of pixels in [0, 14)")
  check("model.input_shape", lambda v: isinstance(v, tuple) and len(v) in (2, 3) and all(
      is_int(s) and s > 0 for s in v), "the dataset's image shape, (H, W) or (H, W, C)")
  check("model.num_classes", lambda v: is_int(v) and v > 1, "an integer > 1")
  check("data.name", data.is_dataset_name, f"one of {data.DATASETS}")
  for count in ("num_train", "num_validation", "num_test"):
    check(f"data.pairs.{count}", lambda v: is_int(v) and v >= 0, "an integer >= 0")
  check("data.pairs.seed", is_int, "an integer")
  known_shapes = {"mnist": (data.IMAGE_SHAPE, data.NUM_CLASSES),
                  "mnist_pairs": ((28, 28 * 2), data.PAIR_BASE**2)}
  if config.data.name in known_shapes:
    shape, classes = known_shapes[config.data.name]
    check("model.input_shape", lambda v: tuple(v) == shape,
          f"{shape}, the shape of {config.data.name} images")
    if not config.get("extension"):  # An extension may give members classes of their own.
      check("model.num_classes", lambda v: v == classes,
            f"{classes}, the number of {config.data.name} classes")
  check("data.train_classes", lambda v: is_class_tuple(config, v),
        "a tuple of distinct class labels of the dataset (empty: all classes)")
  check("data.train_subset", lambda v: is_int(v) and v >= 0, "an integer >= 0 (0: all)")
  check("data.subset_seed", is_int, "an integer")
  check("checkpoint.every_epochs", lambda v: is_int(v) and v > 0, "a positive integer")
  check("checkpoint.every_steps", lambda v: is_int(v) and v >= 0, "an integer >= 0 (0: epochs "
        "only)")
  check("data.records_dir", lambda v: isinstance(v, str), "a folder made by kd_jax.data.prepare")
  check("data.pipeline", lambda v: v in PIPELINES, f"one of {PIPELINES}")
  check("data.grain_workers", lambda v: is_int(v) and v >= 0, "an integer >= 0 (0: threads)")
  check("data.prefetch", lambda v: is_int(v) and v > 0, "a positive integer")
  check("data.shared_order", lambda v: isinstance(v, bool), "True or False")
  if config.data.pipeline == "grain":
    check("data.records_dir", bool, "a folder made by `python -m kd_jax.data.prepare --name "
          f"{config.data.name} --out DIR`: the grain pipeline streams prepared ArrayRecord shards")
    check("extension", lambda v: not v, "'' with data.pipeline='grain' (an extension's sampler "
          "draws batches on the device, from a dataset held there)")
    if config.get("teacher_dropout_masks", 0):
      check("teacher_dropout_masks", lambda v: False, "0 with data.pipeline='grain' (the masks "
            "are drawn per batch of the memory pipeline's cache)")
  else:
    check("checkpoint.every_steps", lambda v: v == 0, "0 with data.pipeline='memory' (its "
          "epoch is one compiled call; checkpoints fall between epochs)")
    defaults = base_config().data
    for name in ("grain_workers", "prefetch", "shared_order"):  # Not silently ignored.
      check(f"data.{name}", lambda v, name=name: v == defaults[name],
            f"{defaults[name]!r} with data.pipeline='memory' (it sets the grain pipeline)")
  check("checkpoint.max_to_keep", lambda v: is_int(v) and v > 0, "a positive integer")
  check("members", lambda v: is_int(v) and v > 0, "a positive integer")
  check("member_batch", lambda v: is_int(v) and v >= 0, "an integer >= 0 (0: auto)")
  is_tuple_of = lambda ok: lambda v: isinstance(v, tuple) and all(ok(x) for x in v)
  check("sweep.learning_rate", is_tuple_of(lambda x: is_num(x) and x > 0),
        "a tuple of positive numbers (empty: not swept)")
  if require_teacher or is_distillation(config):
    check("teacher_workdir", lambda v: isinstance(v, str) and v,
          "the workdir of a trained teacher (--config.teacher_workdir=RUN_T)")
    check("temperature", lambda v: is_num(v) and v > 0, "a finite number > 0")
    check("alpha", lambda v: is_num(v) and 0 <= v <= 1, "a number in [0, 1]")
    check("soft_loss", lambda v: v in losses.DISTILL_LOSSES, f"one of {losses.DISTILL_LOSSES}")
    check("teacher_members", is_tuple_of(lambda x: is_int(x) and x >= 0),
          "a tuple of member indices of the teacher run (empty: all)")
    check("teacher_ensemble", lambda v: v in losses.ENSEMBLE_MEANS,
          f"one of {losses.ENSEMBLE_MEANS}")
    check("cache_teacher_logits", lambda v: isinstance(v, bool), "True or False")
    check("teacher_dropout_masks", lambda v: is_int(v) and v >= 0,
          "an integer >= 0 (0: the teacher in eval mode)")
    check("teacher_dropout_seed", lambda v: is_int(v) and 0 <= v < 2**32, "an integer in [0, 2**32)")
    if config.get("teacher_dropout_masks", 0):
      check("teacher_dropout_masks", lambda v: not config.data.jitter and config.cache_teacher_logits,
            "0 unless the teacher's logits are cached once (data.jitter=0, "
            "cache_teacher_logits=True): masks are drawn once per image of a fixed transfer set")
    check("soft_t_squared", lambda v: isinstance(v, bool), "True or False")
    check("sweep.temperature", is_tuple_of(lambda x: is_num(x) and x > 0),
          "a tuple of numbers > 0 (empty: not swept)")
    check("sweep.alpha", is_tuple_of(lambda x: is_num(x) and 0 <= x <= 1),
          "a tuple of numbers in [0, 1] (empty: not swept)")
  else:
    for name in ("temperature", "alpha"):
      check(f"sweep.{name}", lambda v: not v,
            "an empty tuple: only a distillation run (one with config.teacher_workdir) has a "
            f"{name} to sweep")
  check("extension", lambda v: isinstance(v, str), "'package.module:NAME' of an extension, or ''")
  extension = extensions.of(config)
  if extension:
    extension.validate(config)


# ----------------------------------------------------------------------------- reference

TRAINING = "train, distill, pipeline, the paper's commands"
DISTILLATION = "distill (and any command given a config with a teacher)"
# Every field of base_config() and add_distillation(): (who reads it, what it means). The config
# reference (docs/config_reference.md) is generated from these and the defaults; a test fails
# when a field has no entry here or the committed page is stale.
FIELDS: dict[str, tuple[str, str]] = {
    "seed": (TRAINING, "PRNG seed of member 0 (member i of a population: seed + i); it decides "
                       "initialisation, data order, jitter and dropout"),
    "num_epochs": (TRAINING, "epochs to train"),
    "batch_size": (TRAINING, "global batch, across all devices (divisible by their number)"),
    "learning_rate": (TRAINING, "the optimizer's peak learning rate"),
    "lr_schedule": (TRAINING, "Adam's schedule: constant or cosine decay over the run"),
    "optimizer": (TRAINING, "adam, or sgd_momentum (the 2012 dropout paper's recipe, sgd.*)"),
    "sgd.momentum_start": (TRAINING, "sgd_momentum: momentum at the start"),
    "sgd.momentum_end": (TRAINING, "sgd_momentum: momentum reached after momentum_epochs"),
    "sgd.momentum_epochs": (TRAINING, "sgd_momentum: epochs over which momentum rises"),
    "sgd.decay_per_epoch": (TRAINING, "sgd_momentum: the rate's factor per epoch"),
    "eval_batch_size": (TRAINING + ", evaluate", "evaluation batch (rounded up to a multiple of "
                                                 "the device count; padding is masked)"),
    "members": (TRAINING, "seeds per setting: a population of that many models in one "
                          "compiled epoch"),
    "sweep.temperature": (DISTILLATION, "temperatures to sweep (empty: not swept)"),
    "sweep.alpha": (DISTILLATION, "soft-term weights to sweep (empty: not swept)"),
    "sweep.learning_rate": (TRAINING, "learning rates to sweep (empty: not swept)"),
    "member_batch": (TRAINING, "members vmapped together (0: one at a time on CPU, all on "
                               "accelerators)"),
    "model.name": (TRAINING, "mlp, cnn, or 'package.module:Class' for a module of your own"),
    "model.conv_features": (TRAINING, "cnn: channels of its 3x3 convolutions (BatchNorm, "
                                      "2x2 max-pooling each)"),
    "model.hidden_sizes": (TRAINING, "units of the hidden dense layers (ReLU)"),
    "model.input_dropout": (TRAINING, "dropout rate on the input (on the flattened features "
                                      "for cnn)"),
    "model.hidden_dropout": (TRAINING, "dropout rate after each hidden layer"),
    "model.max_norm": (TRAINING, "max-norm of each hidden unit's incoming weights (0: off)"),
    "model.compute_dtype": (TRAINING, "float32, or bfloat16 matmuls (parameters stay float32)"),
    "model.input_shape": (TRAINING, "one image's shape, (H, W) or (H, W, C): the dataset's"),
    "model.num_classes": (TRAINING, "outputs: the dataset's classes (a specialist's own)"),
    "data.name": (TRAINING, "mnist, mnist_pairs (100 two-digit classes) or tfds:NAME"),
    "data.pairs.num_train": (TRAINING, "mnist_pairs: training pairs"),
    "data.pairs.num_validation": (TRAINING, "mnist_pairs: validation pairs (from held-out "
                                            "digits)"),
    "data.pairs.num_test": (TRAINING, "mnist_pairs: test pairs"),
    "data.pairs.seed": (TRAINING, "mnist_pairs: the seed the pairs are drawn from"),
    "data.mnist_dir": (TRAINING + ", evaluate", "folder of the four IDX files (empty: "
                                                "$KD_JAX_MNIST_DIR, else tensorflow-datasets)"),
    "data.tfds_data_dir": (TRAINING, "tensorflow-datasets' data folder (empty: its default)"),
    "data.tfds_manual_dir": (TRAINING, "the four original .gz files, for TFDS to prepare "
                                       "offline"),
    "data.validation_size": (TRAINING, "training images held out as a validation split"),
    "data.jitter": (TRAINING, "maximum shift in pixels of each training image (the paper's "
                              "teacher: 2)"),
    "data.train_classes": (TRAINING, "only these classes in the training (transfer) set "
                                     "(empty: all)"),
    "data.train_subset": (TRAINING, "a class-balanced subset of this many training examples "
                                    "(0: all)"),
    "data.subset_seed": (TRAINING, "the seed that subset is drawn from"),
    "data.check_counts": (TRAINING, "insist on MNIST's sizes (False accepts smaller IDX "
                                    "folders, for tests)"),
    "checkpoint.every_epochs": (TRAINING, "checkpoint cadence in epochs (the last is always "
                                          "saved)"),
    "checkpoint.max_to_keep": (TRAINING, "checkpoints kept"),
    "checkpoint.every_steps": (TRAINING, "grain pipeline: also checkpoint every that many steps "
                                         "within an epoch, with the data iterator (0: epochs "
                                         "only)"),
    "data.records_dir": (TRAINING, "a folder made by `python -m kd_jax.data.prepare` "
                                   "(ArrayRecord shards), read instead of data.name's source"),
    "data.pipeline": (TRAINING, "memory (the dataset on every device, whole epochs compiled) or "
                                "grain (data.records_dir streamed, each process its share)"),
    "data.grain_workers": (TRAINING, "grain: worker processes decoding and batching (0: threads "
                                     "of this process)"),
    "data.prefetch": (TRAINING, "grain: batches read ahead of the step"),
    "data.shared_order": (TRAINING, "grain: a population's members read one stream in one order "
                                    "(else one stream per member)"),
    "extension": (TRAINING, "'package.module:NAME' of a kd_jax.extensions.Extension that changes "
                            "the run (the paper's specialists), or empty"),
    "teacher_workdir": (DISTILLATION, "the teacher's run; a config with one distils"),
    "temperature": (DISTILLATION, "T of the soft targets"),
    "alpha": (DISTILLATION, "weight of the soft term (the hard term gets 1 - alpha)"),
    "soft_loss": (DISTILLATION, "soft_cross_entropy (the paper's; reported as KL x T^2), "
                                "logit_matching or softmax_mse (the reference notebook's)"),
    "teacher_members": (DISTILLATION, "indices into a population teacher (empty: all, as an "
                                      "ensemble)"),
    "teacher_ensemble": (DISTILLATION, "how a population teacher's members combine: "
                                       "arithmetic or geometric mean"),
    "teacher_dropout_masks": (DISTILLATION, "> 0: the soft targets average the teacher's "
                              "tempered probabilities over this many dropout masks per image "
                              "(train mode, cached once); 0: the teacher in eval mode"),
    "teacher_dropout_seed": (DISTILLATION, "the key the teacher's dropout masks are drawn from"),
    "cache_teacher_logits": (DISTILLATION, "without jitter, compute the teacher's logits once "
                                           "per run instead of in every step"),
    "soft_t_squared": (DISTILLATION, "the paper's T^2 on the soft term (False: an ablation)"),
}


def reference_markdown() -> str:
  """docs/config_reference.md: every field with its default, type, readers and meaning."""
  import json  # pylint: disable=g-import-not-at-top
  defaults = add_distillation(base_config())

  def flatten(tree, prefix=""):
    for key, value in tree.items():
      if isinstance(value, dict):
        yield from flatten(value, f"{prefix}{key}.")
      else:
        yield f"{prefix}{key}", value

  lines = ["# Config reference", "",
           "Generated from `kd_jax.config_lib` (`base_config()`, `add_distillation()` and "
           "`FIELDS`) by `python scripts/config_reference.py`; a test keeps it current. Override "
           "any field with `--config.FIELD=VALUE` or `kd_jax.configs.get(NAME, FIELD=VALUE)` "
           "(nested: `model__hidden_sizes`).", "",
           "| field | default | type | used by | meaning |", "|---|---|---|---|---|"]
  for field, value in flatten(json.loads(defaults.to_json_best_effort())):
    used_by, meaning = FIELDS[field]
    kind = type(value).__name__ if not isinstance(value, list) else "tuple"
    shown = json.dumps(tuple(value) if isinstance(value, list) else value).replace("|", "\\|")
    lines.append(f"| `{field}` | `{shown}` | {kind} | {used_by} | {meaning} |")
  return "\n".join(lines) + "\n"
