"""The grain pipeline: prepared ArrayRecord folders, per-host global batches, exact mid-epoch
resume, teacher logits on disk, and a dataset larger than the process may address."""

import json
import os
import resource
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from kd_jax import (checkpointing, data, evaluate, inputs, models, parallelism, prepare, rundir,
                    runs, trainer)
from kd_jax.data import records, streaming
from kd_jax.errors import ConfigError, DataError
from conftest import (REPO_ROOT, TINY_OVERRIDES, final_digests, make_tiny_mnist, run_command,
                      tiny_config)

GRAIN = ["--config.data.pipeline=grain"]


@pytest.fixture(scope="module")
def tiny_records(tiny_mnist_dir, tmp_path_factory):
  """The tiny IDX folder prepared (2 shards per split), as the command does."""
  out = tmp_path_factory.mktemp("records") / "tiny"
  prepare.prepare("mnist", out, num_shards=2, mnist_dir=str(tiny_mnist_dir), check_counts=False)
  return out


@pytest.mark.slow
def test_prepare_command_writes_the_same_folder(tiny_mnist_dir, tiny_records, tmp_path):
  result = run_command("data.prepare", "--name=mnist", f"--out={tmp_path / 'out'}",
                       "--shards=2", "--nocheck_counts", mnist_dir=tiny_mnist_dir)
  assert "Wrote mnist (train 480, test 200" in result.stdout
  for path in tiny_records.iterdir():
    assert (tmp_path / "out" / path.name).read_bytes() == path.read_bytes(), path.name
  again = run_command("data.prepare", "--name=mnist", f"--out={tmp_path / 'out'}",
                      mnist_dir=tiny_mnist_dir, check=False)
  assert again.returncode == 2 and "is not empty" in again.stderr.splitlines()[-1]


def test_prepared_folder_holds_the_dataset_exactly(tiny_records, tiny_mnist_dir):
  prepared = records.open_folder(tiny_records)
  arrays = make_tiny_mnist()
  assert (prepared.name, prepared.num_classes, prepared.image_shape) == ("mnist", 10, (28, 28))
  for split in records.SPLITS:
    images, labels = records.load_split(prepared, split)
    np.testing.assert_array_equal(images, arrays[f"{split}_images"])
    np.testing.assert_array_equal(labels, arrays[f"{split}_labels"])
    np.testing.assert_array_equal(prepared.labels(split), arrays[f"{split}_labels"])
  # The memory pipeline reads a prepared folder as it reads the IDX files (validation carved alike).
  config = tiny_config(tiny_mnist_dir, data__validation_size=80)
  from_idx = data.load_dataset(config.data)
  config.data.records_dir = str(tiny_records)
  from_records = data.load_dataset(config.data)
  for field in ("train", "validation", "test"):
    np.testing.assert_array_equal(getattr(from_records, f"{field}_images"),
                                  getattr(from_idx, f"{field}_images"))


def _stream(prepared, process_index=0, process_count=1, **overrides):
  fields = dict(paths=tuple(prepared.paths("train")), image_shape=prepared.image_shape,
                example_records=np.arange(0, 480, 2), seed=3, batch_size=16, num_epochs=2,
                process_index=process_index, process_count=process_count)
  return streaming.TrainStream(**{**fields, **overrides})


def _batches(stream):
  return list(streaming.train_batches(stream, prefetch=2))


