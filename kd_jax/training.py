"""Train and eval steps, the compiled epoch, and the loop that runs them with checkpoints.

The step is a pure function of (state, batch, key) -> (state, metrics): it runs under jax.jit on a
sharded mesh (XLA averages gradients across devices), under jax.pmap when given an `axis_name`
(gradients and metrics averaged with lax.pmean), under jax.vmap over a stack of states, and inside
lax.scan — which is how one epoch becomes one compiled call.
"""

from __future__ import annotations

import functools
import pathlib
import time
from typing import Any, Callable

import chex
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from kd_jax import checkpointing, data, losses, models, parallelism, preemption, reporting
from kd_jax.errors import CheckpointError, ConfigError, TrainingDivergedError


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array  # The run's base key; per-epoch and per-step keys are folded in from it.


def make_optimizer(config: ml_collections.ConfigDict,
                   steps_per_epoch: int) -> optax.GradientTransformation:
  if config.lr_schedule == "cosine":
    learning_rate = optax.cosine_decay_schedule(config.learning_rate,
                                                config.num_epochs * steps_per_epoch)
  else:
    learning_rate = config.learning_rate
  return optax.adam(learning_rate)


def create_train_state(rng: jax.Array, model: nn.Module,
                       tx: optax.GradientTransformation) -> TrainState:
  init_key, run_key = jax.random.split(rng)
  params = model.init(init_key, jnp.zeros((1, 784), jnp.float32), train=False)["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=run_key)


def soft_targets(teacher: nn.Module, teacher_params: Any, images: jax.Array) -> jax.Array:
  """Teacher logits in eval mode (no dropout), as constants for the student's gradient."""
  return jax.lax.stop_gradient(teacher.apply({"params": teacher_params}, images, train=False))


def train_step(state: TrainState, batch: dict[str, jax.Array], key: jax.Array,
               teacher_params: Any = None, *, model: nn.Module, tx: optax.GradientTransformation,
               teacher: nn.Module | None = None, temperature: float = 1.0, alpha: float = 0.0,
               soft_loss: str = "soft_cross_entropy", max_norm: float | None = None,
               axis_name: str | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
  """One Adam update on a batch {'image': f32[B, 784], 'label': i32[B]}.

  With a `teacher`, the loss is alpha * soft + (1 - alpha) * hard against the teacher's eval-mode
  logits; otherwise plain cross-entropy on the labels. `key` drives the student's dropout only.
  """
  chex.assert_rank(batch["image"], 2)
  teacher_logits = None if teacher is None else soft_targets(teacher, teacher_params,
                                                             batch["image"])

  def loss_fn(params):
    logits = model.apply({"params": params}, batch["image"], train=True, rngs={"dropout": key})
    if teacher_logits is None:
      loss = losses.hard_cross_entropy(logits, batch["label"])
      parts = {}
    else:
      loss, parts = losses.distillation_loss(logits, teacher_logits, batch["label"],
                                             temperature=temperature, alpha=alpha,
                                             soft_loss=soft_loss)
    return loss, (logits, parts)

  (loss, (logits, parts)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
             **parts}
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name)
    metrics = jax.lax.pmean(metrics, axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = models.apply_max_norm(optax.apply_updates(state.params, updates), max_norm)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params: Any, images: jax.Array, labels: jax.Array, mask: jax.Array, *,
              model: nn.Module) -> dict[str, jax.Array]:
  """Sums (not means) over the real examples of a padded batch, so totals add up exactly."""
  logits = model.apply({"params": params}, data.normalize(images), train=False)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  wrong = (jnp.argmax(logits, -1) != labels) & mask
  per_class = jnp.zeros(data.NUM_CLASSES, jnp.int32).at[labels].add(wrong.astype(jnp.int32))
  return {"loss_sum": jnp.sum(nll * mask), "errors": jnp.sum(wrong), "per_class_errors": per_class}


def train_epoch(state: TrainState, images: jax.Array, labels: jax.Array, teacher_params: Any,
                epoch: jax.Array, *, step_fn: Callable, batch_size: int, max_shift: int,
                batch_sharding: jax.sharding.Sharding) -> tuple[TrainState, dict[str, jax.Array]]:
  """One pass over the training set as a single lax.scan; returns epoch-mean metrics.

  Order, jitter and dropout keys are folded from (run key, epoch, step), so a resumed run sees
  exactly the data and masks an uninterrupted one would.
  """
  epoch_key = jax.random.fold_in(state.rng, epoch)
  order_key, jitter_key, dropout_key = jax.random.split(epoch_key, 3)
  batch_indices = data.epoch_batch_indices(order_key, images.shape[0], batch_size)

  def body(state, inputs):
    step_in_epoch, indices = inputs
    indices = jax.lax.with_sharding_constraint(indices, batch_sharding)
    batch_images = data.jitter(jax.random.fold_in(jitter_key, step_in_epoch), images[indices],
                               max_shift)
    batch = {"image": data.normalize(batch_images), "label": labels[indices]}
    return step_fn(state, batch, jax.random.fold_in(dropout_key, step_in_epoch), teacher_params)

  steps = jnp.arange(batch_indices.shape[0])
  state, metrics = jax.lax.scan(body, state, (steps, batch_indices))
  finite = jnp.isfinite(metrics["loss"])
  epoch_metrics = jax.tree.map(jnp.mean, metrics)
  # In-epoch index of the first non-finite loss, -1 if none: the host stops before saving.
  epoch_metrics["first_nonfinite_step"] = jnp.where(finite.all(), -1, jnp.argmin(finite))
  return state, epoch_metrics


def evaluate(params: Any, images: jax.Array, labels: jax.Array, mask: jax.Array, *,
             model: nn.Module, batch_size: int,
             batch_sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
  """Totals of `eval_step` over a split padded to a multiple of `batch_size`."""
  num_batches = images.shape[0] // batch_size

  def body(totals, inputs):
    batch = [jax.lax.with_sharding_constraint(x, batch_sharding) for x in inputs]
    counts = eval_step(params, *batch, model=model)
    return jax.tree.map(jnp.add, totals, counts), None

  split = lambda x: x.reshape((num_batches, batch_size) + x.shape[1:])
  zeros = {"loss_sum": jnp.zeros((), jnp.float32), "errors": jnp.zeros((), jnp.int32),
           "per_class_errors": jnp.zeros(data.NUM_CLASSES, jnp.int32)}
  totals, _ = jax.lax.scan(body, zeros, (split(images), split(labels), split(mask)))
  return totals


# ----------------------------------------------------------------------------- the run


class DeviceSplit(flax.struct.PyTreeNode):
  """An evaluation split on device, padded, with a mask of its real examples."""

  images: jax.Array
  labels: jax.Array
  mask: jax.Array
  num_examples: int = flax.struct.field(pytree_node=False)


def put_eval_split(images: np.ndarray, labels: np.ndarray, batch_size: int,
                   mesh: jax.sharding.Mesh) -> DeviceSplit:
  padded = data.pad_for_eval(images, labels, batch_size)
  return DeviceSplit(*(parallelism.put_replicated(x, mesh) for x in padded),
                     num_examples=len(images))


def make_evaluator(model: nn.Module, batch_size: int, mesh: jax.sharding.Mesh):
  """A jitted params, split -> dict of host numbers (errors, accuracy, loss, per-class errors)."""
  evaluate_fn = jax.jit(functools.partial(evaluate, model=model, batch_size=batch_size,
                                          batch_sharding=parallelism.batch_sharded(mesh)))

  def run(params: Any, split: DeviceSplit) -> dict[str, Any]:
    totals = jax.device_get(evaluate_fn(params, split.images, split.labels, split.mask))
    errors = int(totals["errors"])
    return {"errors": errors, "accuracy": 1.0 - errors / split.num_examples,
            "loss": float(totals["loss_sum"]) / split.num_examples,
            "per_class_errors": [int(e) for e in totals["per_class_errors"]]}

  return run


def restore_params(workdir: str | pathlib.Path, mesh: jax.sharding.Mesh,
                   step: int | None = None) -> tuple[Any, ml_collections.ConfigDict, int]:
  """Params of a run (latest or `step`), built from that run's own saved config."""
  run_config = checkpointing.load_config(workdir)
  model = models.model_from_config(run_config.model)
  example = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 784)), train=False)["params"])
  manager = checkpointing.open_manager(workdir, read_only=True)
  try:
    step = checkpointing.latest_step(manager, workdir) if step is None else step
    restored = checkpointing.restore(manager, step, {"params": example},
                                     parallelism.replicated(mesh), workdir)
  finally:
    manager.close()
  return restored["params"], run_config, step


