"""The paper's experiments: transfer-set selection, the bias correction and `kd_jax.reproduce`."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import make_tiny_mnist, run_command, snapshot
from kd_jax import (checkpointing, config_lib, configs, data, models, parallelism, population,
                    preemption, reporting, rundir)
from kd_jax.paper import bias_correction, fidelity, reproduce, stages, verdicts
from kd_jax.paper.figures import PAPER
from kd_jax.errors import CheckpointError, ConfigError, DataError


# ----------------------------------------------------------------------------- transfer sets


def test_select_examples_keeps_only_the_listed_classes():
  labels = np.arange(100) % 10
  kept = data.select_examples(labels, classes=(7, 8))
  assert set(labels[kept]) == {7, 8} and len(kept) == 20
  assert list(data.select_examples(labels)) == list(range(100))  # Empty: every class.
  assert 3 not in labels[data.select_examples(labels, classes=(0, 1, 2, 4, 5, 6, 7, 8, 9))]


def test_subset_is_class_balanced_fixed_by_its_seed_and_within_the_classes():
  labels = np.random.default_rng(0).integers(0, 10, size=5000)
  subset = data.select_examples(labels, subset_size=1800, seed=3)
  assert len(subset) == len(set(subset)) == 1800
  assert list(np.bincount(labels[subset], minlength=10)) == [180] * 10
  assert list(subset) == list(data.select_examples(labels, subset_size=1800, seed=3))
  assert set(subset) != set(data.select_examples(labels, subset_size=1800, seed=4))
  uneven = data.select_examples(labels, classes=(1, 2, 3), subset_size=11, seed=0)
  assert list(np.bincount(labels[uneven], minlength=10)[1:4]) == [4, 4, 3]
  with pytest.raises(DataError, match="only"):
    data.select_examples(labels, classes=(5,), subset_size=5000)


def test_only_the_training_split_is_filtered(tiny_mnist_dir):
  config = config_lib.base_config()
  config.data.check_counts = False
  config.data.validation_size = 80
  config.data.train_classes = (7, 8)
  splits = data.load_dataset(config.data, str(tiny_mnist_dir))
  assert set(splits.train_labels) == {7, 8}
  assert set(splits.validation_labels) == set(range(10)) == set(splits.test_labels)
  assert len(splits.validation_labels) == 80


def test_bad_selection_fields_are_config_errors():
  for field, value in (("train_classes", (3, 3)), ("train_classes", (10,)),
                       ("train_subset", -1)):
    config = config_lib.base_config()
    config.data[field] = value
    with pytest.raises(ConfigError, match=f"data.{field}"):
      config_lib.validate(config)


def test_runs_saved_before_the_selection_fields_resume_unchanged():
  saved = config_lib.base_config()
  for field in ("train_classes", "train_subset", "subset_seed"):
    del saved.data[field]
  assert rundir.config_differences(saved, config_lib.base_config()) == []
  changed = config_lib.base_config()
  changed.data.train_subset = 100
  assert rundir.config_differences(saved, changed) == ["data.train_subset"]


def test_hard_label_runs_saved_before_a_distillation_field_resume_unchanged():
  """A study's hard-label students carry the distillation fields (teacher_workdir=""): one saved
  before a field was added is still the same run, not retrained."""
  current = config_lib.add_distillation(config_lib.base_config())
  saved = current.copy_and_resolve_references()
  del saved["teacher_dropout_masks"], saved["teacher_dropout_seed"]
  assert rundir.config_differences(saved, current) == []
  current.teacher_dropout_masks = 4
  assert rundir.config_differences(saved, current) == ["teacher_dropout_masks"]


# ----------------------------------------------------------------------------- bias correction


def test_offset_search_finds_the_bias_that_was_taken_away():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 10, size=400)
  logits = rng.normal(0, 0.3, size=(2, 400, 10)) + 3 * np.eye(10)[labels]
  logits[0, :, 3] -= 4.0  # Member 0 learnt class 3 with too low a bias; member 1 did not.
  offsets, errors = bias_correction.search_offsets(jnp.asarray(logits, jnp.float32),
                                                   jnp.asarray(labels), (3,))
  # Member 0's 3s need an offset above ~1 (their 3 logit sits 1 below the rest) and below ~4
  # (where the 3 logit overtakes every other class's +3); ties go to the smallest |offset|.
  assert 1.0 < offsets[0] < 4.0 and offsets[1] == 0.0
  assert list(errors) == [0, 0]
  shifted = bias_correction.shift_output_bias(
      {"output": {"bias": jnp.zeros((2, 10))}, "hidden_0": {"bias": jnp.ones((2, 4))}},
      (7, 8), jnp.asarray([-7.6, 1.0]))
  np.testing.assert_allclose(shifted["output"]["bias"][:, 7:9], [[-7.6, -7.6], [1.0, 1.0]])
  assert float(jnp.abs(shifted["output"]["bias"][:, :7]).sum()) == 0.0
  assert float(shifted["hidden_0"]["bias"].sum()) == 8.0


@pytest.mark.slow
def test_correction_is_tuned_without_the_test_set(tiny_reproduction, tiny_mnist_dir, tmp_path):
  """Same training data, a scrambled test set: the same offsets and validation figures."""
  root, _ = tiny_reproduction
  arrays = make_tiny_mnist()
  rng = np.random.default_rng(1)
  arrays["test_images"] = rng.integers(0, 256, arrays["test_images"].shape).astype(np.uint8)
  arrays["test_labels"] = rng.permutation(arrays["test_labels"])
  other = tmp_path / "other_test_set"
  data.write_idx_folder(other, arrays)
  report = bias_correction.correct_run(root / "mythical" / "distilled", tmp_path / "corrected",
                                       (3,), mnist_dir=str(other))
  original = json.loads((root / "mythical" / "corrected" / "bias_correction.json").read_text())
  for key in ("offsets", "validation_errors_before", "validation_errors_after"):
    assert report[key] == original[key]
  assert report["tuned_on"] == "validation" and report["validation_examples"] == 80
  # The corrected run is a run: its biases moved by exactly the offsets, nothing else.
  mesh = parallelism.make_mesh()
  before = checkpointing.restore_variables(root / "mythical" / "distilled", mesh)[0]["params"]
  after = checkpointing.restore_variables(tmp_path / "corrected", mesh)[0]["params"]
  moved = np.asarray(after["output"]["bias"] - before["output"]["bias"])
  np.testing.assert_allclose(moved[:, 3], report["offsets"], atol=1e-6)
  assert np.abs(np.delete(moved, 3, axis=1)).max() == 0.0
  np.testing.assert_array_equal(after["hidden_0"]["kernel"], before["hidden_0"]["kernel"])


@pytest.mark.slow
def test_correction_refuses_a_run_without_a_validation_split(tiny_reproduction, tmp_path):
  root, _ = tiny_reproduction
  with pytest.raises(ConfigError, match="never on the test set"):
    bias_correction.correct_run(root / "table" / "distilled", tmp_path / "corrected", (3,))
  assert not (tmp_path / "corrected").exists()


# ----------------------------------------------------------------------------- reproduce


@pytest.mark.slow
def test_reproduce_runs_every_experiment_and_writes_the_report(tiny_reproduction):
  root, stdout = tiny_reproduction
  config = reproduce.load_config(None, "tiny")  # What the fixture ran; PAPER: the paper's figures.
  results = json.loads((root / "results.json").read_text())
  experiments = results["experiments"]
  assert set(experiments) == {"table", "temperature", "ensemble", "mythical", "only_classes",
                              "regulariser"}
  table = experiments["table"]
  table_seeds = config.table_seeds or config.seeds
  assert table["alone_errors"]["n"] == table["distilled_errors"]["n"] == table_seeds
  assert table["paper"] == PAPER["table"]
  assert set(experiments["temperature"]["sizes"]) == {
      reproduce.size_tag(sizes) for sizes in config.temperature_sweep.hidden_sizes}
  temperatures = tuple(float(t) for t in config.temperature_sweep.temperatures)
  for sweep in experiments["temperature"]["sizes"].values():
    assert set(sweep["by_temperature"]) == {str(t) for t in temperatures}
    assert all(s["n"] == config.seeds for s in sweep["by_temperature"].values())
    assert sweep["best_temperature"] in temperatures
  ensemble = experiments["ensemble"]
  assert ensemble["member_errors"]["n"] == config.teacher.members
  assert ensemble["paper"] == PAPER["ensemble"]
  mythical = experiments["mythical"]
  assert mythical["class_test_examples"] == np.sum(  # The tiny test set's examples of the digit.
      make_tiny_mnist()["test_labels"] == config.mythical_digit)
  assert mythical["corrected_paper"]["offsets"] == [PAPER["mythical"]["offset"]] * config.seeds
  assert experiments["only_classes"]["corrected_paper"]["offsets"] == [
      PAPER["only_classes"]["offset"]] * config.seeds
  regulariser = experiments["regulariser"]
  assert regulariser["subset_size"] == config.regulariser.subset
  assert all(1 <= e <= config.regulariser.num_epochs
             for e in regulariser["hard_subset"]["early_stopping_epochs"])
  # The subset runs trained on the class-balanced subset, in whole batches.
  records = [json.loads(line) for line in
             (root / "regulariser" / "soft_subset" / "metrics.jsonl").read_text().splitlines()]
  steps_per_epoch = config.regulariser.subset // config.student.batch_size
  assert [r["step"] for r in records] == [
      steps_per_epoch * e for e in range(1, config.regulariser.num_epochs + 1)]
  # Every claim, by key: a verdict from its tests at the last epoch and over the last 10% of
  # epochs (the bias corrections: final checkpoints only), at the level of its looks.
  claims = {c["key"]: c for c in results["claims"]}
  assert tuple(claims) == configs.module("reproduce").CLAIMS
  assert results["machine"]["host_cores"] >= 1
  for claim in claims.values():
    assert claim["verdict"] in (verdicts.HOLDS, verdicts.FAILS, verdicts.UNDECIDED)
    assert claim["alpha"] == verdicts.ALPHA  # The tiny profile has no earlier looks.
    windows = ["last_epoch"] + (["last_10_percent"] if claim["last_10_percent"] else [])
    assert (len(windows) == 1) == (claim["window"] == reproduce.FINAL_ONLY)
    for window in windows:
      assert 0 <= claim[window]["p"] <= 1 and claim[window]["verdict"] in (
          verdicts.HOLDS, verdicts.FAILS, verdicts.UNDECIDED)
    if claim["last_10_percent"] and (claim["last_epoch"]["verdict"]
                                     != claim["last_10_percent"]["verdict"]):
      assert claim["verdict"] == verdicts.UNDECIDED
  assert set(results["code_versions"]) == {*reproduce.training_stages(config, root),
                                           *reproduce.correction_stages(config)}
  # The tiny profile's sizes come from no plan, so it plans no further run (tests/test_power.py).
  assert results["plan"] is None and results["to_decide"] == {}
  table_claim = claims["distilled_beats_alone"]
  assert table_claim["last_epoch"]["n"] == [table_seeds, table_seeds]
  assert table_claim["last_epoch"]["difference"] == pytest.approx(
      table["distilled_errors"]["mean"] - table["alone_errors"]["mean"])
  assert claims["small_student_temperature"]["last_epoch"]["test"] == "Welch"
  assert "with 2x8, all temperatures above 8" in claims["large_student_alike"]["claim"]
  assert claims["mythical_paper_figure"]["last_epoch"]["unit"] == "accuracy"
  markdown = (root / "RESULTS.md").read_text()
  for heading in ("## 1. The MNIST table", "## 2. Temperature", "## 3. Ensembles",
                  "## 4. The mythical digit", "## 5. Only 7 and 8", "## 6. Soft targets"):
    assert heading in markdown
  assert f"| {PAPER['table']['distilled_errors']} |" in markdown  # The paper's figure beside ours.
  assert ("| claim | verdict | level | at the last epoch | over the last 10% of epochs |"
          in markdown and reproduce.FINAL_ONLY in markdown and "### Sample sizes" in markdown)
  for plot in ("temperature.png", "regulariser.png", "curves.png"):
    assert (root / plot).stat().st_size > 0
  assert set(json.loads((root / "timings.json").read_text())) == set(results["wall_time_s"]) == {
      *reproduce.training_stages(config, root), *reproduce.correction_stages(config)}
  assert "claims hold" in stdout


@pytest.mark.slow
def test_reproduce_resumes_without_retraining(tiny_reproduction, tiny_mnist_dir):
  root, _ = tiny_reproduction
  checkpoints = {p: t for p, t in snapshot(root).items() if "checkpoints" in str(p)}
  result = run_command("reproduce", "--config=configs/reproduce.py:tiny", f"--workdir={root}",
                       mnist_dir=tiny_mnist_dir)
  assert result.stdout.count("is finished; skipped") == len(
      reproduce.training_stages(reproduce.load_config(None, "tiny"), root))
  assert "Bias correction" not in result.stdout  # Finished corrections are kept as they are.
  assert {p: t for p, t in snapshot(root).items() if "checkpoints" in str(p)} == checkpoints


def test_verdict_windows_are_the_last_epoch_and_the_last_tenth_of_the_epochs(tmp_path):
  config = config_lib.base_config()
  config.num_epochs, config.members = 20, 2
  rundir.save_config(tmp_path, config, population.members(config))

  def write(epochs):
    (tmp_path / rundir.METRICS_FILE).write_text("".join(
        json.dumps({"epoch": e, "step": 10 * e, "test_errors": [100 - e, 200 - e],
                    "ensemble_test_errors": 50 + e}) + "\n" for e in epochs))

  write(range(1, 21))
  np.testing.assert_array_equal(stages.curve_errors(tmp_path, tail=False), [80, 180])
  np.testing.assert_array_equal(stages.curve_errors(tmp_path, tail=True), [80.5, 180.5])
  assert stages.curve_errors(tmp_path, True, "ensemble_test_errors") == [69.5]
  write([*range(1, 19), 20])  # Epoch 19's line lost: the window stays epochs 19-20.
  np.testing.assert_array_equal(stages.curve_errors(tmp_path, tail=True), [80, 180])
  write(range(1, 20))  # The last line lost: the last one written stands for it.
  np.testing.assert_array_equal(stages.curve_errors(tmp_path, tail=False), [81, 181])


def test_a_stage_names_the_code_that_worked_on_it_not_code_that_was_refused(tmp_path):
  """A refusal (here a workdir holding another config) trains nothing: its code version is not
  the stage's, though its seconds are counted; a stage stopped mid-run or finished names it."""
  with pytest.raises(CheckpointError):
    with stages.timed_stage(tmp_path, "refused"):
      raise CheckpointError("runs/x already holds a run with a different config")
  with pytest.raises(KeyboardInterrupt):
    with stages.timed_stage(tmp_path, "stopped"):
      raise KeyboardInterrupt
  with stages.timed_stage(tmp_path, "finished"):
    pass
  assert set(stages.code_versions(tmp_path)) == {"stopped", "finished"}
  assert set(reporting.stage_timings(tmp_path)) == {"refused", "stopped", "finished"}