def test_global_batches_are_the_same_for_one_process_and_two(tiny_records):
  """One process reading whole batches (1 x 4 devices) and two reading halves (2 x 2 devices):
  the same global batches, in an order that is a pure function of (seed, epoch)."""
  prepared = records.open_folder(tiny_records)
  whole = _batches(_stream(prepared))
  halves = [_batches(_stream(prepared, index, 2)) for index in range(2)]
  assert len(whole) == 2 * (240 // 16) and len(halves[0]) == len(whole)
  for step, batch in enumerate(whole):
    for name in ("image", "label"):
      np.testing.assert_array_equal(
          np.concatenate([halves[0][step][name], halves[1][step][name]]), batch[name])
  assert [b["label"].tolist() for b in _batches(_stream(prepared))] == [
      b["label"].tolist() for b in whole]  # Rebuilt from its description: the same order.

  # Each epoch is a permutation of the chosen records (the incomplete last batch dropped), with
  # a new order every epoch and for another seed.
  images, labels = records.load_split(prepared, "train")
  orders = [streaming.epoch_order(3, epoch, 240, np.arange(240)) for epoch in (0, 1)]
  for order in orders:
    assert sorted(order) == list(range(240))
  assert not np.array_equal(orders[0], orders[1])
  assert not np.array_equal(orders[0], streaming.epoch_order(4, 0, 240, np.arange(240)))
  epoch_labels = np.concatenate([b["label"] for b in whole[:15]])
  np.testing.assert_array_equal(epoch_labels, labels[np.arange(0, 480, 2)[orders[0]]])
  np.testing.assert_array_equal(whole[0]["image"], images[np.arange(0, 480, 2)[orders[0][:16]]])


@pytest.mark.parametrize("max_index", [0, 1, 2, 239, 59_999, 65_536, 2**20 + 5, 10**12])
def test_index_shuffle_is_grains_bit_for_bit(max_index):
  """The vectorised cipher gives grain's own index shuffle for every position asked, whatever
  the block size (16 bits up to 40 here) and however many cycle-walking rounds a position needs."""
  import grain  # pylint: disable=g-import-not-at-top
  positions = np.unique(np.random.default_rng(max_index).integers(0, max_index + 1, 400))
  if max_index < 300:
    positions = np.arange(max_index + 1)
  for seed in (0, 7, 2**32 - 1):
    expected = [grain.experimental.index_shuffle(int(p), max_index=max_index, seed=seed, rounds=4)
                for p in positions]
    assert streaming.index_shuffle(positions, max_index, seed).tolist() == expected
  if max_index < 300:
    assert sorted(streaming.index_shuffle(positions, max_index, 7)) == positions.tolist()


def test_reader_reads_records_by_split_index_in_any_order_from_any_thread(tiny_records):
  """Records sought one by one across shard boundaries, in the order asked, repeats included; a
  second thread reads through readers of its own; keys past the split are an IndexError."""
  import concurrent.futures  # pylint: disable=g-import-not-at-top
  prepared = records.open_folder(tiny_records)
  images, labels = records.load_split(prepared, "train")
  reader = records.Reader(prepared.paths("train"))
  keys = np.array([479, 0, 240, 239, 241, 3, 3])  # Two shards of 240: both sides of the seam.
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    batches = list(pool.map(lambda k: records.decode_many(reader.read(k), (28, 28)),
                            [keys, keys[::-1]] * 4))
  for (got_images, got_labels), order in zip(batches, [keys, keys[::-1]] * 4):
    np.testing.assert_array_equal(got_images, images[order])
    np.testing.assert_array_equal(got_labels, labels[order])
  with pytest.raises(IndexError):
    reader.read(np.array([480]))


def test_grain_pipeline_refusals_are_one_line(tiny_mnist_dir, tiny_records):
  with pytest.raises(ConfigError, match="made by `python -m kd_jax.data.prepare"):
    tiny_config(tiny_mnist_dir, data__pipeline="grain")
  with pytest.raises(ConfigError, match="checkpoint.every_steps"):
    tiny_config(tiny_mnist_dir, checkpoint__every_steps=5)
  config = tiny_config(tiny_mnist_dir, data__pipeline="grain", data__name="mnist_pairs",
                       data__records_dir=str(tiny_records), model__input_shape=(28, 56),
                       model__num_classes=100)
  with pytest.raises(ConfigError, match="holds mnist, not config.data.name=mnist_pairs"):
    inputs.place(config, parallelism.make_mesh())
  with pytest.raises(DataError, match="is not a dataset prepared by kd_jax.data.prepare"):
    records.open_folder(tiny_mnist_dir)
  # grain's worker processes read absl flags: a library call without parsed flags is told so.
  with pytest.raises(ConfigError, match="grain_workers=2 starts grain worker processes"):
    streaming.check_grain_workers(2)


def _params(workdir):
  params, _, step = checkpointing.restore_variables(workdir,
                                                 parallelism.make_mesh(jax.devices()[:1]))
  return jax.device_get(params), step


def _records_of(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # Three trainings: the full suite's.
def test_population_members_with_their_own_streams_are_their_single_runs(tiny_mnist_dir,
                                                                         tiny_records, tmp_path):
  """Without data.shared_order each member streams its own order: member 1 of a population is
  the single run with seed 1, bitwise; with it, all members read member 0's stream."""
  common = dict(data__pipeline="grain", data__records_dir=str(tiny_records), data__jitter=1,
                num_epochs=2, model__hidden_sizes=(16,))
  trainer.train_and_evaluate(tiny_config(tiny_mnist_dir, members=2, **common), tmp_path / "pop")
  single_run = trainer.train_and_evaluate(tiny_config(tiny_mnist_dir, seed=1, **common),
                                          tmp_path / "one")
  trainer.train_and_evaluate(tiny_config(tiny_mnist_dir, members=2, data__shared_order=True,
                                         **common), tmp_path / "shared")
  population, _ = _params(tmp_path / "pop")
  single, _ = _params(tmp_path / "one")
  shared, _ = _params(tmp_path / "shared")
  for stacked, alone, one_order in zip(jax.tree.leaves(population), jax.tree.leaves(single),
                                       jax.tree.leaves(shared)):
    np.testing.assert_array_equal(stacked[1], alone[0])
    np.testing.assert_array_equal(stacked[0], one_order[0])  # Member 0's stream either way.
    assert not np.array_equal(stacked[1], one_order[1])  # Member 1 read another order.
  # The evaluate command streams the test split as training did: the same score.
  report = evaluate.evaluate_checkpoint(tmp_path / "one")
  assert report["test_errors"] == single_run["test_errors"]
  assert report["data"]["same_as_training"] and report["data_source"].startswith("records:")


@pytest.mark.slow  # Two trainings: the full suite's.
def test_steps_scanned_several_to_a_call_are_the_steps_one_to_a_call(tiny_mnist_dir, tiny_records,
                                                                     tmp_path):
  """data.steps_per_call=4 with checkpoints every 6 steps (calls of 4, 2, 4, 2, 3 steps in each
  15-step epoch) trains a population bit for bit as a call per step does, checkpoints included."""
  common = dict(data__pipeline="grain", data__records_dir=str(tiny_records), data__jitter=1,
                num_epochs=2, model__hidden_sizes=(16,), members=2, checkpoint__every_steps=6,
                checkpoint__max_to_keep=10)
  one = trainer.train_and_evaluate(tiny_config(tiny_mnist_dir, **common), tmp_path / "one")
  four = trainer.train_and_evaluate(tiny_config(tiny_mnist_dir, data__steps_per_call=4, **common),
                                    tmp_path / "four")
  assert one["test_errors"] == four["test_errors"]
  manager = checkpointing.open_manager(tmp_path / "four", read_only=True)
  assert manager.all_steps() == checkpointing.open_manager(tmp_path / "one",
                                                           read_only=True).all_steps()
  for a, b in zip(jax.tree.leaves(_params(tmp_path / "one")),
                  jax.tree.leaves(_params(tmp_path / "four"))):
    np.testing.assert_array_equal(a, b)
  assert _records_of(tmp_path / "one") == [dict(r, epoch_time_s=k["epoch_time_s"]) for r, k in
                                           zip(_records_of(tmp_path / "four"),
                                               _records_of(tmp_path / "one"))]


@pytest.mark.slow  # Four small convnet trainings.
def test_a_convnet_streams_a_step_a_call_unrolled_and_resumes_bitwise(tiny_mnist_dir,
                                                                      tiny_records, tmp_path,
                                                                      capsys):
  """A model with lax convolutions (the memory pipeline steps it on a CPU) streams one step a
  call, its members unrolled, whatever data.steps_per_call says: member 1 of a population is the
  single run with seed 1, bit for bit, and a run resumed from a checkpoint mid-epoch ends as the
  uninterrupted one."""
  common = dict(data__pipeline="grain", data__records_dir=str(tiny_records), data__jitter=1,
                num_epochs=2, model__name="kd_jax.benchmark:UserConvNet",
                checkpoint__every_steps=6, checkpoint__max_to_keep=10)
  trainer.train_and_evaluate(tiny_config(tiny_mnist_dir, members=2, **common), tmp_path / "pop")
  trainer.train_and_evaluate(tiny_config(tiny_mnist_dir, seed=1, data__steps_per_call=4,
                                         **common), tmp_path / "one")
  for stacked, alone in zip(jax.tree.leaves(_params(tmp_path / "pop")[0]),
                            jax.tree.leaves(_params(tmp_path / "one")[0])):
    np.testing.assert_array_equal(stacked[1], alone[0])
  resumed = tmp_path / "resumed"
  shutil.copytree(tmp_path / "one", resumed)
  for step in (30, 27):  # The end and step 12 of epoch 2: it resumes at step 6 of epoch 2.
    shutil.rmtree(resumed / "checkpoints" / str(step))
  capsys.readouterr()
  trainer.train_and_evaluate(tiny_config(tiny_mnist_dir, seed=1, **common), resumed)
  assert "from checkpoint step 21 (epoch 1, step 6 of epoch 2)" in capsys.readouterr().out
  assert final_digests(resumed) == final_digests(tmp_path / "one")


@pytest.mark.slow  # Two trainings: the full suite's.
def test_cached_teacher_logits_on_disk_equal_the_in_memory_cache(tiny_mnist_dir, tiny_records,
                                                                 tmp_path):
  teacher = tmp_path / "teacher"
  trainer.train_and_evaluate(tiny_config(tiny_mnist_dir, num_epochs=1, members=2,
                                         model__hidden_sizes=(24,)), teacher)
  config = tiny_config(tiny_mnist_dir, teacher, num_epochs=1, model__hidden_sizes=(16,),
                       data__pipeline="grain", data__records_dir=str(tiny_records),
                       data__train_classes=(1, 2, 3, 7))
  trainer.train_and_evaluate(config, tmp_path / "student")
  on_disk = np.load(tmp_path / "student" / rundir.TEACHER_LOGITS_FILE)

  mesh = parallelism.make_mesh()
  variables, teacher_config, _ = checkpointing.restore_variables(teacher, mesh)
  splits = data.load_dataset(tiny_config(tiny_mnist_dir, data__train_classes=(1, 2, 3, 7)).data)
  in_memory = np.asarray(runs.logits_of(
      models.model_from_config(teacher_config.model), variables,
      jax.numpy.asarray(splits.train_images), 40, mesh, 1))
  chosen = data.select_examples(make_tiny_mnist()["train_labels"], (1, 2, 3, 7))
  assert on_disk.shape == (480, 2, 10) and in_memory.shape == (len(chosen), 2, 10)
  np.testing.assert_array_equal(on_disk[chosen], in_memory)
  assert not on_disk[np.setdiff1d(np.arange(480), chosen)].any()  # Rows never read stay empty.


@pytest.mark.slow  # Two trainings: the full suite's.
def test_a_streamed_run_distils_through_features_with_an_adapter(tiny_mnist_dir, tiny_records,
                                                                tmp_path):
  """Feature terms run the teacher inside the streamed step: FitNets (its adapter trained and
  checkpointed) and RKD on the MLPs' hidden layers, a population of two."""
  teacher = tmp_path / "teacher"
  trainer.train_and_evaluate(tiny_config(tiny_mnist_dir, num_epochs=1,
                                         model__hidden_sizes=(24,)), teacher)
  config = tiny_config(tiny_mnist_dir, teacher, num_epochs=2, model__hidden_sizes=(16,),
                       members=2, data__pipeline="grain", data__records_dir=str(tiny_records),
                       terms__fitnets__weight=1.0, terms__fitnets__student=("hidden_0",),
                       terms__fitnets__teacher=("hidden_0",), terms__rkd__weight=1.0,
                       terms__rkd__student=("hidden_0",), terms__rkd__teacher=("hidden_0",))
  trainer.train_and_evaluate(config, tmp_path / "student")
  records = [json.loads(line) for line in
             (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
  for name in ("fitnets", "rkd"):
    losses = np.asarray(records[-1][f"train_{name}_loss"])
    assert losses.shape == (2,) and np.all(np.isfinite(losses)) and np.all(losses > 0)
  assert not (tmp_path / "student" / rundir.TEACHER_LOGITS_FILE).exists()  # Teacher in the step.


NUM_EPOCHS = 3
RESUME_ARGS = ["--config=configs/teacher.py", *TINY_OVERRIDES, f"--config.num_epochs={NUM_EPOCHS}",
               "--config.model.hidden_sizes=(32,)", "--config.checkpoint.every_steps=4",
               "--config.checkpoint.max_to_keep=30", *GRAIN]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bitwise(tiny_mnist_dir, tiny_records, tmp_path):
  """Killed right after the checkpoint at step 8 of epoch 2 (global step 23), the rerun restores
  the iterator and the epoch's metric sums there and ends as the uninterrupted run, bit for bit.
  The killed run scanned 3 steps to a call (calls of 3 and 1 between checkpoints every 4), its
  rerun and the reference one: the same steps either way."""
  args = [*RESUME_ARGS, f"--config.data.records_dir={tiny_records}"]
  reference, killed = tmp_path / "reference", tmp_path / "killed"
  run_command("train", f"--workdir={reference}", *args, mnist_dir=tiny_mnist_dir)
  result = run_command("train", f"--workdir={killed}", *args, "--config.data.steps_per_call=3",
                       mnist_dir=tiny_mnist_dir, check=False,
                       extra_env={"KD_JAX_FAULT": "kill:step_checkpoint:23"})
  assert result.returncode == -9, result.stderr[-2000:]
  assert checkpointing.open_manager(killed, read_only=True).latest_step() == 23
  resumed = run_command("train", f"--workdir={killed}", *args, mnist_dir=tiny_mnist_dir)
  assert "from checkpoint step 23 (epoch 1, step 8 of epoch 2)" in resumed.stdout
  params, step = _params(killed)
  ref_params, ref_step = _params(reference)
  assert step == ref_step == NUM_EPOCHS * 15
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
    np.testing.assert_array_equal(a, b)
  assert _records_of(killed) == [dict(r, epoch_time_s=k["epoch_time_s"])
                                 for r, k in zip(_records_of(reference), _records_of(killed))]


@pytest.mark.slow
def test_grain_workers_stream_the_same_batches_and_survive_a_group_sigterm(
    tiny_mnist_dir, tiny_records, tmp_path):
  """With a grain worker process, a SIGTERM to the whole process group (as SLURM sends it) after
  the checkpoint at step 19 stops the run at the next check (step 23) with exit 75 and no
  traceback: the worker ignores it. Resumed, it ends bitwise equal to a run with threads."""
  args = [*RESUME_ARGS, f"--config.data.records_dir={tiny_records}"]
  reference, run = tmp_path / "threads", tmp_path / "worker"
  run_command("train", f"--workdir={reference}", *args, mnist_dir=tiny_mnist_dir)
  command = [sys.executable, "-m", "kd_jax.train", f"--workdir={run}", *args,
             "--config.data.grain_workers=1"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", KD_JAX_MNIST_DIR=str(tiny_mnist_dir),
             XLA_FLAGS="--xla_force_host_platform_device_count=1",
             KD_JAX_FAULT="signal_group:step_checkpoint:19")
  stopped = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                           timeout=300, start_new_session=True)  # Its own process group.
  assert stopped.returncode == 75, stopped.stderr[-3000:]
  assert "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
  assert "saved checkpoint step 23 (step 8 of epoch 2)" in stopped.stderr.splitlines()[-1]
  env.pop("KD_JAX_FAULT")
  resumed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                           timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  for a, b in zip(jax.tree.leaves(_params(run)[0]), jax.tree.leaves(_params(reference)[0])):
    np.testing.assert_array_equal(a, b)


def test_grain_settings_belong_to_the_grain_pipeline(tiny_mnist_dir, tiny_records, tmp_path):
  for field, value in (("data__grain_workers", 2), ("data__prefetch", 8),
                       ("data__steps_per_call", 4)):
    with pytest.raises(ConfigError, match="with data.pipeline='memory'"):
      tiny_config(tiny_mnist_dir, **{field: value})
  with pytest.raises(ConfigError, match="mnist_pairs cannot be prepared"):
    prepare.prepare("mnist_pairs", tmp_path / "pairs")
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "notes.txt").write_text("mine")
  with pytest.raises(ConfigError, match="replaces only a prepared folder"):
    prepare.prepare("mnist", tmp_path / "mine", overwrite=True, mnist_dir=str(tiny_mnist_dir))
  assert (tmp_path / "mine" / "notes.txt").exists()


def test_shards_split_any_count_of_examples(tmp_path):
  """Shards hold consecutive examples, as evenly as can be, empty ones included."""
  images = np.arange(5 * 4, dtype=np.uint8).reshape(5, 2, 2)
  entry = records.write_split(tmp_path, "train", zip(images, range(5)), 5, num_shards=7)
  assert entry["num_shards"] == 7
  empty = records.write_split(tmp_path, "test", zip(images[:0], []), 0)
  records.write_metadata(tmp_path, "tfds:tiny", 5, "test", {"train": entry, "test": empty})
  prepared = records.open_folder(tmp_path)
  loaded, labels = records.load_split(prepared, "train")
  np.testing.assert_array_equal(loaded, images)
  assert labels.tolist() == [0, 1, 2, 3, 4]
  with pytest.raises(DataError, match="6 examples given, 5 announced|more examples given"):
    records.write_split(tmp_path / "x", "train", zip(np.zeros((6, 2, 2), np.uint8), range(6)), 5)


def _synthetic_examples(count, shape):
  image = np.full(shape, 7, np.uint8)
  for index in range(count):
    image[0, 0, 0] = index % 251
    yield image, index % 10


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_AS"), reason="needs RLIMIT_AS (Linux)")
@pytest.mark.slow
@pytest.mark.optimized  # 280,000 images: training dominates.
def test_dataset_larger_than_the_address_space_trains_streamed(tmp_path):
  """3.4 GB of images under a 3 GiB address-space cap (RLIMIT_AS, set in the child before it
  starts): the grain run trains and evaluates; the memory pipeline, which must hold the dataset,
  fails with the one-line out-of-memory error. The streamed run peaks at 1.3-1.4 GB of address
  space (VmPeak; opening ArrayRecord starts its 64-thread pool, 1.5 GB of it reserved): under the
  2 GiB cap used before, a thread start or a dispatch failed in most runs on a loaded 2-core
  machine."""
  shape, count = (64, 64, 3), 280_000  # 12 KiB each (compressed on disk: 7 identical bytes).
  folder = tmp_path / "big"
  splits = {"train": records.write_split(folder, "train", _synthetic_examples(count, shape),
                                         count, num_shards=4),
            "test": records.write_split(folder, "test", _synthetic_examples(500, shape), 500)}
  records.write_metadata(folder, "tfds:synthetic", 10, "synthetic", splits)
  cap = 3 * 2**30
  assert count * np.prod(shape) > cap
  command = [sys.executable, "-c",
             "import resource, runpy, sys; "
             f"resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap})); "
             "sys.argv = ['kd_jax.train'] + sys.argv[1:]; "
             "runpy.run_module('kd_jax.train', run_name='__main__')",
             "--config=configs/student.py", f"--config.data.records_dir={folder}",
             "--config.data.name=tfds:synthetic", f"--config.model.input_shape={shape}",
             "--config.model.hidden_sizes=(8,)", "--config.num_epochs=1",
             # Batches of 1,000 (12 MB of pixels, 49 MB as floats): headroom under the cap
             # (batches of 2,000 ran out of it in 1 of 3 full-suite runs).
             "--config.batch_size=1000", "--config.eval_batch_size=500"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", MALLOC_ARENA_MAX="2",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  # One batch a call, two read ahead (the defaults, 8 and 16, hold 24 batches).
  streamed = subprocess.run([*command, *GRAIN, "--config.data.steps_per_call=1",
                             "--config.data.prefetch=2", f"--workdir={tmp_path / 'streamed'}"],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert streamed.returncode == 0, streamed.stderr[-3000:]
  assert f"{count} examples" in streamed.stdout and "Done:" in streamed.stdout
  in_memory = subprocess.run([*command, f"--workdir={tmp_path / 'memory'}"], cwd=REPO_ROOT,
                             env=env, capture_output=True, text=True, timeout=600)
  assert in_memory.returncode != 0
  assert in_memory.stderr.strip().splitlines()[-1].startswith("kd_jax: error: out of memory"), (
      in_memory.stderr[-2000:])
