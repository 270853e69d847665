"""Training and evaluation throughput against the bare matrix products and convolutions each does.

  python -m kd_jax.benchmark --out results/benchmark/run1.json    # ~25 min on a 2-core CPU
  python -m kd_jax.benchmark --quick --out /tmp/bench.json        # seconds: well-formed output only

Each case is set up by the trainer's own `trainer.build` and `epochs.build` (a distilled case opens
an initialised paper teacher from a run directory, as any teacher is opened) and its epochs are
timed after compilation (median of --repeats epochs) through the driver a run would use (the
scanned epoch, or the stepped one for a model with lax convolutions on CPU). Its *floor* is the
fastest way the bare operations of its steps run on the device, best of the ways tried: the
matrix products (and convolutions, by lax and by `models.gemm_conv`) of the student's forward and
backward pass (dW for every layer, dx for all but the first) plus the teacher's forward pass when
the teacher runs in the step, same shapes, dtype and batch, each way timed as a compiled scan over
the epoch's steps and as one compiled call per step. `ratio` = epoch time / floor time: what the
rest of the step (dropout, jitter, BatchNorm, softmax, Adam, max-norm, gathers, the loop) costs a
user on top. Also the device's large-GEMM rate, compile times and peak memory. MNIST from
$KD_JAX_MNIST_DIR, else random images of the same shape (timings do not depend on pixel values).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import resource
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags

from kd_jax import (checkpointing, cli, config_lib, configs, data, epochs, evaluation, models,
                    parallelism, population, reporting, rundir, runtime, steps, trainer)



@dataclasses.dataclass(frozen=True)
class Case:
  """One timed configuration: a config, its population size, and its floor's matmul shapes."""

  name: str
  config: ml_collections.ConfigDict
  members: int = 1
  member_batch: int = 0  # 0: the trainer's default (one at a time on CPU, all vmapped else).


def _cases(batch_size: int, num_members: int, quick: bool) -> list[Case]:
  teacher = configs.get("paper_teacher")
  student = config_lib.base_config()
  in_step = config_lib.add_distillation(config_lib.base_config())
  in_step.data.jitter = 2  # A jittered transfer set: the teacher relabels every view.
  cached = config_lib.add_distillation(config_lib.base_config())  # Un-jittered: cached logits.
  bf16_teacher = configs.get("paper_teacher")
  bf16_teacher.model.compute_dtype = "bfloat16"
  # The teacher less what its step does beyond the floor's matrix products, part by part.
  no_dropout = {"model__input_dropout": 0.0, "model__hidden_dropout": 0.0}
  cases = [Case("teacher 2x1200", teacher), Case("teacher 2x1200 bf16", bf16_teacher),
           Case("teacher 2x1200 without dropout", configs.get("paper_teacher", **no_dropout)),
           Case("teacher 2x1200 without dropout, max-norm, jitter",
                configs.get("paper_teacher", **no_dropout, model__max_norm=0.0, data__jitter=0)),
           Case("student 2x800 hard labels", student),
           Case("distill 2x800, teacher in step (jitter 2)", in_step),
           Case("distill 2x800, cached teacher logits", cached),
           Case(f"population of {num_members} 2x800 students", student, members=num_members),
           Case(f"population of {num_members} 2x800 students, vmapped", student,
                members=num_members, member_batch=num_members)]
  cnn = configs.override(config_lib.base_config(), model__name="cnn", model__hidden_sizes=(256,))
  user_cnn = configs.override(config_lib.base_config(), model__name="kd_jax.benchmark:UserConvNet")
  cases += [Case("cnn 16-32 conv + 256 (registry)", cnn),
            Case("user convnet 16-32 + 256 (flax nn.Conv)", user_cnn)]
  if quick:  # The variants run the same code paths with another dtype, model or member_batch.
    cases = [c for c in cases if "bf16" not in c.name and "without" not in c.name
             and not c.member_batch]
  for case in cases:
    case.config.batch_size = batch_size
  return cases


class UserConvNet(nn.Module):
  """The registry CNN (conv 16-32, BatchNorm, 2x2 max-pool, dense 256) as a user writes it, with
  flax's own `nn.Conv` and `nn.max_pool`: on CPU its epochs run on the stepped driver."""

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = x[..., None]
    for features in (16, 32):
      x = nn.Conv(features, (3, 3), use_bias=False)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
      x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
    x = nn.relu(nn.Dense(256)(x.reshape(x.shape[0], -1)))
    return nn.Dense(data.NUM_CLASSES)(x)