def test_a_shared_teacher_link_is_kept_or_refused_never_silently_moved(tmp_path):
  teacher = config_lib.base_config()
  store, root = tmp_path / "teachers", tmp_path / "study"
  directory = stages.link_stage(root, "teachers", teacher, store)
  assert directory == store / f"teacher-{rundir.config_digest(teacher)}"
  assert (root / "teachers").is_symlink() and not (root / "teachers").readlink().is_absolute()
  directory.mkdir(parents=True)
  rundir.save_config(directory, teacher, population.members(teacher))  # As training does.
  moved = tmp_path / "elsewhere"  # Another default store (a moved study): the link is kept.
  assert stages.link_stage(root, "teachers", teacher, moved) == directory.resolve()
  other = config_lib.base_config()
  other.num_epochs = 7
  with pytest.raises(ConfigError, match="a run of another config"):
    stages.link_stage(root, "teachers", other, store)
  # --overwrite starts the study over: the link moves to the other config's run; the first
  # teacher is left where it is for whoever shares it.
  new = stages.link_stage(root, "teachers", other, store, overwrite=True)
  assert new != directory and (root / "teachers").resolve() == new.resolve()
  assert (directory / rundir.CONFIG_FILE).exists()
  assert stages.shared_stage_dir(store, teacher) == directory  # Found by its config.


