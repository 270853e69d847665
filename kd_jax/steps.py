"""The pure functions of training: the step, the compiled epoch, a population's steps and epochs.

The step is a pure function (state, batch, key, hparams, teacher_params) -> (state, metrics). It
is told its loss (`losses.hard_label_loss` or a distillation loss) and where its targets come from
(`targets.no_targets`, teachers in the step, cached teacher logits), so new experiments change
losses, targets and data, never the step. It runs under jax.jit on a sharded mesh (XLA averages
gradients across devices), under jax.pmap when given an `axis_name` (gradients and metrics
averaged with lax.pmean), under jax.vmap and inside lax.scan — which is how one epoch becomes one
compiled call, and how a population of members trains in that same call. Members that share
their data (`data.shared_order`) share each step's batch, mixup and teacher targets (`shared_step`):
the teacher runs once per batch for the whole population. (Evaluation: `kd_jax.evaluation`.)

A population is a TrainState whose every leaf has a leading member axis [P, ...], with per-member
hyperparameters `hparams` ({'learning_rate', and for distillation 'temperature', 'alpha'}, each
f32[P]): swept values are arguments of the compiled epoch, not constants, so a sweep compiles once.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from kd_jax import data, features, losses, models, parallelism, targets

Optimizer = Callable[[float | jax.Array], optax.GradientTransformation]
# Key streams folded off a step's keys for what came later, so the keys of the data order, jitter
# and dropout (and every run saved before) stay as they were.
MIXUP_STREAM, TEACHER_VIEW_STREAM = 2**31 - 1, 2**31 - 2


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array  # The member's base key; per-epoch and per-step keys are folded in from it.
  # The model's other variable collections (BatchNorm's batch_stats); {} for a stateless model.
  model_state: Any = flax.struct.field(default_factory=dict)
  # Parameters trained beside the model but no part of it (a feature term's adapters, {name:
  # {'kernel', 'bias'}}): optimised with it, checkpointed for resuming, never in its variables.
  adapters: Any = flax.struct.field(default_factory=dict)

  @property
  def trainable(self) -> Any:
    """What the optimizer updates: the params, with the adapters beside them if there are any."""
    return {"model": self.params, "adapters": self.adapters} if self.adapters else self.params

  @property
  def variables(self) -> dict[str, Any]:
    """What `model.apply` takes: {'params': ..., **model_state}."""
    return {"params": self.params, **self.model_state}


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int) -> Optimizer:
  """learning_rate -> the config's optimizer; the rate may be a traced (swept) value.

  "adam" (default): Adam with `lr_schedule` (constant or cosine), after a linear warm-up of
  `lr_warmup_epochs` from 0. "sgd_momentum": the 2012
  dropout paper's recipe (Srivastava et al. 2014, appendix): momentum rising linearly from
  `sgd.momentum_start` to `sgd.momentum_end` over `sgd.momentum_epochs` epochs, the rate decayed by
  `sgd.decay_per_epoch` each epoch and scaled by (1 - momentum). The optimizer state does not
  depend on the rate, so members with different rates share one state structure and one compiled
  step.
  """

  if config.get("optimizer", "adam") == "sgd_momentum":
    sgd = config.sgd

    def momentum(count):
      progress = jnp.minimum(count / (steps_per_epoch * sgd.momentum_epochs), 1.0)
      return sgd.momentum_start + (sgd.momentum_end - sgd.momentum_start) * progress

    def optimizer(learning_rate):
      def rate(count):
        epoch = count // steps_per_epoch
        return learning_rate * sgd.decay_per_epoch**epoch * (1.0 - momentum(count))
      return optax.inject_hyperparams(optax.sgd)(learning_rate=rate, momentum=momentum)

    return optimizer

  warmup_steps = config.get("lr_warmup_epochs", 0) * steps_per_epoch
  total_steps = config.num_epochs * steps_per_epoch

  def optimizer(learning_rate):
    if config.lr_schedule == "cosine" and warmup_steps:  # optax's warmup_cosine_decay_schedule,
      # whose `peak_value == 0` test a swept (traced) rate cannot answer.
      learning_rate = optax.join_schedules(
          [optax.linear_schedule(0.0, learning_rate, warmup_steps),
           optax.cosine_decay_schedule(learning_rate, total_steps - warmup_steps)], [warmup_steps])
    elif config.lr_schedule == "cosine":
      learning_rate = optax.cosine_decay_schedule(learning_rate, total_steps)
    elif warmup_steps:
      learning_rate = optax.linear_schedule(0.0, learning_rate, warmup_steps)
    return optax.adam(learning_rate)

  return optimizer


def run_rng(seed: int) -> jax.Array:
  """The base key (`TrainState.rng`) of the member seeded `seed`: its data order, views and
  dropout come from it."""
  return jax.random.split(jax.random.PRNGKey(seed))[1]


def create_train_state(rng: jax.Array, model: nn.Module, tx: optax.GradientTransformation,
                       input_shape: tuple[int, ...] = data.IMAGE_SHAPE,
                       adapter_shapes: dict[str, tuple[int, int]] | None = None) -> TrainState:
  """A member's fresh state from its key; with `adapter_shapes` ({name: (in, out)}), linear
  adapters initialised as flax's Dense would be, from a key of their own."""
  init_key, run_key = jax.random.split(rng)
  model_state = models.init_variables(model, init_key, input_shape)
  params = model_state.pop("params")
  adapters = {}
  for index, (name, shape) in enumerate(sorted((adapter_shapes or {}).items())):
    key = jax.random.fold_in(jax.random.fold_in(init_key, 1), index)
    adapters[name] = {"kernel": nn.initializers.lecun_normal()(key, shape),
                      "bias": jnp.zeros(shape[1:], jnp.float32)}
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=None, rng=run_key,
                     model_state=model_state, adapters=adapters)
  return state.replace(opt_state=tx.init(state.trainable))