def _layer_sizes(model_config: ml_collections.ConfigDict) -> list[int]:
  return [784, *model_config.hidden_sizes, data.NUM_CLASSES]


def bare_step(model_config: ml_collections.ConfigDict, teacher_sizes: list[int] | None,
              batch_size: int, conv: Callable = jax.lax.conv_general_dilated) -> tuple:
  """One step's bare operations, (weights, step index) -> weights, and the weights: the student's
  convolutions (3x3, SAME, by `conv`) and matrix products forward and backward (dW for every
  layer, dx for all but the first; a stride-2 slice stands in for pooling), plus the teacher's
  forward pass when it runs in the step. Models without `conv_features` are MLPs."""
  key = jax.random.PRNGKey(0)
  dtype = models.compute_dtype(model_config)
  features = tuple(model_config.get("conv_features", ())) if model_config.name != "mlp" else ()
  channels, kernels = 1, []
  for width in features:
    kernels.append(jax.random.normal(key, (3, 3, channels, width), dtype) * 0.1)
    channels = width
  side = 28 // 2 ** len(features)
  sizes = [side * side * channels, *model_config.hidden_sizes, data.NUM_CLASSES]
  layers = lambda sizes: [jax.random.normal(key, (m, n), dtype) * 0.01
                          for m, n in zip(sizes[:-1], sizes[1:])]
  teacher_weights = layers(teacher_sizes) if teacher_sizes else []
  images = jax.random.normal(key, (batch_size, 28, 28, 1), dtype)

  # As the models form them: narrower dtypes through models.matmul, summed in float32.
  product = jnp.matmul if dtype == jnp.float32 else models.matmul

  def forward(weights, batch):
    kernels, dense = weights
    x = batch
    for kernel in kernels:
      x = conv(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))[:, ::2, ::2]
    x = x.reshape(batch.shape[0], -1)
    for w in dense:
      x = product(x, w)
    return x

  def step(weights, step_index):
    batch = images + step_index.astype(dtype)  # A new batch each step: nothing loop-invariant.
    logits, backward = jax.vjp(lambda w: forward(w, batch), weights)
    if teacher_weights:  # The teacher's forward pass, which the gradient then depends on.
      teacher_logits = batch.reshape(batch_size, -1)
      for w in teacher_weights:
        teacher_logits = product(teacher_logits, w)
      logits = logits - teacher_logits
    grads = backward(logits)[0]
    return jax.tree.map(lambda w, g: w - 1e-6 * g, weights, grads)

  return step, (kernels, layers(sizes))


def time_floor(step: Callable, weights: Any, num_steps: int, num_members: int, member_batch: int,
               repeats: int, ways: tuple[str, ...] = ("scan", "per_step")) -> dict[str, float]:
  """Epoch time of `step` for every member, in each of `ways`: "scan" (a compiled scan over the
  epoch's steps) and "per_step" (one compiled call per step from Python, weights donated)."""
  stacked = steps.stack_members([weights] * num_members)
  seconds = {}

  def scanned(weights):
    one_member = lambda w: jax.lax.scan(lambda w, i: (step(w, i), None), w,
                                        jnp.arange(num_steps))[0]
    return parallelism.map_members(one_member, weights, member_batch)

  def one_step(weights, step_index):
    return parallelism.map_members(lambda w: step(w, step_index), weights, member_batch,
                                   unroll=True)

  if "scan" in ways:
    seconds["scan"] = time_calls(jax.jit(scanned), (stacked,), repeats,
                            lambda out, args, i: (out,))["seconds"]
  if "per_step" in ways:
    per_step = jax.jit(one_step, donate_argnums=(0,))
    stacked = jax.block_until_ready(per_step(stacked, jnp.int32(0)))  # Compiled, warmed up.
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      for index in range(num_steps):
        stacked = per_step(stacked, jnp.int32(index))
      jax.block_until_ready(stacked)
      times.append(time.perf_counter() - start)
    seconds["per_step"] = statistics.median(times)
  return seconds


