"""A run's epochs: one compiled call over data on the devices, or a compiled step per streamed batch.

Both drivers run the same `steps.train_step` (told the run's model, optimizer, loss and targets by
`make_step_fn`) and answer to the one `Epochs` protocol the run loop uses: the memory pipeline's
epoch is a single jitted scan (`steps.population_epoch`), compiled ahead of the first epoch; the
grain pipeline's steps through batches streamed from the records, checkpointing within epochs,
so a run killed mid-epoch resumes exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import time
from typing import Any, Callable, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kd_jax import (faults, inputs, models, objective, parallelism, population, preemption,
                    reporting, steps, targets)
from kd_jax.errors import CheckpointError, ConfigError

SIGNAL_CHECK_STEPS = 50  # Streamed runs: steps between checks for a signal (a collective).
# Streamed runs: at most this many compiled calls dispatched and not finished. Unbounded, the
# host queued every batch it had read (40 batches of 49 MB, measured): a dataset streamed because
# it does not fit in memory runs out of it. Two keep the device busy.
CALLS_IN_FLIGHT = 2


class Checkpointer(Protocol):
  """What an epoch driver needs of the run loop: where the run is, and a way to save mid-epoch."""

  workdir: pathlib.Path

  def save(self, state: steps.TrainState, meta: dict[str, Any]) -> None: ...


class Guard(Protocol):
  """preemption.PreemptionGuard as the drivers see it."""

  signal_name: str | None

  def requested(self) -> bool: ...


class Epochs(Protocol):
  """An epoch driver: compiled before the first epoch, then one `train` call per epoch."""

  def compiled(self, state: steps.TrainState) -> Epochs: ...

  def train(self, state: steps.TrainState, epoch: int, loop: Checkpointer,
            guard: Guard) -> tuple[steps.TrainState, dict[str, Any]]: ...

  def position(self) -> dict[str, Any]: ...

  def close(self) -> None: ...


def build(config: ml_collections.ConfigDict, workdir: pathlib.Path, model: nn.Module,
          run_objective: objective.Objective, run_inputs: inputs.Inputs,
          members: population.Population, mesh: jax.sharding.Mesh,
          resumed: dict[str, Any]) -> Epochs:
  """The driver of the run's pipeline, positioned where the checkpoint it resumes from (its meta,
  `resumed`; {} when fresh) left the data."""
  shared = shared_views(config, run_objective, members, run_inputs.streamed)
  step_fn = make_step_fn(model, run_objective, config.model.max_norm, shared is not None)
  if not run_inputs.streamed:
    train_data = run_inputs.train_data
    if run_objective.teacher.cached_logits is not None:  # Gathered by the step with its batch.
      train_data = {**train_data, "teacher_logits": run_objective.teacher.cached_logits}
    args = (train_data, members.hparams, run_objective.teacher.variables)
    views = {"max_shift": config.data.jitter,
             "independent_views": run_objective.independent_views, "shared": shared}
    store = run_objective.teacher.views_store
    if store is not None:
      if epoch_driver(config, model) == "steps":
        raise ConfigError("config.teacher_views_dir needs the scanned epoch: set "
                          "data.epoch_driver='scan' (this model's auto driver steps).")
      return StoredViewsEpochs.of(step_fn, run_objective.sampler, config.batch_size, mesh,
                                  members.member_batch, args, store, config.num_epochs, **views)
    if epoch_driver(config, model) == "steps":
      return SteppedEpochs.of(step_fn, run_objective.sampler, config.batch_size, mesh,
                              members.member_batch, args, **views)
    return CompiledEpochs(make_epoch_fn(step_fn, run_objective.sampler, config.batch_size, mesh,
                                        members.member_batch, **views), args)
  return StreamedEpochs.start(config, workdir, step_fn, run_objective, run_inputs, members, mesh,
                              resumed, shared, stepped=epoch_driver(config, model) == "steps")


def shared_views(config: ml_collections.ConfigDict, run_objective: objective.Objective,
                 members: population.Population, streamed: bool) -> dict[str, Any] | None:
  """`steps.shared_step`'s settings when the members share their batches (`data.shared_order`,
  a streamed run of one member, or a run storing its teacher's outputs on its views, which one
  member shares with itself): the views of the member seeded `config.seed`, and the teacher's
  targets and mixup computed once per batch; None when each member has its own."""
  if not (config.data.shared_order or (streamed and members.size == 1)
          or run_objective.teacher.views_store is not None):
    return None
  return {"views_rng": steps.run_rng(config.seed), "targets_fn": run_objective.teacher.targets_fn,
          "mixup_p": run_objective.mixup_p}


def epoch_driver(config: ml_collections.ConfigDict, model: nn.Module) -> str:
  """The memory pipeline's driver, "scan" or "steps": `config.data.epoch_driver`, where "auto" is
  "steps" on a CPU for a model with a convolution (XLA:CPU runs convolutions several times slower
  inside a loop body, jax-ml/jax#12868; measured in results/cnn_speed) and "scan" otherwise."""
  if config.data.epoch_driver != "auto":
    return config.data.epoch_driver
  if jax.default_backend() != "cpu":
    return "scan"
  images = models.dummy_input(tuple(config.model.input_shape))
  program = jax.make_jaxpr(lambda x: model.init_with_output(jax.random.key(0), x, train=False))
  return "steps" if "conv_general_dilated" in str(program(images)) else "scan"


def make_step_fn(model: nn.Module, run_objective: objective.Objective, max_norm: float,
                 given_targets: bool = False) -> Callable:
  """`steps.train_step` told the run's model, optimizer, loss, targets, max-norm and the
  student features its loss terms read: the step every driver runs (scanned in the compiled
  epoch, or called per batch). With `given_targets` it takes targets computed before it (a
  population sharing its batches, `steps.shared_step`, which also mixes them up)."""
  return functools.partial(
      steps.train_step, model=model, optimizer=run_objective.optimizer,
      loss_fn=run_objective.loss_fn,
      targets_fn=targets.given_targets if given_targets else run_objective.teacher.targets_fn,
      max_norm=max_norm, feature_paths=run_objective.student_features,
      mixup_p=0.0 if given_targets else run_objective.mixup_p)


def make_epoch_fn(step_fn: Callable, sampler: steps.Sampler, batch_size: int,
                  mesh: jax.sharding.Mesh, member_batch: int, max_shift: int,
                  independent_views: bool = False, shared: dict[str, Any] | None = None):
  """The jitted population epoch (state donated): (state, train_data, hparams,
  teacher_variables, epoch) -> (state, per-member metrics); views jittered by up to `max_shift`
  (the teacher's its own with `independent_views`), shared by the members with `shared`."""
  return jax.jit(
      functools.partial(steps.population_epoch, member_batch=member_batch, step_fn=step_fn,
                        batch_size=batch_size, max_shift=max_shift,
                        batch_sharding=parallelism.batch_sharded(mesh), sampler=sampler,
                        independent_views=independent_views, shared=shared),
      out_shardings=parallelism.replicated(mesh), donate_argnums=(0,))


@dataclasses.dataclass
class CompiledEpochs:
  """The memory pipeline's epochs: each one compiled call over data already on the devices."""

  epoch_fn: Any  # make_epoch_fn's jitted epoch; compiled ahead of the first epoch.
  args: tuple[Any, ...]  # (train data, hparams, teacher variables)

  def compiled(self, state: steps.TrainState) -> CompiledEpochs:
    start = time.perf_counter()
    compiled = self.epoch_fn.lower(state, *self.args, jnp.int32(0)).compile()
    reporting.say(f"Compiled the epoch in {time.perf_counter() - start:.1f}s.")
    return CompiledEpochs(compiled, self.args)

  def train(self, state: steps.TrainState, epoch: int, loop: Checkpointer,
            guard: Guard) -> tuple[steps.TrainState, dict[str, Any]]:
    del loop, guard  # Signals are answered between epochs.
    return self.epoch_fn(state, *self.args, jnp.int32(epoch))

  def position(self) -> dict[str, Any]:
    return {}

  def close(self) -> None:
    pass


@dataclasses.dataclass
class StoredViewsEpochs:
  """The scanned epoch of members sharing their batches, with the teacher's outputs on each
  epoch's views kept in `store` (`teacher_views_dir`, `objective.views_store`): an epoch stored
  there already is read and runs no teacher; any other computes its outputs and stores them. Both
  programs give the student the same float32 targets, so a run is the same bit for bit either
  way."""

  store_fn: Any  # make_epoch_fn's epoch that also returns its targets [steps, B, ...].
  read_fn: Any  # make_epoch_fn's epoch that takes them in place of the teacher's variables.
  args: tuple[Any, ...]  # (train data, hparams, teacher variables)
  store: pathlib.Path
  num_epochs: int
  mesh: jax.sharding.Mesh

  @classmethod
  def of(cls, step_fn: Callable, sampler: steps.Sampler, batch_size: int,
         mesh: jax.sharding.Mesh, member_batch: int, args: tuple[Any, ...],
         store: pathlib.Path, num_epochs: int, max_shift: int, independent_views: bool,
         shared: dict[str, Any]) -> StoredViewsEpochs:
    make = lambda views: make_epoch_fn(step_fn, sampler, batch_size, mesh, member_batch,
                                       max_shift, independent_views, {**shared, "views": views})
    return cls(make("store"), make("read"), args, store, num_epochs, mesh)

  def compiled(self, state: steps.TrainState) -> StoredViewsEpochs:
    del state  # Each program compiles on its first epoch.
    held = sum((self.store / f"epoch_{epoch:05d}.json").exists()
               for epoch in range(self.num_epochs))
    reporting.say(f"Teacher outputs on the views: {self.store} holds {held} of the run's "
                  f"{self.num_epochs} epochs; the others are computed and stored there.")
    return self

  def train(self, state: steps.TrainState, epoch: int, loop: Checkpointer,
            guard: Guard) -> tuple[steps.TrainState, dict[str, Any]]:
    del loop, guard  # Signals are answered between epochs.
    train_data, hparams, teacher_variables = self.args
    stored = objective.stored_views(self.store, epoch)
    if stored is not None:
      stored = jax.device_put(stored, parallelism.replicated(self.mesh))
      return self.read_fn(state, train_data, hparams, stored, jnp.int32(epoch))
    state, metrics, outputs = self.store_fn(state, train_data, hparams, teacher_variables,
                                            jnp.int32(epoch))
    objective.store_views(self.store, epoch, np.asarray(jax.device_get(outputs)))
    return state, metrics

  def position(self) -> dict[str, Any]:
    return {}

  def close(self) -> None:
    pass


@dataclasses.dataclass
class SteppedEpochs:
  """The memory pipeline's epochs as one compiled call per step, dispatched from Python: the
  scanned epoch's batches, jitter and dropout keys and updates, step by step, for models whose
  operations XLA:CPU runs slower inside a loop (convolutions). Like the scanned epoch it answers
  signals and checkpoints between epochs."""

  order_fn: Any  # (states, train data, hparams, epoch) -> batch indices [P, steps, batch].
  step_fn: Any  # (states, sums, train data, hparams, teacher variables, epoch, step, indices).
  args: tuple[Any, ...]  # (train data, hparams, teacher variables)
  mesh: jax.sharding.Mesh
  sum_shapes: Any = None  # The epoch sums' shapes, known once compiled.

  @classmethod
  def of(cls, step_fn: Callable, sampler: steps.Sampler, batch_size: int,
         mesh: jax.sharding.Mesh, member_batch: int, args: tuple[Any, ...], max_shift: int,
         independent_views: bool = False, shared: dict[str, Any] | None = None
         ) -> SteppedEpochs:
    order_fn = jax.jit(functools.partial(steps.population_order, member_batch=member_batch,
                                         batch_size=batch_size, sampler=sampler, shared=shared),
                       out_shardings=parallelism.replicated(mesh))
    population_step = jax.jit(
        functools.partial(steps.population_indexed_step, member_batch=member_batch,
                          step_fn=step_fn, max_shift=max_shift,
                          batch_sharding=parallelism.batch_sharded(mesh),
                          independent_views=independent_views, shared=shared),
        out_shardings=parallelism.replicated(mesh), donate_argnums=(0, 1))
    return cls(order_fn, population_step, args, mesh)

  def compiled(self, state: steps.TrainState) -> SteppedEpochs:
    start = time.perf_counter()
    train_data, hparams, teacher_variables = self.args
    epoch = jnp.int32(0)
    order_fn = self.order_fn.lower(state, train_data, hparams, epoch).compile()
    indices = order_fn(state, train_data, hparams, epoch)
    step_args = (train_data, hparams, teacher_variables, epoch, epoch, indices)
    sum_shapes = jax.eval_shape(self.step_fn, state, None, *step_args)[1]
    step_fn = self.step_fn.lower(state, self._zero_sums(sum_shapes), *step_args).compile()
    reporting.say(f"Compiled the step in {time.perf_counter() - start:.1f}s.")
    return SteppedEpochs(order_fn, step_fn, self.args, self.mesh, sum_shapes)

  def _zero_sums(self, sum_shapes: Any) -> dict[str, jax.Array]:
    return jax.device_put(steps.zero_sums(sum_shapes), parallelism.replicated(self.mesh))

  def train(self, state: steps.TrainState, epoch: int, loop: Checkpointer,
            guard: Guard) -> tuple[steps.TrainState, dict[str, Any]]:
    del loop, guard  # Signals are answered between epochs.
    train_data, hparams, teacher_variables = self.args
    epoch = jnp.int32(epoch)
    indices = self.order_fn(state, train_data, hparams, epoch)
    sums = self._zero_sums(self.sum_shapes)
    num_steps = indices.shape[-2]  # [P, steps, batch], or [steps, batch] when shared.
    for step_in_epoch in range(num_steps):
      state, sums = self.step_fn(state, sums, train_data, hparams, teacher_variables, epoch,
                                 jnp.int32(step_in_epoch), indices)
    return state, steps.mean_metrics(sums, num_steps)

  def position(self) -> dict[str, Any]:
    return {}

  def close(self) -> None:
    pass


@dataclasses.dataclass
class StreamedEpochs:
  """The grain pipeline's epochs: `streamed_steps` over `data.steps_per_call` streamed batches a
  call; checkpoints within epochs (`checkpoint.every_steps`) hold the iterators' state and the
  epoch's metric sums, so a run killed mid-epoch resumes exactly."""

  steps_fn: Any  # streamed_steps, jitted: steps and the epoch's sums in one call.
  iterators: list[Any]
  feed: Callable[[int], dict[str, jax.Array]]  # streaming.next_batches on the iterators.
  args: tuple[Any, ...]  # (hparams, teacher variables)
  steps_per_epoch: int
  every_steps: int
  steps_per_call: int
  resume_step: int = 0
  resume_sums: dict[str, Any] | None = None
  children_before: frozenset[int] = frozenset()  # Child processes from before grain's workers.

  @classmethod
  def start(cls, config: ml_collections.ConfigDict, workdir: pathlib.Path, step_fn: Callable,
            run_objective: objective.Objective, run_inputs: inputs.Inputs,
            members: population.Population, mesh: jax.sharding.Mesh,
            resumed: dict[str, Any], shared: dict[str, Any] | None,
            stepped: bool = False) -> StreamedEpochs:
    """Streams for the run (one the members share, with `shared_views`' settings, or one per
    member), positioned where the checkpoint it resumes from (its meta, `resumed`; {} when fresh)
    left them. `stepped` (a model the memory pipeline steps, `epoch_driver`): one step a call,
    its members unrolled, no loop in the program."""
    from kd_jax.data import streaming  # pylint: disable=g-import-not-at-top  # grain: only here.
    seeds = [config.seed] if shared is not None else members.seeds
    position = resumed.get("stream", {})
    if resumed and len(position.get("iterators", ())) != len(seeds):
      raise CheckpointError(
          f"The checkpoint in {workdir} holds {len(position.get('iterators', ()))} data "
          f"iterator states for {len(seeds)} streams of this run: it was not written by this "
          "run's grain pipeline. Use another --workdir, or --overwrite.")
    logits = ""
    if run_objective.teacher.to_cache_on_disk is not None:
      logits = str(objective.cache_logits_on_disk(workdir, run_objective.teacher, run_inputs, mesh,
                                                  members.member_batch))
    streams = [streaming.TrainStream(
        paths=tuple(run_inputs.prepared.paths("train")),
        image_shape=run_inputs.prepared.image_shape, example_records=run_inputs.train_records,
        seed=seed, batch_size=config.batch_size,
        num_epochs=config.num_epochs,
        process_index=jax.process_index(), process_count=jax.process_count(),
        teacher_logits=logits) for seed in seeds]
    children_before = frozenset(streaming.worker_processes())
    iterators = [iter(streaming.train_batches(stream, config.data.grain_workers,
                                              config.data.prefetch)) for stream in streams]
    try:
      for iterator, state in zip(iterators, position.get("iterators", ())):
        iterator.set_state(state)
    except BaseException:
      streaming.close_iterators(iterators, children_before)
      raise
    step_settings = dict(member_batch=members.member_batch, step_fn=step_fn, shared=shared,
                         max_shift=config.data.jitter,
                         independent_views=run_objective.independent_views, unroll=stepped)
    compile_call = functools.partial(jax.jit, out_shardings=parallelism.replicated(mesh),
                                     donate_argnums=(0, 1))
    sums = position.get("sums")
    return cls(steps_fn=compile_call(functools.partial(streamed_steps, **step_settings)),
               iterators=iterators,
               feed=functools.partial(streaming.next_batches, iterators, mesh, shared is not None),
               args=(members.hparams, run_objective.teacher.variables),
               steps_per_epoch=streams[0].steps_per_epoch,
               every_steps=config.checkpoint.every_steps,
               steps_per_call=1 if stepped else config.data.steps_per_call,
               resume_step=position.get("step_in_epoch", 0), children_before=children_before,
               resume_sums=None if sums is None else {
                   name: jnp.asarray(values, jnp.int32 if name == "first_nonfinite_step"
                                     else jnp.float32) for name, values in sums.items()})

  def compiled(self, state: steps.TrainState) -> StreamedEpochs:
    del state  # The step compiles on its first batch.
    return self

  def train(self, state: steps.TrainState, epoch: int, loop: Checkpointer,
            guard: Guard) -> tuple[steps.TrainState, dict[str, Any]]:
    """Steps through the rest of epoch `epoch`; returns epoch-mean metrics as the compiled epoch
    does (stopping early, before any save, once a loss is non-finite). Every `every_steps` steps
    it checkpoints; every `every_steps` (else about SIGNAL_CHECK_STEPS) steps it asks whether any
    process was signalled, and if so checkpoints and stops (an epoch of a large dataset outlasts
    a scheduler's grace period). Calls end at those points, so they fall where they would step
    by step."""
    start, sums = self.resume_step, self.resume_sums
    self.resume_step, self.resume_sums = 0, None
    # SIGNAL_CHECK_STEPS rounded up to a multiple of steps_per_call.
    check_every = self.every_steps or -(-SIGNAL_CHECK_STEPS // self.steps_per_call) * (
        self.steps_per_call)
    done, calls = start, 0  # Steps of the epoch done, compiled calls made.
    while done < self.steps_per_epoch:
      count = min(self.steps_per_call, self.steps_per_epoch - done,
                  check_every - done % check_every)
      batches = self.feed(count)
      if sums is None:  # Zeros shaped like the steps' sums: one compiled program per k.
        sums = steps.zero_sums(jax.eval_shape(self.steps_fn, state, None, batches, *self.args,
                                              jnp.int32(epoch), jnp.int32(done))[1])
      state, sums = self.steps_fn(state, sums, batches, *self.args, jnp.int32(epoch),
                                  jnp.int32(done))
      done, calls = done + count, calls + 1
      if calls % CALLS_IN_FLIGHT == 0:
        jax.block_until_ready(sums)
      if done % check_every or done == self.steps_per_epoch:
        continue  # The epoch's end is the loop's to save.
      if (np.asarray(jax.device_get(sums["first_nonfinite_step"])) >= 0).any():
        break  # The loop reports it, with the last good checkpoint.
      stopping = guard.requested()
      if stopping or (self.every_steps and done % self.every_steps == 0):
        loop.save(state, {"epoch": epoch, "test_errors": None, **self.position(done, sums)})
        faults.point(f"step_checkpoint:{int(state.step[0])}")
      if stopping:
        raise preemption.Preempted(
            f"{guard.signal_name or 'a signal on another process'}: saved checkpoint step "
            f"{int(state.step[0])} (step {done} of epoch {epoch + 1}) in {loop.workdir}. Rerun "
            "the same command to resume.")
    # The first bad step is counted from the epoch's start; the loop counts from `start`.
    return state, steps.mean_metrics(sums, self.steps_per_epoch, start)

  def close(self) -> None:
    """Stops grain's threads and worker processes within seconds (`streaming.close_iterators`):
    a run stopping for a scheduler's SIGTERM has its checkpoint and must exit before SIGKILL."""
    from kd_jax.data import streaming  # pylint: disable=g-import-not-at-top  # grain: only here.
    streaming.close_iterators(self.iterators, self.children_before)

  def position(self, step_in_epoch: int = 0, sums: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    """The checkpoint's record of where the streams are (grain's iterator states)."""
    stream = {"step_in_epoch": step_in_epoch,
              "iterators": [iterator.get_state() for iterator in self.iterators]}
    if sums is not None:
      stream["sums"] = {name: np.asarray(value).tolist()
                        for name, value in jax.device_get(sums).items()}
    return {"stream": stream}


def streamed_steps(states: steps.TrainState, sums: dict[str, jax.Array] | None,
                   batches: dict[str, jax.Array], hparams: dict[str, jax.Array],
                   teacher_variables: Any, epoch: jax.Array, first_step: jax.Array, *,
                   member_batch: int, step_fn: Callable, max_shift: int,
                   independent_views: bool = False, shared: dict[str, Any] | None = None,
                   unroll: bool = False) -> tuple[steps.TrainState, dict[str, jax.Array]]:
  """Steps `first_step`, ... of every member on k streamed batches (uint8 images as read), in
  one compiled call: each member's, stacked [k, P, B, ...], or with `shared` (`steps.shared_step`'s
  settings) one batch all members share, [k, B, ...], viewed, mixed up and labelled by the teacher
  once. Keys as `steps.train_epoch`'s; metrics added to the epoch's `sums` (None: from zero), [P].
  Members outside, steps inside, as the compiled epoch: with the steps outside XLA:CPU copied
  every parameter and moment each step (1.25x the compiled epoch's time). `unroll`: no loop in
  the program, as the stepped epoch (lax's convolutions run ~8x slower in a loop on XLA:CPU: a
  flax nn.Conv convnet took 187 s an epoch looped, 22 s unrolled)."""
  count = jax.tree.leaves(batches)[0].shape[0]
  views, batch_targets = dict(max_shift=max_shift, independent_views=independent_views), None
  if shared is not None:  # batch_targets: the teacher's on the shared batches, [k, ...].
    def shared_view(batch, step_in_epoch):
      jitter_key = steps.epoch_keys(shared["views_rng"], epoch)[1]
      batch = steps.view_images(batch, jitter_key, step_in_epoch, **views)
      return steps.shared_targets(batch, step_in_epoch, teacher_variables, epoch, **shared)
    batches, batch_targets = _over_steps(shared_view, batches, first_step, unroll)
    members = (states, hparams, sums)
  else:
    members = (states, hparams, sums, jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), batches))

  def one_member(member):
    state, member_hparams, member_sums = member[:3]
    member_batches = batches if shared is not None else member[3]

    def one_step(state, step_in_epoch):
      index = step_in_epoch - first_step
      batch, step_targets = jax.tree.map(lambda a: a[index], (member_batches, batch_targets))
      _, jitter_key, dropout_key = steps.epoch_keys(state.rng, epoch)
      if shared is None:  # Shared batches were viewed once, for every member.
        batch = steps.view_images(batch, jitter_key, step_in_epoch, **views)
      return step_fn(state, batch, jax.random.fold_in(dropout_key, step_in_epoch), member_hparams,
                     teacher_variables if shared is None else step_targets)

    def body(step_in_epoch, carry):
      state, metrics = one_step(carry[0], step_in_epoch)
      return state, steps.accumulate_metrics(carry[1], metrics, step_in_epoch)

    if member_sums is None:  # Zeros shaped like the sums of the first step's metrics.
      member_sums = steps.zero_sums(jax.eval_shape(
          lambda: steps.accumulate_metrics(None, one_step(state, first_step)[1], first_step)))
    return _steps_loop(first_step, count, body, (state, member_sums), unroll)

  return parallelism.map_members(one_member, members, member_batch, unroll=unroll)