@pytest.mark.slow
def test_a_second_study_of_the_same_teacher_trains_no_teacher(tiny_reproduction, tiny_mnist_dir):
  """The fidelity study's tiny teacher is the tiny reproduction's: it finds that run under the
  shared teachers folder (ROOT/../teachers) and trains no teacher of its own."""
  root, _ = tiny_reproduction
  shared = (root / "teachers").resolve()
  assert (root / "teachers").is_symlink() and shared.parent == (root.parent / "teachers").resolve()
  checkpoints = {p: t for p, t in snapshot(shared).items() if "checkpoints" in str(p)}
  study = root.parent / "fidelity"
  result = run_command("fidelity", "--profile=tiny", f"--workdir={study}",
                       mnist_dir=tiny_mnist_dir)
  assert (study / "teachers" / "shared").resolve() == shared
  assert f"{shared} is finished; skipped." in result.stdout  # Both sides resolved.
  teacher = reproduce.load_config(None, "tiny").teacher
  assert f"Training {models.describe(teacher.model)}" not in result.stdout  # Never trained.
  assert "teachers/shared" not in json.loads((study / "timings.json").read_text())
  assert {p: t for p, t in snapshot(shared).items() if "checkpoints" in str(p)} == checkpoints
  # The dropout-mask cell distilled from several masks per image of each of the teachers.
  tiny = fidelity.load_config("tiny")
  masks = dict(tiny.cells.dropout_masks)["teacher_dropout_masks"]
  assert f"under {masks} dropout masks each" in result.stdout
  results = json.loads((study / "results.json").read_text())
  assert results["cells"]["dropout_masks"][0]["test_errors"]["n"] == tiny.seeds