def evaluate_checkpoint(workdir: str | pathlib.Path, step: int | None = None,
                        mnist_dir: str | None = None) -> dict[str, Any]:
  """Scores a checkpoint on the test set; writes and returns RUN/eval.json's content."""
  mesh = parallelism.make_mesh()
  params, run_config, step = restore_params(workdir, mesh, step)
  batch_size = run_config.eval_batch_size
  parallelism.check_batch_divides(batch_size, mesh, "eval_batch_size")
  splits = data.load_mnist_from_config(run_config.data, mnist_dir)
  test = put_eval_split(splits.test_images, splits.test_labels, batch_size, mesh)
  evaluator = make_evaluator(models.model_from_config(run_config.model), batch_size, mesh)
  result = evaluator(params, test)
  report = {"test_errors": result["errors"], "test_accuracy": result["accuracy"],
            "test_loss": result["loss"], "per_class_errors": result["per_class_errors"],
            "num_test_examples": test.num_examples, "step": step,
            "model": models.describe(run_config.model),
            "distilled_from": run_config.get("teacher_workdir") or None,
            "data_source": splits.source, "num_devices": mesh.size}
  reporting.write_json(pathlib.Path(workdir) / "eval.json", report)
  reporting.say(f"{workdir} (step {step}, {report['model']}): {report['test_errors']} test "
                f"errors, accuracy {100 * report['test_accuracy']:.2f}%, loss "
                f"{report['test_loss']:.4f}; per class {report['per_class_errors']}.")
  return report