@functools.cache
def _case_floor(conv_features: tuple[int, ...], hidden_sizes: tuple[int, ...], compute_dtype: str,
                teacher_sizes: tuple[int, ...] | None, batch_size: int, num_steps: int,
                num_members: int, member_batch: int, repeats: int) -> dict[str, float]:
  """`case_floor`, measured once per set of operations (what `bare_step` reads of the model), so
  the registry CNN and the user's convnet written like it share one measurement."""
  model = {"name": "cnn" if conv_features else "mlp", "conv_features": conv_features,
           "hidden_sizes": hidden_sizes, "compute_dtype": compute_dtype}
  config = ml_collections.ConfigDict({"model": model, "batch_size": batch_size})
  return case_floor(config, teacher_sizes and list(teacher_sizes), num_steps, num_members,
                    member_batch, repeats)


def case_floor(config: ml_collections.ConfigDict, teacher_sizes: list[int] | None,
               num_steps: int, num_members: int, member_batch: int, repeats: int,
               skip: tuple[str, ...] = ()) -> dict[str, float]:
  """Seconds per epoch of a case's bare operations, each way tried (convolutions by lax and by
  `models.gemm_conv`, scanned and per step) but those in `skip`; the floor is the fastest."""
  convs = {"": jax.lax.conv_general_dilated}
  if config.model.name != "mlp":
    convs = {"lax conv, ": jax.lax.conv_general_dilated, "gemm conv, ": models.gemm_conv}
  ways = {}
  for label, conv in convs.items():
    tried = tuple(way for way in ("scan", "per_step") if label + way not in skip)
    step, weights = bare_step(config.model, teacher_sizes, config.batch_size, conv)
    for way, seconds in time_floor(step, weights, num_steps, num_members, member_batch, repeats,
                                   tried).items():
      ways[label + way] = seconds
  return ways


def time_calls(fn: Callable, args: tuple, repeats: int,
               advance: Callable | None = None) -> dict:
  """Compiles `fn`, runs it once to warm up, then times `repeats` calls (median)."""
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - start
  out = jax.block_until_ready(compiled(*args))
  times = []
  for i in range(repeats):
    args = advance(out, args, i + 1) if advance else args
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return {"seconds": statistics.median(times), "times_s": times, "compile_s": compile_s}


def data_folder(quick: bool, scratch: pathlib.Path) -> tuple[str, str]:
  """(IDX folder, what it holds): $KD_JAX_MNIST_DIR's MNIST, else random images of MNIST's shape
  written as an IDX folder (timings do not depend on pixel values); --quick: 1,024 of them."""
  folder = None if quick else data.resolve_mnist_dir(None)
  if folder:
    return folder, f"idx:{folder}"
  rng = np.random.default_rng(0)
  n_train, n_test = (1024, 1000) if quick else (60_000, 10_000)
  data.write_idx_folder(scratch / "images", {
      "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
      "train_labels": rng.integers(0, 10, n_train),
      "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
      "test_labels": rng.integers(0, 10, n_test)}, compress=False)
  return str(scratch / "images"), "random images"


def random_teacher(workdir: pathlib.Path, mesh, members: int = 1) -> pathlib.Path:
  """A run directory holding initialised (untrained) paper teachers, `members` of them (an
  ensemble): the distillation cases open it as any teacher is opened."""
  config = configs.get("paper_teacher", members=members, seed=1)
  model = models.model_from_config(config.model)
  state = population.init_state(model, steps.make_optimizer(config, 1)(1.0),
                                list(range(1, members + 1)), mesh,
                                tuple(config.model.input_shape))
  workdir.mkdir(parents=True)
  rundir.save_config(workdir, config, population.members(config))
  checkpointing.save_variables(workdir, 0, state.variables, {"epoch": 0})
  return workdir


def built_case(config: ml_collections.ConfigDict, folder: str, teacher: pathlib.Path, mesh,
           **fields: Any) -> tuple[trainer.Built, steps.TrainState, Any]:
  """The case's run as the trainer sets it up (`trainer.build`): (run, fresh state, its
  memory-pipeline epoch driver)."""
  config = configs.override(ml_collections.ConfigDict(config.to_dict()), **fields)
  config.data.mnist_dir, config.data.check_counts = folder, False
  if "teacher_workdir" in config:  # A distillation config: the initialised teacher.
    config.teacher_workdir = str(teacher)
  config_lib.validate(config)
  run = trainer.build(config, mesh)
  driver = epochs.build(config, teacher.parent, run.model, run.objective, run.inputs,
                        run.population, mesh, {})
  return run, trainer.fresh_state(config, run), driver