def stack_members(trees: list[Any]) -> Any:
  """Member pytrees -> one pytree with a leading member axis."""
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def take_member(tree: Any, index: int) -> Any:
  return jax.tree.map(lambda leaf: leaf[index], tree)


def train_step(state: TrainState, batch: dict[str, jax.Array], key: jax.Array,
               hparams: dict[str, jax.Array], teacher_variables: Any = None, *, model: nn.Module,
               optimizer: Optimizer, loss_fn: losses.LossFn = losses.hard_label_loss,
               targets_fn: targets.TargetsFn = targets.no_targets,
               max_norm: float | None = None, axis_name: str | None = None,
               feature_paths: tuple[str, ...] = (),
               mixup_p: float = 0.0) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update on a batch {'image': f32[B, H, W], 'label': i32[B], ...}.

  `targets_fn(teacher_variables, batch)` gives what `loss_fn(logits, batch, targets, hparams)`
  compares the student with (hparams with the state's 'step', for a loss term's warm-up), and
  with `feature_paths` the student's features there (`kd_jax.features`) as its `features`. `key`
  drives the student's dropout (and, with `mixup_p` > 0, the batch's mixup, `data.mixup`, which
  teacher and student then both see: function matching). A model with mutable collections
  (BatchNorm) has them updated from this batch (averaged across `axis_name`).
  """
  if mixup_p:
    batch = {**batch, **data.mixup(jax.random.fold_in(key, MIXUP_STREAM), batch["image"],
                                   batch["label"], mixup_p)}
  batch_targets = targets_fn(teacher_variables, batch)
  mutable = list(state.model_state)

  def objective(trainable):
    params = trainable["model"] if state.adapters else trainable
    variables = {"params": params, **state.model_state}
    extra = {"adapters": trainable["adapters"]} if state.adapters else {}
    if feature_paths:
      logits, extra["features"], model_state = features.apply(
          model, variables, batch["image"], feature_paths, train=True, rngs={"dropout": key},
          mutable=mutable)
    elif mutable:
      logits, model_state = model.apply(variables, batch["image"], train=True,
                                        rngs={"dropout": key}, mutable=mutable)
    else:
      logits, model_state = model.apply(variables, batch["image"], train=True,
                                        rngs={"dropout": key}), {}
    loss, parts = loss_fn(logits, batch, batch_targets, {**hparams, "step": state.step}, **extra)
    return loss, (logits, parts, dict(model_state))

  (loss, (logits, parts, model_state)), grads = jax.value_and_grad(
      objective, has_aux=True)(state.trainable)
  metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
             **parts}
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name)
    metrics = jax.lax.pmean(metrics, axis_name)
    model_state = jax.lax.pmean(model_state, axis_name)
  updates, opt_state = optimizer(hparams["learning_rate"]).update(grads, state.opt_state,
                                                                  state.trainable)
  trainable = optax.apply_updates(state.trainable, updates)
  params, adapters = ((trainable["model"], trainable["adapters"]) if state.adapters
                      else (trainable, state.adapters))
  return state.replace(step=state.step + 1, params=models.apply_max_norm(params, max_norm),
                       opt_state=opt_state, model_state=model_state, adapters=adapters), metrics


Sampler = Callable[[jax.Array, dict[str, jax.Array], dict[str, jax.Array], int], jax.Array]


def shuffled_batches(key: jax.Array, train_data: dict[str, jax.Array],
                     hparams: dict[str, jax.Array], batch_size: int) -> jax.Array:
  """The default `Sampler`: a fresh permutation of the training set in batches [steps, batch]."""
  del hparams
  return data.epoch_batch_indices(key, train_data["image"].shape[0], batch_size)


def epoch_keys(rng: jax.Array, epoch: jax.Array) -> jax.Array:
  """A member's (order, jitter, dropout) keys of one epoch; step keys fold in the step."""
  return jax.random.split(jax.random.fold_in(rng, epoch), 3)