@flax.struct.dataclass
class RunSetup:
  """Everything a run needs on device, built once before the first epoch."""

  train_images: jax.Array
  train_labels: jax.Array
  eval_splits: dict[str, DeviceSplit]
  source: str = flax.struct.field(pytree_node=False)


def put_data(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> RunSetup:
  splits = data.load_mnist_from_config(config.data)
  eval_splits = {"test": put_eval_split(splits.test_images, splits.test_labels,
                                        config.eval_batch_size, mesh)}
  if config.data.validation_size:
    eval_splits["validation"] = put_eval_split(splits.validation_images, splits.validation_labels,
                                               config.eval_batch_size, mesh)
  return RunSetup(train_images=parallelism.put_replicated(splits.train_images, mesh),
                  train_labels=parallelism.put_replicated(splits.train_labels, mesh),
                  eval_splits=eval_splits, source=splits.source)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                       overwrite: bool = False) -> dict[str, Any]:
  """Trains (with a teacher when config.teacher_workdir is set) and checkpoints into `workdir`.

  A workdir holding the same run resumes from its latest checkpoint; a finished one is reported,
  not retrained. SIGTERM/SIGINT end the run after the epoch in flight with a checkpoint and
  `preemption.Preempted`; a non-finite loss raises TrainingDivergedError before anything is saved.
  """
  workdir = pathlib.Path(workdir)
  mesh = parallelism.make_mesh()
  parallelism.check_batch_divides(config.batch_size, mesh, "batch_size")
  parallelism.check_batch_divides(config.eval_batch_size, mesh, "eval_batch_size")
  replicated = parallelism.replicated(mesh)
  checkpointing.prepare_workdir(workdir, config, overwrite)
  setup = put_data(config, mesh)

  model = models.model_from_config(config.model)
  steps_per_epoch = setup.train_images.shape[0] // config.batch_size
  if steps_per_epoch == 0:
    raise ConfigError(f"config.batch_size={config.batch_size} is larger than the "
                      f"{setup.train_images.shape[0]} training examples.")
  tx = make_optimizer(config, steps_per_epoch)
  teacher, teacher_params, step_kwargs = None, None, {}
  if config.get("teacher_workdir"):
    teacher_params, teacher_config, teacher_step = restore_params(config.teacher_workdir, mesh)
    teacher = models.model_from_config(teacher_config.model)
    step_kwargs = dict(teacher=teacher, temperature=config.temperature, alpha=config.alpha,
                       soft_loss=config.soft_loss)
    reporting.say(f"Teacher: {models.describe(teacher_config.model)} from "
                  f"{config.teacher_workdir} (step {teacher_step}).")

  state = jax.jit(functools.partial(create_train_state, model=model, tx=tx),
                  out_shardings=replicated)(jax.random.PRNGKey(config.seed))
  workdir.mkdir(parents=True, exist_ok=True)
  checkpointing.discard_partial_checkpoints(workdir)
  manager = checkpointing.open_manager(workdir, max_to_keep=config.checkpoint.max_to_keep)
  start_epoch = 0
  if manager.latest_step() is not None:
    state, start_epoch = _resume(manager, state, replicated, workdir)
  evaluator = make_evaluator(model, config.eval_batch_size, mesh)
  if start_epoch >= config.num_epochs:
    reporting.say(f"{workdir} already finished its {config.num_epochs} epochs "
                  f"(checkpoint step {int(state.step)}); nothing to train.")
    test = evaluator(state.params, setup.eval_splits["test"])
  else:
    checkpointing.save_config(workdir, config)
    writer = reporting.MetricsWriter(workdir, keep_epochs_up_to=start_epoch)
    reporting.say(f"Training {models.describe(config.model)} on {setup.source} "
                  f"({setup.train_images.shape[0]} examples, {mesh.size} device(s), "
                  f"{steps_per_epoch} steps/epoch){' by distillation' if teacher else ''}"
                  f"{f', from epoch {start_epoch}' if start_epoch else ''}.")
    step_fn = functools.partial(train_step, model=model, tx=tx, max_norm=config.model.max_norm,
                                **step_kwargs)
    epoch_fn = jax.jit(
        functools.partial(train_epoch, step_fn=step_fn, batch_size=config.batch_size,
                          max_shift=config.data.jitter,
                          batch_sharding=parallelism.batch_sharded(mesh)),
        out_shardings=replicated, donate_argnums=(0,))
    try:
      state, test = _run_epochs(config, workdir, setup, state, teacher_params, epoch_fn,
                                evaluator, manager, writer, start_epoch)
    finally:
      writer.close()
  manager.wait_until_finished()
  manager.close()

  summary = {"test_errors": test["errors"], "test_accuracy": test["accuracy"],
             "step": int(state.step),
             "checkpoint": str((workdir / checkpointing.CHECKPOINT_DIR / str(int(state.step)))
                               .absolute())}
  reporting.say(f"Done: {summary['test_errors']} test errors "
                f"({100 * summary['test_accuracy']:.2f}% accuracy) after {config.num_epochs} "
                f"epochs. Checkpoint: {summary['checkpoint']}")
  return summary