def time_epochs(driver: epochs.Epochs, state: steps.TrainState, repeats: int) -> dict:
  """Compiles the run's epoch driver, trains one epoch to warm up, then times `repeats` epochs."""
  start = time.perf_counter()
  driver = driver.compiled(state)
  compile_s = time.perf_counter() - start
  state = jax.block_until_ready(driver.train(state, 0, None, None)[0])
  times = []
  for epoch in range(1, repeats + 1):
    start = time.perf_counter()
    state = jax.block_until_ready(driver.train(state, epoch, None, None)[0])
    times.append(time.perf_counter() - start)
  return {"seconds": statistics.median(times), "times_s": times, "compile_s": compile_s}


def time_training(case: Case, folder: str, teacher: pathlib.Path, mesh, repeats: int) -> dict:
  """Epoch time of `case` through the trainer's own set-up and epoch driver, its floor (the best
  of the ways its bare operations ran), and their ratio."""
  config = case.config
  run, state, driver = built_case(config, folder, teacher, mesh, members=case.members,
                              member_batch=case.member_batch)
  num_steps = run.inputs.num_train // config.batch_size
  teacher_sizes = None  # Set when the teacher runs in the step: its forward is in the floor.
  targets_used = "hard labels"
  if run.objective.teacher.cached_logits is not None:
    targets_used = "cached teacher logits"
  elif run.objective.teacher.variables is not None:
    teacher_sizes = _layer_sizes(configs.get("paper_teacher").model)
    targets_used = "teacher in the step"
  epoch = time_epochs(driver, state, repeats)
  model_config = config.model
  if config.model.name not in models.MODELS:  # A user's convnet: the registry CNN's operations.
    model_config = configs.override(ml_collections.ConfigDict(config.to_dict()), model__name="cnn",
                                    model__hidden_sizes=(256,)).model
  conv_features = () if model_config.name == "mlp" else tuple(model_config.conv_features)
  floors = _case_floor(conv_features, tuple(model_config.hidden_sizes),
                       model_config.get("compute_dtype", "float32"),
                       teacher_sizes and tuple(teacher_sizes), config.batch_size, num_steps,
                       run.population.size, run.population.member_batch, repeats)
  floor_way = min(floors, key=floors.get)
  examples = num_steps * config.batch_size * run.population.size
  return {"case": case.name, "targets": targets_used, "batch_size": config.batch_size,
          "members": run.population.size, "model": models.describe(config.model),
          "epoch_driver": epochs.epoch_driver(config, run.model), "steps_per_epoch": num_steps,
          "epoch_s": epoch["seconds"], "examples_per_s": examples / epoch["seconds"],
          "floor_s": floors[floor_way], "floor_way": floor_way, "floor_ways_s": floors,
          "ratio": epoch["seconds"] / floors[floor_way], "compile_s": epoch["compile_s"],
          "epoch_times_s": epoch["times_s"], "member_batch": run.population.member_batch}


