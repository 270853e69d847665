"""Models: the paper's MLPs, a small CNN with BatchNorm, and any Flax module of the user's.

A model is any `flax.linen.Module` whose `__call__(images, *, train: bool)` maps normalised images
[B, H, W] (or [B, H, W, C]) to logits [B, num_classes]. It may draw the "dropout" RNG and keep
mutable collections such as BatchNorm's `batch_stats` (updated in training, used in eval mode).
`config.model.name` chooses it: a registry name (`MODELS`: "mlp", "cnn"), or "package.module:Class"
for a module of the user's, rebuilt from `config.model.fields` (its dataclass fields).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from kd_jax.data import IMAGE_SHAPE, NUM_CLASSES
from kd_jax.errors import ConfigError


DROPOUT_LEVELS = 256  # A dropout decision compares up to a byte of random bits with a threshold.


def keep_threshold(rate: float) -> int:
  """Bytes below this value keep their unit: keep probability threshold / 256, within 1/512 of
  1 - rate (exact for 0, 0.25, 0.5, ...). Outputs are scaled by 256 / threshold, the inverse of
  the probability actually used, so the expected activation is unchanged."""
  return max(1, round((1.0 - rate) * DROPOUT_LEVELS))


def unit_bits(rate: float) -> int:
  """Random bits a dropout decision takes: the fewest of 1, 2, 4 or 8 that draw the keep
  probability `keep_threshold(rate)` / 256 exactly (1 for the teacher's 0.5, 8 for its 0.2)."""
  return next(bits for bits in (1, 2, 4, 8)
              if keep_threshold(rate) % (DROPOUT_LEVELS >> bits) == 0)


def dropout(key: jax.Array, x: jax.Array, rate: float) -> jax.Array:
  """Inverted dropout on [B, F] with `unit_bits(rate)` random bits per unit, so one 32-bit draw
  serves 32 units at rate 0.5 and 4 at rate 0.2.

  flax's nn.Dropout draws 32 random bits per unit (a float uniform), and on CPU the threefry
  generator, not the matmuls, then dominates a dropout MLP's step (one bit instead of a byte at
  0.5: the paper teacher's epoch 3.36-3.41 s instead of 3.49 on a 2-core Xeon). The bits are drawn
  for the whole [B, F] array with the batch leading, so the mask does not depend on how the batch
  is sharded, and it is a pure function of the key (resumed runs redraw the same masks).
  """
  if rate == 0.0:
    return x
  batch, features = x.shape
  bits = unit_bits(rate)
  words = jax.random.bits(key, (batch, -(-features // (32 // bits))), jnp.uint32)
  shifts = jnp.arange(0, 32, bits, dtype=jnp.uint32)  # Low bits first: bytes as on x86.
  values = ((words[:, :, None] >> shifts) & ((1 << bits) - 1)).reshape(batch, -1)[:, :features]
  threshold = keep_threshold(rate)
  keep = values < threshold >> (8 - bits)
  return jnp.where(keep, x * (DROPOUT_LEVELS / threshold), 0.0).astype(x.dtype)


@jax.custom_vjp
def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """x [..., K] @ w [K, N] summed in float32 whatever the operands' dtype, returned in x's dtype,
  with a gradient whose two products are formed the same way: the bfloat16 `compute_dtype`.

  XLA:CPU runs a bfloat16 product on the CPU's bfloat16 units (measured with AMX) only when asked
  for a float32 result, with both operands row-major in memory; otherwise it converts them to
  float32 first and the product runs no faster than in float32 (on the 2-core Xeon with AMX, a
  large GEMM at 1,092 GFLOP/s against 290: results/benchmark/intel_xeon). jax's own gradient breaks
  both conditions (a float32 x bfloat16 product, and the input transposed for dW), hence this rule.
  Reverse mode only (no jvp). On a sharded batch the appended zero example (below) leaves the
  batch axis uneven: the gradient is the same, with some extra communication.
  """
  return jnp.matmul(x, w, preferred_element_type=jnp.float32).astype(x.dtype)


def _matmul_forward(x: jax.Array, w: jax.Array) -> tuple[jax.Array, tuple]:
  return matmul(x, w), (x, w)


def _matmul_backward(residuals: tuple, grad: jax.Array) -> tuple[jax.Array, jax.Array]:
  x, w = residuals
  grad_x = jax.lax.dot_general(grad, w, (((grad.ndim - 1,), (1,)), ((), ())),
                               preferred_element_type=jnp.float32).astype(x.dtype)
  inputs_t, grads = x.reshape(-1, x.shape[-1]).T, grad.reshape(-1, grad.shape[-1])
  if jax.default_backend() == "cpu":
    # One zero example appended to both: the same sums, but XLA can no longer fold the transpose
    # into the product (which would make it column-major, and float32) and writes it row-major.
    inputs_t, grads = jnp.pad(inputs_t, ((0, 0), (0, 1))), jnp.pad(grads, ((0, 1), (0, 0)))
  grad_w = jnp.matmul(inputs_t, grads, preferred_element_type=jnp.float32).astype(w.dtype)
  return grad_x, grad_w


matmul.defvjp(_matmul_forward, _matmul_backward)


def dense_dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any,
                      precision: Any = None, preferred_element_type: Any = None) -> jax.Array:
  """`nn.Dense`'s `dot_general` ([..., K] x [K, N], the only contraction Dense asks for) through
  `matmul`; any other contraction is refused rather than computed wrongly."""
  del precision, preferred_element_type
  (lhs_contracting, rhs_contracting), batch = dimension_numbers
  if (tuple(lhs_contracting) != (lhs.ndim - 1,) or tuple(rhs_contracting) != (0,)
      or any(map(len, batch)) or rhs.ndim != 2):
    raise ValueError(f"dense_dot_general takes [..., K] x [K, N] only, not {dimension_numbers}")
  return matmul(lhs, rhs)


class MLP(nn.Module):
  """Flattened images (784 for MNIST) -> hidden_sizes (ReLU, dropout) -> num_classes logits.

  The teacher is MLP((1200, 1200), input_dropout=0.2, hidden_dropout=0.5); students are the same
  module with smaller sizes and usually no dropout.
  """

  hidden_sizes: Sequence[int]
  num_classes: int = NUM_CLASSES
  input_shape: Sequence[int] = IMAGE_SHAPE  # Of one image; the input is it flattened.
  input_dropout: float = 0.0
  hidden_dropout: float = 0.0
  dtype: Any = jnp.float32  # Of the matmuls and activations; parameters stay float32.

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    return dense_head(self, x, train)


def dense_head(module: nn.Module, x: jax.Array, train: bool) -> jax.Array:
  """`module`'s flattened input -> hidden layers (ReLU, dropout; named hidden_i, which max-norm
  constrains) -> logits (named output), inside its compact `__call__`; reads its hidden_sizes,
  input_dropout, hidden_dropout, num_classes and dtype."""
  drop = lambda x, rate: dropout(module.make_rng("dropout"), x, rate) if train and rate else x
  # float32 keeps flax's own product (bitwise the runs of before); narrower dtypes sum in float32.
  product = None if jnp.dtype(module.dtype) == jnp.float32 else dense_dot_general
  dense = lambda size, name: nn.Dense(size, dtype=module.dtype, dot_general=product, name=name)
  x = drop(x.reshape((x.shape[0], -1)), module.input_dropout)
  for i, size in enumerate(module.hidden_sizes):
    x = drop(nn.relu(dense(size, f"hidden_{i}")(x)), module.hidden_dropout)
  return dense(module.num_classes, "output")(x).astype(jnp.float32)


class CNN(nn.Module):
  """A LeNet-5-like convnet with BatchNorm: per entry of `conv_features`, a 3x3 convolution,
  BatchNorm, ReLU and 2x2 max-pooling (its output sown as feature `block_i`); then `hidden_sizes`
  dense layers (ReLU, dropout) and the logits. Its running statistics (`batch_stats`) are updated
  in training and used in eval mode.
  """

  conv_features: Sequence[int] = (16, 32)
  hidden_sizes: Sequence[int] = (256,)
  num_classes: int = NUM_CLASSES
  input_dropout: float = 0.0
  hidden_dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = x[..., None] if x.ndim == 3 else x  # [B, H, W] -> one channel.
    for i, features in enumerate(self.conv_features):
      x = nn.Conv(features, (3, 3), use_bias=False, dtype=self.dtype, name=f"conv_{i}",
                  conv_general_dilated=gemm_conv if jax.default_backend() == "cpu" else None)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype,
                       name=f"norm_{i}")(x)
      x = max_pool_2x2(nn.relu(x))
      self.sow("intermediates", f"block_{i}", x)  # A feature by name (kd_jax.features).
    return dense_head(self, x, train)


def gemm_conv(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding: Any,
              lhs_dilation: Sequence[int] | None = None, rhs_dilation: Sequence[int] | None = None,
              dimension_numbers: Any = None, feature_group_count: int = 1,
              batch_group_count: int = 1, precision: Any = None,
              preferred_element_type: Any = None) -> jax.Array:
  """`jax.lax.conv_general_dilated` for a 2-D NHWC x HWIO convolution of stride 1 computed as one
  matrix product over the kernel's shifted copies of the input (im2col from slices); any other
  convolution goes to lax. XLA:CPU runs its convolutions several times slower inside a loop such
  as the scanned epoch (jax-ml/jax#12868); the GEMM path does not. A user's module gets it with
  `nn.Conv(..., conv_general_dilated=kd_jax.models.gemm_conv)`; the registry CNN uses it on CPU."""
  numbers = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  simple = (lhs.ndim == 4 and numbers == jax.lax.conv_dimension_numbers(
      lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC")) and set(window_strides) == {1}
            and set(lhs_dilation or (1,)) == {1} and set(rhs_dilation or (1,)) == {1}
            and feature_group_count == 1 and batch_group_count == 1)
  if not simple:
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
        feature_group_count, batch_group_count, precision, preferred_element_type)
  rows, cols = rhs.shape[:2]
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(lhs.shape[1:3], (rows, cols), (1, 1), padding)
  (top, bottom), (left, right) = padding
  padded = jax.lax.pad(lhs, jnp.zeros((), lhs.dtype),
                       ((0, 0, 0), (top, bottom, 0), (left, right, 0), (0, 0, 0)))
  height, width = padded.shape[1] - rows + 1, padded.shape[2] - cols + 1
  patches = jnp.concatenate([padded[:, row:row + height, col:col + width]
                             for row in range(rows) for col in range(cols)], axis=-1)
  return jnp.matmul(patches, rhs.reshape(-1, rhs.shape[-1]),  # (row, col, channel): HWIO's order.
                    precision=precision, preferred_element_type=preferred_element_type)


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """`nn.max_pool(x, (2, 2), strides=(2, 2))` (VALID: an odd last row or column is dropped) as a
  reshape and a max, which XLA:CPU runs faster than a reduce_window, forward and backward."""
  batch, height, width, channels = x.shape
  x = x[:, :height // 2 * 2, :width // 2 * 2]
  return x.reshape(batch, height // 2, 2, width // 2, 2, channels).max(axis=(2, 4))


COMPUTE_DTYPES = ("float32", "bfloat16")
MODELS = ("mlp", "cnn")  # The registry; any other name is "package.module:Class".


def compute_dtype(model_config: ml_collections.ConfigDict) -> Any:
  """The matmul dtype of a model config (float32 for configs saved before the option)."""
  return jnp.dtype(model_config.get("compute_dtype", "float32"))


def dummy_input(input_shape: Sequence[int]) -> jax.Array:
  """A batch of one normalised zero image of `input_shape`, for `model.init`."""
  return jnp.zeros((1, *input_shape), jnp.float32)


def init_variables(model: nn.Module, key: jax.Array, input_shape: Sequence[int]) -> dict:
  """All of the model's variables ({'params': ..., and e.g. 'batch_stats'}), from `key`."""
  return dict(model.init(key, dummy_input(input_shape), train=False))


def module_path(model: nn.Module) -> str:
  """'package.module:Class', the name under which a run records a user's module."""
  return f"{type(model).__module__}:{type(model).__qualname__}"


def module_fields(model: nn.Module) -> dict[str, Any]:
  """The module's dataclass fields that JSON can hold, to rebuild it by `module_path`."""
  fields = {}
  for field in dataclasses.fields(model):
    if field.name in ("parent", "name") or not field.init:
      continue
    value = getattr(model, field.name)
    try:
      fields[field.name] = json.loads(json.dumps(value))
    except (TypeError, ValueError):
      continue  # Not recordable (a dtype, a function): the module's default is assumed.
  return fields


def record_model(model_config: ml_collections.ConfigDict, model: nn.Module) -> None:
  """Records a user's module in the config (`name`, `fields`) so the run can rebuild it; the
  registry's own models are described by the config already."""
  if type(model) in (MLP, CNN) and model == model_from_config(model_config):
    return  # The config describes it already.
  model_config.name = module_path(model)
  model_config.fields = module_fields(model)


def model_from_config(model_config: ml_collections.ConfigDict) -> nn.Module:
  """The model a config describes: a registry model, or a user's module imported by path."""
  name = model_config.get("name", "mlp")
  common = dict(num_classes=model_config.get("num_classes", NUM_CLASSES),
                input_dropout=float(model_config.input_dropout),
                hidden_dropout=float(model_config.hidden_dropout),
                dtype=compute_dtype(model_config))
  if name == "mlp":
    return MLP(hidden_sizes=tuple(model_config.hidden_sizes),
               input_shape=tuple(model_config.get("input_shape", IMAGE_SHAPE)), **common)
  if name == "cnn":
    return CNN(conv_features=tuple(model_config.get("conv_features", (16, 32))),
               hidden_sizes=tuple(model_config.hidden_sizes), **common)
  module_name, _, class_name = name.partition(":")
  if module_name == "__main__" or not class_name:
    raise ConfigError(f"the run's model is {name!r}, defined in a notebook or script, not "
                      "importable by path: pass it again as model= (kd_jax.load(workdir, "
                      "model=...)).")
  try:
    cls = importlib.import_module(module_name)
    for part in class_name.split("."):
      cls = getattr(cls, part)
  except (ImportError, AttributeError) as e:
    raise ConfigError(f"config.model.name={name!r} cannot be imported ({e}); pass the module as "
                      "model=, or make it importable.") from e
  fields = model_config.get("fields") or {}
  return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in dict(fields).items()})


def describe(model_config: ml_collections.ConfigDict) -> str:
  """A one-line description such as 'MLP 784-1200-1200-10, dropout 0.2/0.5, max-norm 3.5'."""
  name = model_config.get("name", "mlp")
  if name not in MODELS:
    return name
  shape = tuple(model_config.get("input_shape", IMAGE_SHAPE))
  classes = model_config.get("num_classes", NUM_CLASSES)
  if name == "cnn":
    convs = "-".join(str(f) for f in model_config.get("conv_features", (16, 32)))
    text = (f"CNN {'x'.join(map(str, shape))} conv {convs} (BatchNorm) dense "
            f"{'-'.join(str(s) for s in (*model_config.hidden_sizes, classes))}")
  else:
    text = f"MLP {'-'.join(str(s) for s in (math.prod(shape), *model_config.hidden_sizes, classes))}"
  if model_config.input_dropout or model_config.hidden_dropout:
    text += f", dropout {model_config.input_dropout:g}/{model_config.hidden_dropout:g}"
  if model_config.max_norm:
    text += f", max-norm {model_config.max_norm:g}"
  if compute_dtype(model_config) != jnp.float32:
    text += f", {compute_dtype(model_config).name} matmuls"
  return text


def apply_max_norm(params: Any, max_norm: float | None) -> Any:
  """Rescales each hidden unit's incoming weight vector to norm <= max_norm.

  Flax kernels are [fan_in, fan_out], so unit j's incoming vector is kernel[:, j]. Only hidden
  layers (named hidden_*) are constrained, as in Srivastava et al. (2014).
  """
  if not max_norm:
    return params

  def constrain(path, leaf):
    names = [getattr(p, "key", None) for p in path]
    if names[-1] != "kernel" or not any(str(n).startswith("hidden_") for n in names):
      return leaf
    norms = jnp.linalg.norm(leaf, axis=0, keepdims=True)
    return leaf * jnp.minimum(1.0, max_norm / jnp.maximum(norms, 1e-12))

  return jax.tree_util.tree_map_with_path(constrain, params)


def check_logits(model: nn.Module, input_shape: tuple[int, ...], num_classes: int) -> None:
  """A ConfigError naming the module when its logits on a batch of images are not
  [B, num_classes] (a wrong width would train as a 'divergence', another rank fail in the loss):
  checked once, abstractly (`jax.eval_shape`), before the first step."""
  images = jax.ShapeDtypeStruct((2, *input_shape), jnp.float32)
  variables = jax.eval_shape(lambda key: init_variables(model, key, input_shape),
                             jax.random.PRNGKey(0))
  logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
  if getattr(logits, "shape", None) != (2, num_classes):
    got = (f"logits of shape {list(logits.shape)}" if hasattr(logits, "shape")
           else type(logits).__name__)
    raise ConfigError(f"The model {type(model).__module__}.{type(model).__name__} returns {got} "
                      f"for a batch of 2 images {list(input_shape)}: expected [2, {num_classes}] "
                      f"(config.model.num_classes={num_classes}, one logit per class).")