def epoch_order(state: TrainState, train_data: dict[str, jax.Array],
                hparams: dict[str, jax.Array], epoch: jax.Array, *, batch_size: int,
                sampler: Sampler = shuffled_batches) -> jax.Array:
  """A member's batches of epoch `epoch`: example indices [steps, batch] from its order key."""
  return sampler(epoch_keys(state.rng, epoch)[0], train_data, hparams, batch_size)


def indexed_step(state: TrainState, train_data: dict[str, jax.Array],
                 hparams: dict[str, jax.Array], teacher_variables: Any, epoch: jax.Array,
                 step_in_epoch: jax.Array, indices: jax.Array, *, step_fn: Callable,
                 max_shift: int, batch_sharding: jax.sharding.Sharding,
                 independent_views: bool = False) -> tuple[TrainState, dict[str, jax.Array]]:
  """A member's step `step_in_epoch` of epoch `epoch` on the examples `indices`: the batch gathered
  from `train_data`, jittered and normalised (`view_batch`), then `step_fn`; jitter and dropout
  keys are folded from (member key, epoch, step), so a resumed run sees exactly the data and masks
  an uninterrupted one would."""
  _, jitter_key, dropout_key = epoch_keys(state.rng, epoch)
  batch = view_batch(train_data, indices, jitter_key, step_in_epoch, max_shift=max_shift,
                     batch_sharding=batch_sharding, independent_views=independent_views)
  return step_fn(state, batch, jax.random.fold_in(dropout_key, step_in_epoch), hparams,
                 teacher_variables)


def view_batch(train_data: dict[str, jax.Array], indices: jax.Array, jitter_key: jax.Array,
               step_in_epoch: jax.Array, *, max_shift: int, batch_sharding: jax.sharding.Sharding,
               independent_views: bool = False) -> dict[str, jax.Array]:
  """The examples `indices` of `train_data`, viewed (`view_images`)."""
  indices = jax.lax.with_sharding_constraint(indices, batch_sharding)
  return view_images({name: array[indices] for name, array in train_data.items()}, jitter_key,
                     step_in_epoch, max_shift=max_shift, independent_views=independent_views)


def view_images(batch: dict[str, jax.Array], jitter_key: jax.Array, step_in_epoch: jax.Array, *,
                max_shift: int, independent_views: bool = False) -> dict[str, jax.Array]:
  """A batch with its uint8 images jittered by up to `max_shift` pixels (key: `jitter_key` folded
  with the step) and normalised; with `independent_views` the teacher's own jitter of the same
  images as 'teacher_image' (from a stream of its own)."""
  view = lambda key: data.normalize(data.jitter(jax.random.fold_in(key, step_in_epoch),
                                                batch["image"], max_shift))
  batch = dict(batch)
  if independent_views:
    batch["teacher_image"] = view(jax.random.fold_in(jitter_key, TEACHER_VIEW_STREAM))
  batch["image"] = view(jitter_key)
  return batch