def _steps_loop(first_step: jax.Array, count: int, body: Callable, carry: Any,
                unroll: bool = False) -> Any:
  """`body(step, carry)` for steps first_step ... first_step + count - 1, in a loop whose trip
  count XLA cannot read (a traced start), so a step compiles alike in calls of every length (a
  one-trip loop was inlined and fused otherwise: last-bit differences, measured) and a run trains
  bit for bit alike however its steps fall into calls; with `unroll`, one after another."""
  if unroll:
    return functools.reduce(lambda carry, i: body(first_step + i, carry), range(count), carry)
  return jax.lax.fori_loop(first_step, first_step + count, body, carry)


def _over_steps(fn: Callable, xs: Any, first_step: jax.Array, unroll: bool = False) -> Any:
  """`fn(x, step)` for each step's slice of `xs` ([k, ...]), stacked [k, ...] (`_steps_loop`)."""
  count = jax.tree.leaves(xs)[0].shape[0]
  outputs = jax.tree.map(lambda s: jnp.zeros((count, *s.shape), s.dtype), jax.eval_shape(
      fn, jax.tree.map(lambda a: a[0], xs), first_step))

  def body(step, outputs):
    index = step - first_step
    values = fn(jax.tree.map(lambda a: a[index], xs), step)
    return jax.tree.map(lambda out, value: out.at[index].set(value), outputs, values)

  return _steps_loop(first_step, count, body, outputs, unroll)
