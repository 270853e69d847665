"""Times populations against single runs, cached teacher logits against the teacher in the step,
and reports the memory a population needs per member.

  python scripts/benchmark_population.py --out results/cpu_population.json

All figures come from one process on the devices present, after compilation (median of
--repeats epochs). MNIST from KD_JAX_MNIST_DIR, else random images of the same size.
  population    a P-member population of 2x800 students (hard labels) per epoch, with members
                run one at a time and all vmapped, against P single runs (P x one single epoch)
  distillation  a 2x800 student distilled from a 2x1200 teacher on the un-jittered training set,
                with the teacher in the step and with its logits cached (plus the cache's cost)
  memory        XLA's memory analysis of the 2x1200 teacher's population epoch: bytes per member,
                and the largest P whose state and temporaries fit a given memory size
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from kd_jax import config_lib, data, losses, models, parallelism, steps, targets, trainer

_MEMBERS = flags.DEFINE_integer("members", 10, "Population size P.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed epochs per case (after a warm-up).")
_OUT = flags.DEFINE_string("out", None, "Write the results as JSON here.")


def _train_data(mesh) -> dict[str, jax.Array]:
  folder = data.resolve_mnist_dir(None)
  if folder:
    arrays = data.load_idx_folder(folder)
    images, labels = arrays["train_images"], arrays["train_labels"].astype(np.int32)
  else:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60_000, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 60_000).astype(np.int32)
  return {"image": parallelism.put_replicated(images, mesh),
          "label": parallelism.put_replicated(labels, mesh)}


def _population(config, num_members: int, mesh, train_data, member_batch: int,
                loss_fn=losses.hard_label_loss, targets_fn=targets.no_targets):
  """A compiled population epoch of `config`'s model, its initial state and arguments."""
  model = models.model_from_config(config.model)
  optimizer = steps.make_optimizer(config, train_data["image"].shape[0] // config.batch_size)
  config = config.copy_and_resolve_references()
  config.members = num_members
  members = config_lib.population_members(config)
  state = steps.stack_members([steps.create_train_state(jax.random.PRNGKey(m["seed"]), model,
                                                        optimizer(config.learning_rate))
                               for m in members])
  step_fn = functools.partial(steps.train_step, model=model, optimizer=optimizer,
                              loss_fn=loss_fn, targets_fn=targets_fn,
                              max_norm=config.model.max_norm)
  epoch_fn = jax.jit(functools.partial(
      steps.population_epoch, member_batch=member_batch, step_fn=step_fn,
      batch_size=config.batch_size, max_shift=config.data.jitter,
      batch_sharding=parallelism.batch_sharded(mesh)), donate_argnums=(0,))
  return epoch_fn, state, trainer.member_hparams(config, members)


def _time_epochs(epoch_fn, state, args, repeats: int) -> dict[str, float]:
  start = time.perf_counter()
  compiled = epoch_fn.lower(state, *args, jnp.int32(0)).compile()
  compile_s = time.perf_counter() - start
  state, _ = jax.block_until_ready(compiled(state, *args, jnp.int32(0)))  # Warm-up.
  times = []
  for epoch in range(1, repeats + 1):
    start = time.perf_counter()
    state, _ = jax.block_until_ready(compiled(state, *args, jnp.int32(epoch)))
    times.append(time.perf_counter() - start)
  return {"epoch_s": statistics.median(times), "epoch_times_s": times, "compile_s": compile_s}


def _memory(epoch_fn, state, args) -> dict[str, int]:
  """XLA's buffer sizes; the donated state's output aliases its input and is counted once."""
  analysis = epoch_fn.lower(state, *args, jnp.int32(0)).compile().memory_analysis()
  sizes = {"argument_bytes": int(analysis.argument_size_in_bytes),
           "output_bytes": int(analysis.output_size_in_bytes),
           "alias_bytes": int(analysis.alias_size_in_bytes),
           "temp_bytes": int(analysis.temp_size_in_bytes)}
  sizes["total_bytes"] = (sizes["argument_bytes"] + sizes["output_bytes"] - sizes["alias_bytes"]
                          + sizes["temp_bytes"])
  return sizes


def _cpu_model() -> str:
  cpuinfo = pathlib.Path("/proc/cpuinfo")
  if cpuinfo.exists():
    for line in cpuinfo.read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  return platform.processor() or platform.machine()


def _progress(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def main(argv):
  del argv
  mesh = parallelism.make_mesh()
  train_data = _train_data(mesh)
  p, repeats = _MEMBERS.value, _REPEATS.value
  student = config_lib.base_config()  # 2x800, hard labels, batch 128.
  result = {"device": jax.devices()[0].device_kind, "num_devices": mesh.size,
            "host_cpu": _cpu_model(), "cpu_count": os.cpu_count(), "jax": jax.__version__,
            "members": p, "batch_size": student.batch_size}

  epoch_fn, state, hparams = _population(student, 1, mesh, train_data, 1)
  single = _time_epochs(epoch_fn, state, (train_data, hparams, None), repeats)
  _progress(f"2x800 single run: {single['epoch_s']:.2f}s per epoch")
  population = {"single_run": single}
  for name, member_batch in (("one_at_a_time", 1), ("vmapped", p)):
    epoch_fn, state, hparams = _population(student, p, mesh, train_data, member_batch)
    timing = _time_epochs(epoch_fn, state, (train_data, hparams, None), repeats)
    timing["ratio_to_single_runs"] = timing["epoch_s"] / (p * single["epoch_s"])
    population[name] = timing
    _progress(f"2x800 population of {p}, {name}: {timing['epoch_s']:.2f}s per epoch, "
              f"{timing['ratio_to_single_runs']:.2f}x {p} single runs")
  result["population_2x800"] = population

  # Distillation: a random (untrained) 2x1200 teacher costs what a trained one does.
  teacher_config = config_lib.paper_teacher()
  teacher = models.model_from_config(teacher_config.model)
  teacher_params = steps.stack_members([teacher.init(jax.random.PRNGKey(1), jnp.zeros((1, 784)),
                                                     train=False)["params"]])
  distill = config_lib.add_distillation(config_lib.base_config())
  distill.teacher_workdir = "unused"
  loss_fn = losses.make_distillation_loss()
  in_step = _population(distill, 1, mesh, train_data, 1, loss_fn,
                        targets.make_teacher_targets(teacher))
  timings = {"teacher_in_step": _time_epochs(*in_step[:2], (train_data, in_step[2],
                                                             teacher_params), repeats)}
  logits_fn = jax.jit(functools.partial(targets.teacher_logits, teacher=teacher, batch_size=1000,
                                        member_batch=1,
                                        batch_sharding=parallelism.batch_sharded(mesh)))
  jax.block_until_ready(logits_fn(teacher_params, train_data["image"]))
  start = time.perf_counter()
  cached = jax.block_until_ready(logits_fn(teacher_params, train_data["image"]))
  timings["cache_s"] = time.perf_counter() - start
  cached_run = _population(distill, 1, mesh, train_data, 1, loss_fn, targets.cached_targets)
  timings["cached_logits"] = _time_epochs(
      *cached_run[:2], ({**train_data, "teacher_logits": cached}, cached_run[2], None), repeats)
  timings["speedup"] = timings["teacher_in_step"]["epoch_s"] / timings["cached_logits"]["epoch_s"]
  result["distillation_2x800_from_2x1200"] = timings
  _progress(f"distillation epoch: {timings['teacher_in_step']['epoch_s']:.2f}s with the teacher "
            f"in the step, {timings['cached_logits']['epoch_s']:.2f}s with cached logits")

  # Memory of the teacher population's epoch: what grows with P is the state (params + Adam) and,
  # vmapped, the temporaries; the data and the rest are fixed.
  memory = {}
  epoch_fn, state, hparams = _population(teacher_config, 1, mesh, train_data, 1)
  small = _memory(epoch_fn, state, (train_data, hparams, None))
  for name, member_batch in (("one_at_a_time", 1), ("vmapped", p)):
    epoch_fn, state, hparams = _population(teacher_config, p, mesh, train_data, member_batch)
    large = _memory(epoch_fn, state, (train_data, hparams, None))
    per_member = (large["total_bytes"] - small["total_bytes"]) / (p - 1)
    fixed = small["total_bytes"] - per_member
    # 10% of the memory is left to the runtime, the host copy of MNIST and Python.
    memory[name] = {"P=1": small, f"P={p}": large, "bytes_per_member": per_member,
                    "fixed_bytes": fixed,
                    "max_members": {f"{gib} GiB": int((gib * 2**30 * 0.9 - fixed) // per_member)
                                    for gib in (24, 80)}}
  result["memory_2x1200_teacher"] = memory

  text = json.dumps(result, indent=2)
  print(text)
  if _OUT.value:
    pathlib.Path(_OUT.value).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(_OUT.value).write_text(text + "\n")


if __name__ == "__main__":
  app.run(main)