def population_memory(folder: str, teacher: pathlib.Path, mesh, num_members: int,
                      quick: bool) -> dict:
  """What a population of paper teachers needs, from XLA's memory analysis of its compiled epoch
  (compiled, not run): bytes per member and the largest P that fits a memory size."""
  config = configs.get("paper_teacher")
  result = {}
  for name, member_batch in (("one at a time", 1), ("vmapped", num_members))[:1 if quick else 2]:
    totals = {}
    for size in (1, num_members):
      _, state, driver = built_case(config, folder, teacher, mesh, members=size,
                                member_batch=min(member_batch, size))
      analysis = driver.epoch_fn.lower(state, *driver.args,
                                       jnp.int32(0)).compile().memory_analysis()
      # The donated state's output aliases its input: count it once.
      totals[size] = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                      - analysis.alias_size_in_bytes + analysis.temp_size_in_bytes)
    per_member = (totals[num_members] - totals[1]) / (num_members - 1)
    fixed = totals[1] - per_member
    # A tenth of the memory is left to the runtime, the host copy of MNIST and Python.
    result[name] = {"bytes_per_member": per_member, "fixed_bytes": fixed,
                    "max_members": {f"{gib} GiB": int((0.9 * gib * 2**30 - fixed) // per_member)
                                    for gib in (24, 80, 141)}}
  return result


def time_evaluation(folder: str, teacher: pathlib.Path, mesh, repeats: int) -> dict:
  """The paper teacher scored on the test set (eval batch 1000) against its forward matmuls."""
  config = configs.get("paper_teacher")
  run, state, _ = built_case(config, folder, teacher, mesh)
  split = run.inputs.eval_splits["test"]
  evaluate_fn = jax.jit(functools.partial(
      evaluation.evaluate, model=run.model, batch_size=run.inputs.eval_batch, member_batch=1,
      batch_sharding=parallelism.batch_sharded(mesh)))
  timing = time_calls(evaluate_fn, (state.variables, split.images, split.labels, split.mask),
                      repeats)
  sizes = _layer_sizes(config.model)
  weights = [jnp.ones((m, n)) * 0.01 for m, n in zip(sizes[:-1], sizes[1:])]
  num_batches = split.images.shape[0] // run.inputs.eval_batch

  def forward(weights, xs):
    def body(carry, x):
      for w in weights:
        x = x @ w
      return carry, x  # Logits out; summing them here made XLA:CPU's matmuls 15x slower.
    return jax.lax.scan(body, None, xs)[1]

  xs = jnp.ones((num_batches, run.inputs.eval_batch, sizes[0]))
  floor = time_calls(jax.jit(forward), (weights, xs), repeats)
  return {"case": "evaluate teacher 2x1200 on the test set", "batch_size": run.inputs.eval_batch,
          "examples": split.num_examples, "seconds": timing["seconds"],
          "examples_per_s": split.num_examples / timing["seconds"], "floor_s": floor["seconds"],
          "ratio": timing["seconds"] / floor["seconds"], "compile_s": timing["compile_s"]}


def gemm_rate(size: int, dtype, repeats: int) -> float:
  """GFLOP/s of a compiled square matmul chain: the device's large-GEMM rate (summed in float32,
  as `models.matmul` sums bfloat16)."""
  a = jax.random.normal(jax.random.PRNGKey(0), (size, size), dtype)
  chain = jax.jit(lambda a: jax.lax.fori_loop(0, 4, lambda _, x: models.matmul(x, a) * 1e-3, a))
  seconds = time_calls(chain, (a,), repeats)["seconds"]
  return 4 * 2 * size**3 / seconds / 1e9


def peak_memory() -> dict[str, Any]:
  stats = jax.devices()[0].memory_stats() or {}
  return {"host_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
          "device_peak_bytes": stats.get("peak_bytes_in_use")}


def table(results: dict[str, Any]) -> str:
  machine = results["machine"]
  lines = [f"{reporting.describe_machine(machine)}, {results['data']}",
           f"large GEMM: {results['gemm_gflops']['float32']:.0f} GFLOP/s float32, "
           f"{results['gemm_gflops']['bfloat16']:.0f} GFLOP/s bfloat16",
           f"{'case':<45} {'batch':>5} {'epoch s':>8} {'examples/s':>11} {'floor s':>8} "
           f"{'ratio':>6} {'compile s':>9}  floor's way"]
  for r in results["training"]:
    lines.append(f"{r['case']:<45} {r['batch_size']:>5} {r['epoch_s']:>8.3f} "
                 f"{r['examples_per_s']:>11.0f} {r['floor_s']:>8.3f} {r['ratio']:>6.2f} "
                 f"{r['compile_s']:>9.1f}  {r['floor_way']}")
  for r in results["training"]:
    if "ratio_to_single_runs" in r:
      lines.append(f"{r['case']}, batch {r['batch_size']}: {r['ratio_to_single_runs']:.2f}x the "
                   f"time of {r['members']} single runs")
  if "evaluation" not in results:  # Only some cases timed (--cases).
    return "\n".join(lines)
  for name, memory in results["population_memory"].items():
    lines.append(f"2x1200 teacher population, {name}: "
                 f"{memory['bytes_per_member'] / 2**20:.0f} MB per member; fits "
                 + ", ".join(f"P={p} in {size}" for size, p in memory["max_members"].items()))
  e = results["evaluation"]
  lines.append(f"{e['case']:<45} {e['batch_size']:>5} {e['seconds']:>8.3f} "
               f"{e['examples_per_s']:>11.0f} {e['floor_s']:>8.3f} {e['ratio']:>6.2f} "
               f"{e['compile_s']:>9.1f}")
  memory = results["memory"]
  lines.append(f"peak host memory {memory['host_peak_rss_mb']:.0f} MB"
               + (f", device {memory['device_peak_bytes'] / 2**20:.0f} MB"
                  if memory["device_peak_bytes"] else ""))
  return "\n".join(lines)


def define_flags() -> None:
  """The command's flags (defined only when it runs, so `model.name="kd_jax.benchmark:..."`
  imports this module too)."""
  flags.DEFINE_bool("quick", False, "A minute or two: 1,024 random images, one batch size, one "
                    "timed epoch, 2 members, no bfloat16 or vmapped variants. Checks the "
                    "plumbing; its timings mean little.")
  flags.DEFINE_string("out", "runs/benchmark.json", "Where the JSON results go.")
  flags.DEFINE_list("batch_sizes", ["128", "1024"], "Global batch sizes to time.")
  flags.DEFINE_integer("repeats", 3, "Timed epochs per case, after a warm-up epoch.")
  flags.DEFINE_integer("members", 10, "Size of the student population case.")
  flags.DEFINE_list("cases", [], "Only the cases whose name contains one of these texts (e.g. "
                    "'teacher'); evaluation and memory are then skipped. Default: every case.")


def main(argv):
  del argv
  f = flags.FLAGS
  quick = f.quick
  repeats = 1 if quick else f.repeats
  batch_sizes = [128] if quick else [int(b) for b in f.batch_sizes]
  num_members = 2 if quick else f.members
  mesh = parallelism.make_mesh()
  for batch_size in batch_sizes:
    parallelism.check_batch_divides(batch_size, mesh, "--batch_sizes")
  scratch = pathlib.Path(tempfile.mkdtemp(prefix="kd_jax_benchmark_"))
  try:
    results = _measure(quick, repeats, batch_sizes, num_members, mesh, scratch, f.cases)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  out = pathlib.Path(f.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(results, indent=2) + "\n")
  print(table(results))
  print(f"Written: {out}")


def _measure(quick: bool, repeats: int, batch_sizes: list[int], num_members: int, mesh,
             scratch: pathlib.Path, only: list[str] = ()) -> dict[str, Any]:
  folder, source = data_folder(quick, scratch)
  with runtime.quiet_logs():
    teacher = random_teacher(scratch / "teacher", mesh)
  results = {"machine": reporting.machine(), "quick": quick, "data": source, "repeats": repeats,
             "gemm_gflops": {name: gemm_rate(512 if quick else 4096, dtype, repeats)
                             for name, dtype in (("float32", jnp.float32),
                                                 ("bfloat16", jnp.bfloat16))},
             "training": []}
  for batch_size in batch_sizes:
    for case in _cases(batch_size, num_members, quick):
      if only and not any(text in case.name for text in only):
        continue
      result = time_training(case, folder, teacher, mesh, repeats)
      print(f"{result['case']}, batch {batch_size}: {result['epoch_s']:.3f}s per epoch, "
            f"{result['ratio']:.2f}x its floor ({result['floor_way']})", file=sys.stderr, flush=True)
      results["training"].append(result)
  for record in results["training"]:
    single = record["members"] > 1 and next(
        (r for r in results["training"] if r["batch_size"] == record["batch_size"]
         and r["case"] == "student 2x800 hard labels"), None)
    if single:  # Against that many single runs at that batch size.
      record["ratio_to_single_runs"] = record["epoch_s"] / (record["members"] * single["epoch_s"])
  if only:
    return results
  results["evaluation"] = time_evaluation(folder, teacher, mesh, repeats)
  results["population_memory"] = population_memory(folder, teacher, mesh, num_members, quick)
  results["memory"] = peak_memory()
  return results


if __name__ == "__main__":
  define_flags()
  cli.run(main)
