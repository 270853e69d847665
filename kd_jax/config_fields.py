"""Every config field, declared once: its default, type, the check of its value alone, meaning
and readers (FIELDS), with the checks those declarations use.

`kd_jax.config_lib` builds configs and validates them from this table (base_config(),
add_distillation(), validate()'s per-field checks); ADDED_FIELDS and docs/config_reference.md
derive from it too.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import ml_collections

from kd_jax import data, losses, models

LR_SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("adam", "sgd_momentum")
PIPELINES = ("memory", "grain")
EPOCH_DRIVERS = ("auto", "scan", "steps")
TEACHING = ("consistent", "fixed", "independent", "function_matching")
SWEEPABLE = ("temperature", "alpha", "learning_rate")
# Fields removed from the defaults, with the value they had in runs saved before (their old
# default): such a run is the same run as one without them. (Specialists' fields moved to their
# extension, kd_jax.paper.specialist_lib.)
REMOVED_FIELDS = {"class_subsets": [], "init_workdir": ""}
TRAINING = "train, distill, pipeline, the paper's commands"
DISTILLATION = "distill (and any command given a config with a teacher)"


def is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


FLOAT32_MAX = 3.4028234663852886e38  # The step computes in float32: larger overflows to inf,
FLOAT32_TINY = 1.1754943508222875e-38  # and a positive number below the smallest normal one
# flushes towards 0 (a learning rate of 1e-300 is 0; a temperature of 1e300 makes T**2 inf).
TEMPERATURE_RANGE = (1e-19, 1e19)  # T**2 and 1 / T**2 (the soft loss's scale) finite in float32.


def is_num(value: Any) -> bool:
  """A finite int or float (not a bool) that float32, in which the step computes, holds."""
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value) and abs(value) <= FLOAT32_MAX)


def is_positive(value: Any) -> bool:
  """A number > 0 that float32 holds without overflow or flushing to (near) zero."""
  return is_num(value) and value >= FLOAT32_TINY


def is_temperature(value: Any) -> bool:
  return is_num(value) and TEMPERATURE_RANGE[0] <= value <= TEMPERATURE_RANGE[1]


def is_distillation(config: ml_collections.ConfigDict) -> bool:
  """The config alone decides: a teacher workdir makes it a distillation run."""
  return bool(config.get("teacher_workdir"))


# ----------------------------------------------------------------------------- the fields

Check = tuple[Callable[[Any], bool], str]  # A predicate of the value; what it accepts, in words.


def tuple_of(ok: Callable[[Any], bool]) -> Callable[[Any], bool]:
  return lambda v: isinstance(v, tuple) and all(ok(x) for x in v)


def one_of(values: tuple[str, ...]) -> Check:
  return (lambda v: v in values), f"one of {values}"


def at_least_0(note: str = "") -> Check:
  return (lambda v: is_int(v) and v >= 0), "an integer >= 0" + (f" ({note})" if note else "")


POSITIVE = (lambda v: is_int(v) and v > 0), "a positive integer"
FRACTION = (lambda v: is_num(v) and 0 <= v < 1), "a number in [0, 1)"
BOOL = (lambda v: isinstance(v, bool)), "True or False"
SIZES = tuple_of(lambda s: is_int(s) and s > 0)  # Layer widths, channels, image dimensions.


@dataclasses.dataclass(frozen=True)
class Field:
  """One config field: its default, the check of its value alone, and its documentation."""
  name: str  # Dotted, as in --config.model.hidden_sizes.
  default: Any
  type: type  # The default's; ml_collections keeps it for overrides.
  check: Check | None  # None: any value (validate() may still relate it to other fields).
  meaning: str
  used_by: str = TRAINING
  distillation: bool = False  # Set by add_distillation(); checked only in distillation runs.
  added: bool = False  # Added after the first runs were saved: a saved run without it held this.
  when: Callable[[ml_collections.ConfigDict], bool] | None = None  # Checked only where true.
  sweepable: bool = False  # A per-member number of the step (a loss term's): sweep.<name>.


_distil = functools.partial(Field, used_by=DISTILLATION, distillation=True)
_sgd = functools.partial(Field, added=True, when=lambda c: c.optimizer == "sgd_momentum")
_sweep = functools.partial(Field, used_by=DISTILLATION, added=True, when=is_distillation)
_term = functools.partial(Field, used_by=DISTILLATION, distillation=True, added=True)
NONNEGATIVE = (lambda v: is_num(v) and v >= 0), "a number >= 0"
TEMPERATURE = (is_temperature, "a number in [1e-19, 1e19]")
WARMUP = at_least_0("0: the full weight from the first step")
PATHS = tuple_of(lambda v: isinstance(v, str) and v), "a tuple of feature paths ('block_1')"

# Loss terms beyond the paper's (kd_jax.losses.LOGIT_TERMS and FEATURE_TERMS), added to alpha *
# soft + (1 - alpha) * hard as weight * min(epoch / warmup_epochs, 1) * term; weight 0: left out.
TERM_FIELDS = (
    _term("terms.dkd.weight", 0.0, float, NONNEGATIVE,
          "Decoupled KD (Zhao et al. 2022): the term's weight (0: off)", sweepable=True),
    _term("terms.dkd.alpha", 1.0, float, NONNEGATIVE, "DKD: weight of its target-class part "
          "(TCKD)", sweepable=True),
    _term("terms.dkd.beta", 8.0, float, NONNEGATIVE, "DKD: weight of its non-target part (NCKD)",
          sweepable=True),
    _term("terms.dkd.temperature", 4.0, float, TEMPERATURE, "DKD: its temperature",
          sweepable=True),
    _term("terms.dkd.warmup_epochs", 20, int, WARMUP,
          "DKD: epochs over which its weight ramps up linearly (mdistiller's 20)"),
    _term("terms.dist.weight", 0.0, float, NONNEGATIVE,
          "DIST (Huang et al. 2022): the term's weight (0: off)", sweepable=True),
    _term("terms.dist.beta", 1.0, float, NONNEGATIVE, "DIST: weight of its inter-class relation",
          sweepable=True),
    _term("terms.dist.gamma", 1.0, float, NONNEGATIVE, "DIST: weight of its intra-class relation",
          sweepable=True),
    _term("terms.dist.temperature", 1.0, float, TEMPERATURE, "DIST: its temperature",
          sweepable=True),
    _term("terms.dist.warmup_epochs", 0, int, WARMUP,
          "DIST: epochs over which its weight ramps up linearly"),
    _term("terms.fitnets.weight", 0.0, float, NONNEGATIVE,
          "FitNets hints (Romero et al. 2015): the term's weight (0: off)", sweepable=True),
    _term("terms.fitnets.student", (), tuple, PATHS, "FitNets: the student's features, by path, "
          "each projected to its teacher feature's channels by a learned adapter"),
    _term("terms.fitnets.teacher", (), tuple, PATHS,
          "FitNets: the teacher's features, one per student feature, of its spatial size"),
    _term("terms.fitnets.warmup_epochs", 0, int, WARMUP, "FitNets: epochs its weight ramps up"),
    _term("terms.at.weight", 0.0, float, NONNEGATIVE,
          "attention transfer (Zagoruyko & Komodakis 2017): the term's weight (0: off)",
          sweepable=True),
    _term("terms.at.student", (), tuple, PATHS, "AT: the student's features, by path "
          "(kd_jax.features: the registry CNN's 'block_0', 'block_1', or a submodule's path)"),
    _term("terms.at.teacher", (), tuple, PATHS,
          "AT: the teacher's features, one per student feature, of the same spatial size"),
    _term("terms.at.p", 2.0, float, (is_positive, "a positive number"), "AT: the maps' power",
          sweepable=True),
    _term("terms.at.warmup_epochs", 0, int, WARMUP, "AT: epochs its weight ramps up"),
    _term("terms.rkd.weight", 0.0, float, NONNEGATIVE,
          "relational KD (Park et al. 2019): the term's weight (0: off)", sweepable=True),
    _term("terms.rkd.student", (), tuple, PATHS,
          "RKD: the student's features (embeddings), by path"),
    _term("terms.rkd.teacher", (), tuple, PATHS,
          "RKD: the teacher's features, one per student feature (any sizes)"),
    _term("terms.rkd.distance_weight", 25.0, float, NONNEGATIVE,
          "RKD: weight of its distance part (the paper's 25)", sweepable=True),
    _term("terms.rkd.angle_weight", 50.0, float, NONNEGATIVE,
          "RKD: weight of its angle part (the paper's 50)", sweepable=True),
    _term("terms.rkd.warmup_epochs", 0, int, WARMUP, "RKD: epochs its weight ramps up"),
)


def _sweeps(fields: tuple[Field, ...]) -> tuple[Field, ...]:
  """Each sweepable field's `sweep.<name>`: values of it to sweep, one member per value."""
  return tuple(_sweep(f"sweep.{f.name}", (), tuple, (
      tuple_of(f.check[0]), f"a tuple, each {f.check[1]} (empty: not swept)"),
      f"values of {f.name} to sweep (empty: not swept)") for f in fields if f.sweepable)