def _run_epochs(config, workdir, setup, state, teacher_params, epoch_fn, evaluator, manager,
                writer, start_epoch) -> tuple[TrainState, dict[str, Any]]:
  """The epoch loop: train, evaluate, log, checkpoint; stops cleanly on a signal.

  Returns the final state and its test-set evaluation.
  """
  compile_start = time.perf_counter()
  compiled_epoch = epoch_fn.lower(state, setup.train_images, setup.train_labels, teacher_params,
                                  jnp.int32(0)).compile()
  reporting.say(f"Compiled the epoch in {time.perf_counter() - compile_start:.1f}s.")
  train_time = 0.0
  with preemption.PreemptionGuard() as guard, \
      reporting.progress_bar(config.num_epochs, start_epoch, workdir.name) as bar:
    for epoch in range(start_epoch, config.num_epochs):
      if epoch == start_epoch and guard.requested():
        raise preemption.Preempted(f"{guard.signal_name or 'a signal'} before the first epoch; "
                                   "nothing new to save. Rerun the same command to resume.")
      epoch_start = time.perf_counter()
      step_before = int(state.step)
      state, train_metrics = compiled_epoch(state, setup.train_images, setup.train_labels,
                                            teacher_params, jnp.int32(epoch))
      train_metrics = jax.device_get(train_metrics)
      epoch_time = time.perf_counter() - epoch_start
      train_time += epoch_time
      first_bad = int(train_metrics.pop("first_nonfinite_step"))
      if first_bad >= 0:
        manager.wait_until_finished()
        last_good = manager.latest_step()
        kept = ("no checkpoint was written yet" if last_good is None
                else f"the last good checkpoint is step {last_good}")
        raise TrainingDivergedError(
            f"The training loss became non-finite at step {step_before + first_bad + 1} (epoch "
            f"{epoch + 1}); stopped without saving: {kept}. Lower the learning rate or check the "
            "config.")
      results = {name: evaluator(state.params, split)
                 for name, split in setup.eval_splits.items()}
      record = {"epoch": epoch + 1, "step": int(state.step), "epoch_time_s": epoch_time,
                **{f"train_{k}": float(v) for k, v in train_metrics.items()},
                **{f"{name}_{k}": v for name, r in results.items() for k, v in r.items()
                   if k != "per_class_errors"}}
      writer.write(record)
      bar.update(1)
      bar.set_postfix(loss=f"{record['train_loss']:.4f}", test_errors=record["test_errors"])
      if reporting.is_main_process():
        bar.write(f"epoch {epoch + 1:3d}  train_loss {record['train_loss']:.4f}  test_loss "
                  f"{record['test_loss']:.4f}  test_errors {record['test_errors']}  "
                  f"time {epoch_time:.1f}s")
      stopping = guard.requested()
      if (stopping or epoch + 1 == config.num_epochs
          or (epoch + 1) % config.checkpoint.every_epochs == 0):
        checkpointing.save(manager, int(state.step), state.params, _resume_item(state),
                           {"epoch": epoch + 1, "test_errors": record["test_errors"]})
      if stopping and epoch + 1 < config.num_epochs:
        manager.wait_until_finished()
        raise preemption.Preempted(
            f"{guard.signal_name or 'a signal on another process'}: saved checkpoint step "
            f"{int(state.step)} (epoch {epoch + 1} of {config.num_epochs}) in {workdir}. Rerun "
            "the same command to resume.")
  reporting.say(f"Trained {config.num_epochs - start_epoch} epochs in {train_time:.1f}s "
                f"({train_time / (config.num_epochs - start_epoch):.2f}s per epoch).")
  return state, results["test"]


def _resume_item(state: TrainState) -> dict[str, Any]:
  """What a checkpoint's `train` item holds beside the params: all that resuming needs."""
  return {"step": state.step, "opt_state": state.opt_state, "rng": state.rng}


def _resume(manager, state: TrainState, sharding, workdir) -> tuple[TrainState, int]:
  step = manager.latest_step()
  restored = checkpointing.restore(
      manager, step, {"params": state.params, "train": _resume_item(state), "meta": None},
      sharding, workdir)
  train = restored["train"]
  state = TrainState(step=train["step"], params=restored["params"],
                     opt_state=train["opt_state"], rng=train["rng"])
  if int(state.step) != step:
    raise CheckpointError(f"Checkpoint {step} in {workdir} holds step {int(state.step)}.")
  epoch = int(restored["meta"]["epoch"])
  reporting.say(f"Resuming {workdir} from checkpoint step {step} (epoch {epoch}).")
  return state, epoch