def epoch_metrics(metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Epoch means of per-step metrics [steps, ...] (a member's, or [steps, P] a population's), and
  the in-epoch index of the first non-finite loss (-1 if none: the host stops before saving)."""
  finite = jnp.isfinite(metrics["loss"])
  means = jax.tree.map(lambda values: jnp.mean(values, axis=0), metrics)
  means["first_nonfinite_step"] = jnp.where(finite.all(axis=0), -1, jnp.argmin(finite, axis=0))
  return means


def train_epoch(state: TrainState, train_data: dict[str, jax.Array], hparams: dict[str, jax.Array],
                teacher_variables: Any, epoch: jax.Array, *, step_fn: Callable, batch_size: int,
                max_shift: int, batch_sharding: jax.sharding.Sharding,
                sampler: Sampler = shuffled_batches,
                independent_views: bool = False) -> tuple[TrainState, dict[str, jax.Array]]:
  """One member's epoch as a single lax.scan of `indexed_step`; returns epoch-mean metrics.

  `train_data` maps names to arrays indexed by example ('image' uint8 [N, H, W], 'label', and
  optionally cached 'teacher_logits' [N, M, C]); each batch gathers all of them, at the indices
  `sampler(key, train_data, hparams, batch_size)` gives (by default one shuffled pass).
  """
  batch_indices = epoch_order(state, train_data, hparams, epoch, batch_size=batch_size,
                              sampler=sampler)

  def body(state, inputs):
    step_in_epoch, indices = inputs
    return indexed_step(state, train_data, hparams, teacher_variables, epoch, step_in_epoch,
                        indices, step_fn=step_fn, max_shift=max_shift,
                        batch_sharding=batch_sharding, independent_views=independent_views)

  steps = jnp.arange(batch_indices.shape[0])
  state, metrics = jax.lax.scan(body, state, (steps, batch_indices))
  return state, epoch_metrics(metrics)


def population_epoch(states: TrainState, train_data: dict[str, jax.Array],
                     hparams: dict[str, jax.Array], teacher_variables: Any, epoch: jax.Array, *,
                     member_batch: int, shared: dict[str, Any] | None = None,
                     **epoch_kwargs) -> tuple[TrainState, dict[str, jax.Array]]:
  """`train_epoch` for every member of a population (states and hparams stacked on axis 0).

  Each member is exactly a single run with its own seed and settings; `member_batch` of them are
  vmapped together (see `parallelism.map_members`). With `shared` (`shared_step`'s views_rng,
  targets_fn and mixup_p) the members share their batches: `shared_epoch`. Metrics come back per
  member, [P].
  """
  if shared is not None:
    return shared_epoch(states, train_data, hparams, teacher_variables, epoch,
                        member_batch=member_batch, **shared, **epoch_kwargs)

  def one_member(member):
    state, member_hparams = member
    return train_epoch(state, train_data, member_hparams, teacher_variables, epoch,
                       **epoch_kwargs)

  return parallelism.map_members(one_member, (states, hparams), member_batch)


def shared_targets(batch: dict[str, jax.Array], step_in_epoch: jax.Array, teacher_variables: Any,
                   epoch: jax.Array, *, views_rng: jax.Array, targets_fn: targets.TargetsFn,
                   mixup_p: float = 0.0) -> tuple[dict[str, jax.Array], Any]:
  """A batch the members share, mixed up with `views_rng`'s key for the step when `mixup_p`, and
  the teacher's targets on it: (batch, targets), computed once for every member."""
  if mixup_p:
    step_key = jax.random.fold_in(epoch_keys(views_rng, epoch)[2], step_in_epoch)
    batch = {**batch, **data.mixup(jax.random.fold_in(step_key, MIXUP_STREAM), batch["image"],
                                   batch["label"], mixup_p)}
  return batch, targets_fn(teacher_variables, batch)


def shared_step(states: TrainState, batch: dict[str, jax.Array], hparams: dict[str, jax.Array],
                teacher_variables: Any, epoch: jax.Array, step_in_epoch: jax.Array, *,
                views_rng: jax.Array, step_fn: Callable, targets_fn: targets.TargetsFn,
                member_batch: int, mixup_p: float = 0.0, unroll: bool = False,
                return_targets: bool = False) -> tuple[TrainState, dict[str, jax.Array]]:
  """Every member's step on one batch they all see (`data.shared_order`), its mixup and the
  teacher's targets computed once for all of them: a population costs one teacher forward and P
  student steps. The mixup key is `views_rng`'s (the keys of the member seeded `config.seed`, whose
  steps are then exactly its single run's); each member keeps its own dropout. `step_fn` takes the
  targets where it would take teacher variables (`targets.given_targets`). Metrics [P] (and with
  `return_targets` the batch's targets, for `shared_epoch` to store)."""
  batch, batch_targets = shared_targets(batch, step_in_epoch, teacher_variables, epoch,
                                        views_rng=views_rng, targets_fn=targets_fn,
                                        mixup_p=mixup_p)

  def one_member(member):
    state, member_hparams = member
    dropout_key = epoch_keys(state.rng, epoch)[2]
    return step_fn(state, batch, jax.random.fold_in(dropout_key, step_in_epoch), member_hparams,
                   batch_targets)

  states, metrics = parallelism.map_members(one_member, (states, hparams), member_batch,
                                            unroll=unroll)
  return (states, metrics, batch_targets) if return_targets else (states, metrics)


def shared_order(train_data: dict[str, jax.Array], hparams: dict[str, jax.Array],
                 epoch: jax.Array, *, views_rng: jax.Array, batch_size: int,
                 sampler: Sampler = shuffled_batches) -> jax.Array:
  """The batches [steps, batch] of epoch `epoch` that every member of a shared-order population
  reads: those of the member whose base key is `views_rng`."""
  return sampler(epoch_keys(views_rng, epoch)[0], train_data, hparams, batch_size)


def shared_indexed_step(states: TrainState, train_data: dict[str, jax.Array],
                        hparams: dict[str, jax.Array], teacher_variables: Any, epoch: jax.Array,
                        step_in_epoch: jax.Array, indices: jax.Array, *, views_rng: jax.Array,
                        max_shift: int, batch_sharding: jax.sharding.Sharding,
                        independent_views: bool = False, **step_kwargs
                        ) -> tuple[TrainState, dict[str, jax.Array]]:
  """`indexed_step` for a shared-order population: the batch `indices` viewed once, with
  `views_rng`'s jitter, then `shared_step`."""
  jitter_key = epoch_keys(views_rng, epoch)[1]
  batch = view_batch(train_data, indices, jitter_key, step_in_epoch, max_shift=max_shift,
                     batch_sharding=batch_sharding, independent_views=independent_views)
  return shared_step(states, batch, hparams, teacher_variables, epoch, step_in_epoch,
                     views_rng=views_rng, **step_kwargs)


def shared_epoch(states: TrainState, train_data: dict[str, jax.Array],
                 hparams: dict[str, jax.Array], teacher_variables: Any, epoch: jax.Array, *,
                 views_rng: jax.Array, batch_size: int, sampler: Sampler = shuffled_batches,
                 views: str = "", **step_kwargs) -> tuple[Any, ...]:
  """`population_epoch` for a shared-order population, as one lax.scan over its shared batches
  (`shared_indexed_step`); metrics per member, [P].

  `views` (`teacher_views_dir`): "store" also returns the epoch's targets [steps, B, ...] as the
  teacher gave them; "read" takes them in place of `teacher_variables` and runs no teacher.
  """
  batch_indices = shared_order(train_data, hparams, epoch, views_rng=views_rng,
                               batch_size=batch_size, sampler=sampler)
  stored = teacher_variables if views == "read" else None

  def body(states, inputs):
    step_in_epoch, indices, step_targets = inputs
    kwargs = step_kwargs
    if views == "read":
      kwargs = {**step_kwargs, "targets_fn": lambda variables, batch: step_targets}
    out = shared_indexed_step(states, train_data, hparams, teacher_variables, epoch,
                              step_in_epoch, indices, views_rng=views_rng,
                              return_targets=views == "store", **kwargs)
    return out[0], out[1:]

  steps = jnp.arange(batch_indices.shape[0])
  states, (metrics, *epoch_targets) = jax.lax.scan(body, states, (steps, batch_indices, stored))
  return (states, epoch_metrics(metrics), *epoch_targets)


def population_order(states: TrainState, train_data: dict[str, jax.Array],
                     hparams: dict[str, jax.Array], epoch: jax.Array, *, member_batch: int,
                     batch_size: int, sampler: Sampler, shared: dict[str, Any] | None = None
                     ) -> jax.Array:
  """Every member's batches of epoch `epoch` (the stepped epoch's first call): [P, steps, batch],
  or with `shared` the batches [steps, batch] they share (`shared_order`)."""
  if shared is not None:
    return shared_order(train_data, hparams, epoch, views_rng=shared["views_rng"],
                        batch_size=batch_size, sampler=sampler)
  return parallelism.map_members(
      lambda member: epoch_order(member[0], train_data, member[1], epoch, batch_size=batch_size,
                                 sampler=sampler), (states, hparams), member_batch)


def population_indexed_step(states: TrainState, sums: dict[str, jax.Array],
                            train_data: dict[str, jax.Array], hparams: dict[str, jax.Array],
                            teacher_variables: Any, epoch: jax.Array, step_in_epoch: jax.Array,
                            batch_indices: jax.Array, *, member_batch: int,
                            shared: dict[str, Any] | None = None, **step_kwargs
                            ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One `indexed_step` of every member on its batch `batch_indices[member, step_in_epoch]` (the
  stepped epoch's compiled call, the members unrolled), its metrics added to the epoch's sums;
  with `shared`, `shared_indexed_step` on the batch `batch_indices[step_in_epoch]` they share."""
  if shared is not None:
    states, metrics = shared_indexed_step(
        states, train_data, hparams, teacher_variables, epoch, step_in_epoch,
        batch_indices[step_in_epoch], member_batch=member_batch, unroll=True, **shared,
        **step_kwargs)
    return states, accumulate_metrics(sums, metrics, step_in_epoch)

  def one_member(member):
    state, member_hparams, member_indices = member
    return indexed_step(state, train_data, member_hparams, teacher_variables, epoch,
                        step_in_epoch, member_indices[step_in_epoch], **step_kwargs)

  states, metrics = parallelism.map_members(one_member, (states, hparams, batch_indices),
                                            member_batch, unroll=True)
  return states, accumulate_metrics(sums, metrics, step_in_epoch)


def accumulate_metrics(sums: dict[str, jax.Array] | None, metrics: dict[str, jax.Array],
                       step_in_epoch: jax.Array) -> dict[str, jax.Array]:
  """An epoch's running sums of per-member step metrics (f32[P], added in step order, so a run
  resumed mid-epoch from saved sums adds up exactly as an uninterrupted one), and
  'first_nonfinite_step' (i32[P], -1 while every loss is finite)."""
  if sums is None:
    sums = {**jax.tree.map(jnp.zeros_like, metrics),
            "first_nonfinite_step": jnp.full(metrics["loss"].shape, -1, jnp.int32)}
  bad = sums["first_nonfinite_step"]
  first_bad = jnp.where((bad < 0) & ~jnp.isfinite(metrics["loss"]), step_in_epoch, bad)
  return {**{name: sums[name] + value for name, value in metrics.items()},
          "first_nonfinite_step": first_bad.astype(jnp.int32)}


def zero_sums(sum_shapes: dict[str, Any]) -> dict[str, jax.Array]:
  """The sums `accumulate_metrics` starts an epoch from, for sums shaped `sum_shapes`."""
  return {name: jnp.full(shape.shape, -1 if name == "first_nonfinite_step" else 0, shape.dtype)
          for name, shape in sum_shapes.items()}


def mean_metrics(sums: dict[str, jax.Array], num_steps: int,
                 start: int = 0) -> dict[str, jax.Array]:
  """Epoch-mean metrics from an epoch's sums, and the first non-finite step counted from `start`
  (the step a resumed epoch began at), -1 if none."""
  first_bad = sums["first_nonfinite_step"]
  means = {name: value / num_steps for name, value in sums.items()
           if name != "first_nonfinite_step"}
  means["first_nonfinite_step"] = jnp.where(first_bad >= 0, first_bad - start, first_bad)
  return means