# Every field of base_config() then add_distillation(), in their order (that of saved configs
# and docs/config_reference.md, which a test keeps current).
FIELDS: dict[str, Field] = {f.name: f for f in (
    Field("seed", 0, int,
          (lambda v: is_int(v) and 0 <= v < 2**32,  # validate(): also seed + members <= 2**32.
           "an integer in [0, 2**32 - members] (PRNG seeds are 32-bit: 2**32 would equal 0)"),
          "PRNG seed of member 0 (member i of a population: seed + i); it decides "
          "initialisation, data order, jitter and dropout"),
    Field("num_epochs", 30, int, POSITIVE, "epochs to train"),
    Field("batch_size", 128, int, POSITIVE,
          "global batch, across all devices (divisible by their number)"),
    Field("learning_rate", 1e-3, float, (is_positive, "a positive number float32 holds "
                                                    "(1.2e-38 to 3.4e38)"),
          "the optimizer's peak learning rate"),
    Field("lr_schedule", "cosine", str, one_of(LR_SCHEDULES),
          "Adam's schedule: constant or cosine decay over the run"),
    Field("lr_warmup_epochs", 0, int, at_least_0("0: none"), "adam: epochs over which the rate "
          "rises linearly from 0 to learning_rate before lr_schedule takes over (cosine: decays "
          "over the remaining epochs); long function-matching schedules use a few", added=True),
    Field("optimizer", "adam", str, one_of(OPTIMIZERS),
          "adam, or sgd_momentum (the 2012 dropout paper's recipe, sgd.*)", added=True),
    _sgd("sgd.momentum_start", 0.5, float, FRACTION, "sgd_momentum: momentum at the start"),
    _sgd("sgd.momentum_end", 0.99, float, FRACTION,
         "sgd_momentum: momentum reached after momentum_epochs"),
    _sgd("sgd.momentum_epochs", 500, int, (lambda v: is_num(v) and v > 0, "a number of epochs > 0"),
         "sgd_momentum: epochs over which momentum rises"),
    _sgd("sgd.decay_per_epoch", 0.998, float,
         (lambda v: is_num(v) and 0 < v <= 1, "a number in (0, 1]"),
         "sgd_momentum: the rate's factor per epoch"),
    Field("eval_every_epochs", 1, int, POSITIVE, "evaluate (and log test figures) after every "
          "this many epochs and after the last: keeps long schedules cheap", added=True),
    Field("eval_batch_size", 1000, int, POSITIVE, "evaluation batch (rounded up to a multiple of "
          "the device count; padding is masked)", used_by=TRAINING + ", evaluate"),
    Field("members", 1, int, POSITIVE, "seeds per setting: a population of that many models in "
          "one compiled epoch", added=True),
    _sweep("sweep.temperature", (), tuple,
           (tuple_of(is_temperature), "a tuple of numbers in [1e-19, 1e19] (empty: not swept)"),
           "temperatures to sweep (empty: not swept)"),
    _sweep("sweep.alpha", (), tuple,
           (tuple_of(lambda x: is_num(x) and 0 <= x <= 1),
            "a tuple of numbers in [0, 1] (empty: not swept)"),
           "soft-term weights to sweep (empty: not swept)"),
    Field("sweep.learning_rate", (), tuple,
          (tuple_of(is_positive),
           "a tuple of positive numbers float32 holds (empty: not swept)"),
          "learning rates to sweep (empty: not swept)", added=True),
    *_sweeps(TERM_FIELDS),
    Field("member_batch", 0, int, at_least_0("0: auto"),
          "members vmapped together (0: one at a time on CPU, all on accelerators)", added=True),
    # A user's module records its dataclass fields in model.fields (kd_jax.train(model=...)).
    Field("model.name", "mlp", str,
          (lambda v: isinstance(v, str) and (v in models.MODELS or ":" in v),
           f"one of {models.MODELS}, or 'package.module:Class' for a module of your own"),
          "mlp, cnn, or 'package.module:Class' for a module of your own", added=True),
    Field("model.conv_features", (16, 32), tuple,
          (SIZES, "a tuple of positive integers (the cnn's channels)"),
          "cnn: channels of its 3x3 convolutions (BatchNorm, 2x2 max-pooling each)", added=True),
    Field("model.hidden_sizes", (800, 800), tuple, (SIZES, "a tuple of positive integers"),
          "units of the hidden dense layers (ReLU)"),
    Field("model.input_dropout", 0.0, float, FRACTION,
          "dropout rate on the input (on the flattened features for cnn)"),
    Field("model.hidden_dropout", 0.0, float, FRACTION, "dropout rate after each hidden layer"),
    Field("model.max_norm", 0.0, float,
          (lambda v: is_num(v) and v >= 0, "a number >= 0 (0 disables it)"),
          "max-norm of each hidden unit's incoming weights (0: off)"),
    Field("model.compute_dtype", "float32", str, one_of(models.COMPUTE_DTYPES),
          "float32, or bfloat16 matmuls summed in float32 (parameters stay float32)", added=True),
    Field("model.input_shape", data.IMAGE_SHAPE, tuple,
          (lambda v: SIZES(v) and len(v) in (2, 3),
           "the dataset's image shape, (H, W) or (H, W, C)"),
          "one image's shape, (H, W) or (H, W, C): the dataset's", added=True),
    Field("model.num_classes", data.NUM_CLASSES, int,
          (lambda v: is_int(v) and v > 1, "an integer > 1"),
          "outputs: the dataset's classes (a specialist's own)", added=True),
    Field("data.name", "mnist", str, (data.is_dataset_name, f"one of {data.DATASETS}"),
          "mnist, mnist_pairs (100 two-digit classes) or tfds:NAME", added=True),
    Field("data.pairs.num_train", 60_000, int, at_least_0(), "mnist_pairs: training pairs",
          added=True),
    Field("data.pairs.num_validation", 10_000, int, at_least_0(),
          "mnist_pairs: validation pairs (from held-out digits)", added=True),
    Field("data.pairs.num_test", 10_000, int, at_least_0(), "mnist_pairs: test pairs", added=True),
    Field("data.pairs.seed", 0, int, (is_int, "an integer"),
          "mnist_pairs: the seed the pairs are drawn from", added=True),
    Field("data.mnist_dir", "", str, None, "folder of the four IDX files (empty: "
          "$KD_JAX_MNIST_DIR, else tensorflow-datasets)", used_by=TRAINING + ", evaluate"),
    Field("data.tfds_data_dir", "", str, None,
          "tensorflow-datasets' data folder (empty: its default)"),
    Field("data.tfds_manual_dir", "", str, None,
          "the four original .gz files, for TFDS to prepare offline"),
    Field("data.validation_size", 0, int, at_least_0(),
          "training images held out as a validation split"),
    Field("data.jitter", 0, int,
          (lambda v: is_int(v) and 0 <= v < 14, "an integer number of pixels in [0, 14)"),
          "maximum shift in pixels of each training image (the paper's teacher: 2)"),
    # Validation and test sets stay whole. validate() bounds the labels by the dataset's classes.
    Field("data.train_classes", (), tuple,
          (lambda v: is_class_tuple(None, v),
           "a tuple of distinct class labels of the dataset (empty: all classes)"),
          "only these classes in the training (transfer) set (empty: all)", added=True),
    Field("data.train_subset", 0, int, at_least_0("0: all"),
          "a class-balanced subset of this many training examples (0: all)", added=True),
    Field("data.subset_seed", 0, int, (is_int, "an integer"), "the seed that subset is drawn from",
          added=True),
    Field("data.check_counts", True, bool, None,
          "insist on MNIST's sizes (False accepts smaller IDX folders, for tests)"),
    Field("data.records_dir", "", str,
          (lambda v: isinstance(v, str), "a folder made by kd_jax.data.prepare"),
          "a folder made by `python -m kd_jax.data.prepare` (ArrayRecord shards), read instead "
          "of data.name's source", added=True),
    Field("data.pipeline", "memory", str, one_of(PIPELINES), "memory (the dataset on every "
          "device, whole epochs compiled) or grain (data.records_dir streamed, each process its "
          "share)", added=True),
    Field("data.grain_workers", 0, int, at_least_0("0: threads"),
          "grain: worker processes decoding and batching (0: threads of this process)", added=True),
    Field("data.prefetch", 16, int, POSITIVE, "grain: batches read ahead of the step (at least "
          "data.steps_per_call: a call waits for all of its batches)", added=True),
    Field("data.steps_per_call", 8, int, POSITIVE, "grain: streamed batches one compiled call "
          "steps through (a loop over them: one dispatch for several steps; checkpoints and "
          "signal checks still fall on their steps; 1 for a model the memory pipeline steps, "
          "data.epoch_driver)", added=True),
    Field("data.shared_order", False, bool, BOOL, "a population's members share their batches "
          "(the order and views of the member seeded `seed`; grain: one stream), so each batch's "
          "mixup and teacher forward are computed once for all of them; each keeps its own "
          "initialisation and dropout (False: each member its own order and views)", added=True),
    Field("data.epoch_driver", "auto", str, one_of(EPOCH_DRIVERS),
          "memory pipeline: scan (the epoch as one compiled loop), steps (one compiled step per "
          "batch, dispatched from Python: the same batches, keys and updates, for models whose "
          "operations XLA:CPU runs slower inside a loop) or auto (steps on a CPU for a model with "
          "a convolution, scan otherwise)", added=True),
    Field("checkpoint.every_epochs", 1, int, POSITIVE,
          "checkpoint cadence in epochs (the last is always saved)"),
    Field("checkpoint.max_to_keep", 3, int, POSITIVE, "checkpoints kept"),
    Field("checkpoint.every_steps", 0, int, at_least_0("0: epochs only"),
          "grain pipeline: also checkpoint every that many steps within an epoch, with the data "
          "iterator (0: epochs only)", added=True),
    Field("extension", "", str,
          (lambda v: isinstance(v, str), "'package.module:NAME' of an extension, or ''"),
          "'package.module:NAME' of a kd_jax.extensions.Extension that changes the run (the "
          "paper's specialists), or empty", added=True),
    _distil("teacher_workdir", "", str,  # Its default, "": no teacher, not a distillation run.
            (lambda v: isinstance(v, str) and v,
             "the workdir of a trained teacher (--config.teacher_workdir=RUN_T)"),
            "the teacher's run; a config with one distils"),
    _distil("temperature", 20.0, float,
            (is_temperature, "a number in [1e-19, 1e19] (the soft loss is scaled by T**2, in "
             "float32)"),
            "T of the soft targets"),
    _distil("alpha", 0.9, float, (lambda v: is_num(v) and 0 <= v <= 1, "a number in [0, 1]"),
            "weight of the soft term (the hard term gets 1 - alpha)"),
    _distil("soft_loss", "soft_cross_entropy", str, one_of(losses.DISTILL_LOSSES),
            "soft_cross_entropy (the paper's; reported as KL x T^2), logit_matching or "
            "softmax_mse (the reference notebook's)"),
    _distil("teacher_members", (), tuple,
            (tuple_of(lambda x: is_int(x) and x >= 0),
             "a tuple of member indices of the teacher run (empty: all)"),
            "indices into a population teacher (empty: all, as an ensemble)", added=True),
    _distil("teacher_ensemble", "arithmetic", str, one_of(losses.ENSEMBLE_MEANS),
            "how a population teacher's members combine: arithmetic or geometric mean", added=True),
    _distil("cache_teacher_logits", True, bool, BOOL, "without jitter, compute the teacher's "
            "logits once per run instead of in every step", added=True),
    _distil("teacher_views_dir", "", str, None,  # Any folder; ConfigDict keeps it a str.
            "a folder where the teacher's outputs on each epoch's views (float32 logits, one file "
            "per epoch, under a key of the views and the teacher) are stored and read back by any "
            "later run with the same views and teacher: a second student, a sweep, a resumed run "
            "(memory pipeline, scanned epochs, members sharing their batches; '': off)",
            added=True),
    _distil("soft_t_squared", True, bool, BOOL,
            "the paper's T^2 on the soft term (False: an ablation)", added=True),
    _distil("teacher_dropout_masks", 0, int, at_least_0("0: the teacher in eval mode"),
            "> 0: the soft targets average the teacher's tempered probabilities over this many "
            "dropout masks per image (train mode, cached once); 0: the teacher in eval mode",
            added=True),
    _term("teaching", "consistent", str, one_of(TEACHING), "the teacher's view: consistent (the "
          "student's), fixed (logits cached on un-augmented images), independent (another "
          "jitter) or function_matching (the student's, mixed up)"),
    _term("mixup_p", 1.0, float, (is_positive, "a positive number"),
          "function_matching: mixup's weight a ~ Beta(p, p), a = max(a, 1 - a)"),
    _distil("teacher_dropout_seed", 0, int,
            (lambda v: is_int(v) and 0 <= v < 2**32, "an integer in [0, 2**32)"),
            "the key the teacher's dropout masks are drawn from", added=True),
    *TERM_FIELDS,
)}
TERM_NAMES = (*losses.LOGIT_TERMS, *losses.FEATURE_TERMS)  # Fields: terms.<name>.*.
# Fields added after the first runs were saved: a saved config without one held its default.
ADDED_FIELDS = tuple(name for name, field in FIELDS.items() if field.added)


def dataset_classes(config: ml_collections.ConfigDict) -> int | None:
  """How many classes the config's dataset has, where kd_jax knows it without reading it."""
  return {"mnist": data.NUM_CLASSES, "mnist_pairs": data.PAIR_BASE**2}.get(config.data.name)


def is_class_tuple(config: ml_collections.ConfigDict | None, value: Any) -> bool:
  """A tuple of distinct class labels of the config's dataset (None: of any dataset)."""
  num_classes = (dataset_classes(config) if config is not None else None) or 2**31
  return isinstance(value, tuple) and len(set(value)) == len(value) and all(
      is_int(c) and 0 <= c < num_classes for c in value)