@pytest.mark.slow
def test_profiles_and_their_bad_uses(tmp_path):
  for profile in ("quick", "cpu", "paper", "tiny"):
    config = reproduce.load_config(None, profile)
    for name, stage in reproduce.training_stages(config, tmp_path).items():
      config_lib.validate(stage)
      if name == "teachers":
        assert stage.members == config.teacher.members
      elif name.startswith("table/") or name == "ensemble/distilled":
        assert stage.members == (config.table_seeds or config.seeds)
      elif not name.startswith("temperature/"):
        assert stage.members == config.seeds
  cpu_config = reproduce.load_config(None, "cpu")
  cpu = reproduce.training_stages(cpu_config, tmp_path)
  sweep = cpu_config.temperature_sweep
  assert len(set(sweep.seeds_by_size)) > 1 and len(set(sweep.num_epochs_by_size)) > 1
  for sizes, seeds, epochs in zip(sweep.hidden_sizes, sweep.seeds_by_size,
                                  sweep.num_epochs_by_size):  # Each size its own, in order.
    for stage in (f"temperature/{reproduce.size_tag(sizes)}",
                  f"temperature/{reproduce.size_tag(sizes)}_alone"):
      assert (cpu[stage].members, cpu[stage].num_epochs) == (seeds, epochs)
  # configs/teacher_ensemble.py's teachers, as many as the power plan asks for.
  assert cpu["teachers"].to_dict() == configs.get("teacher_ensemble",
                                                  members=cpu_config.teacher.members).to_dict()
  quick = reproduce.load_config(None, "quick")
  runs = reproduce.training_stages(quick, tmp_path)
  assert runs["regulariser/hard_subset"].data.train_subset == quick.regulariser.subset
  assert runs["mythical/distilled"].data.train_classes == tuple(
      c for c in range(data.NUM_CLASSES) if c != quick.mythical_digit)
  assert runs["table/distilled"].data.jitter == 0  # The paper's un-jittered transfer set.
  assert runs["ensemble/distilled"].teacher_members == ()
  result = run_command("reproduce", "--config=configs/reproduce.py:tiny", "--profile=paper",
                       f"--workdir={tmp_path}", check=False)
  assert result.returncode == 2 and "contradicts" in result.stderr
  assert not list(tmp_path.iterdir())


def test_a_stage_stopped_by_a_signal_keeps_its_time(tmp_path, monkeypatch):
  def stopped(config, workdir, overwrite):  # As a stage does after saving on SIGTERM.
    raise preemption.Preempted("SIGTERM: saved checkpoint step 8 (epoch 2 of 5).")

  monkeypatch.setattr(stages.api, "train", stopped)
  with pytest.raises(preemption.Preempted):
    stages.run_stages({"first": config_lib.base_config(), "second": config_lib.base_config()},
                         tmp_path)
  timings = json.loads((tmp_path / "timings.json").read_text())
  assert set(timings) == {"first"} and timings["first"] >= 0  # The second never started.
