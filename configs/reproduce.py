"""The paper's MNIST experiments, as run by `python -m kd_jax.reproduce --profile PROFILE`.

Profiles (`configs/reproduce.py:quick` etc.):
  quick   a 2-core CPU in about 35 minutes: 10 teachers of 5 epochs, students of 8 epochs
          (the temperature sweeps 6), students on the 3% subset 60 epochs; 3 seeds per figure.
  cpu     every claim decided on a 2-core CPU, at the sample sizes of a power plan made from
          its first run (results/cpu_pilot: 3 teachers, 5 seeds for the table, 3 and 5 per T;
          122 min): six of configs/teacher_ensemble.py's 100-epoch teachers, students of 40
          epochs (the length at which the fidelity study's distilled students stopped
          improving), 8 seeds for the MNIST table and the student of the ensemble, the 2x300
          sweep 40 epochs with 10 seeds per T, the 2x30 sweep 60 with 40, 4 seeds elsewhere, the
          subset students 150 epochs; about 5 hours (the first run's stage times scaled by the
          members), resumable stage by stage.
  paper   the long schedules for an accelerator: 10 of configs/teacher.py's teachers (100 epochs),
          students 60 epochs, subset students 600.
  tiny    seconds, on a tiny IDX folder (the tests' end-to-end run).

The teacher stage is shared with every other study of the same teacher config: it trains once
under --teachers_dir.

`teacher` is the teacher population: `teacher.members` seeds, which are the ensemble of the
ensemble experiment; member `teacher_member` is "the teacher" of every other experiment. `student`
is the 2x800 distilled at T=20 on the un-jittered training set; the other experiments are
variations of it (see `kd_jax.reproduce.stage_configs`).
"""

import ml_collections

from kd_jax import config_lib
from kd_jax.configs import quick_teacher, teacher, teacher_ensemble


PROFILES = ("quick", "cpu", "paper", "tiny")
# The claims `kd_jax.paper.reproduce.claims` tests, by key (for `earlier_looks`).
CLAIMS = ("distilled_beats_alone", "ensemble_beats_members", "ensemble_student",
          "small_student_temperature", "large_student_alike", "mythical_paper_figure",
          "mythical_correction_helps", "only_classes_lowered", "regulariser")


def get_config(profile: str = "quick") -> ml_collections.ConfigDict:
  if profile not in PROFILES:
    raise ValueError(f"unknown profile {profile!r}: expected one of {PROFILES}")
  config = ml_collections.ConfigDict()
  config.profile = profile
  config.seeds = 3  # Members (seeds) behind every mean +- sd of a student.
  # Of the MNIST table's two students and the student of the ensemble, compared with them (0:
  # `seeds`).
  config.table_seeds = 0
  config.teacher_member = 0
  config.teacher = {"cpu": teacher_ensemble.get_config,
                    "paper": teacher.get_config}.get(profile, quick_teacher.get_config)()
  if profile != "cpu":
    config.teacher.members = 10
  config.student = config_lib.add_distillation(config_lib.base_config(), temperature=20.0,
                                               alpha=0.9)
  # Temperature versus student size (section 3): distilled and alone, every T with `seeds` seeds.
  config.temperature_sweep = ml_collections.ConfigDict()
  config.temperature_sweep.hidden_sizes = ((300, 300), (30, 30))
  config.temperature_sweep.temperatures = (1.0, 2.0, 2.5, 3.0, 4.0, 6.0, 8.0, 12.0, 20.0, 30.0)
  config.temperature_sweep.num_epochs = 0  # 0: the student's.
  config.temperature_sweep.num_epochs_by_size = ()  # One per hidden size, in place of num_epochs.
  # "All T above 8 alike" holds when every pair's 90% interval is within this many test errors.
  config.temperature_sweep.alike_margin = 10.0
  config.temperature_sweep.seeds_by_size = ()  # One per hidden size (empty: `seeds`).
  # Tests of each claim's data before this run's (claim key -> count, `reproduce.claims`): a claim
  # is tested at 0.05 / (earlier looks + 1), a Bonferroni split over looks (kd_jax.paper.power).
  config.earlier_looks = ml_collections.ConfigDict()
  # The power plan the sample sizes came from (scripts/power_plan.py), copied into results.json.
  config.power_plan = ""
  # Transfer sets without classes, and the bias correction tuned on this many held-out images.
  config.validation_size = 5000
  config.mythical_digit = 3
  config.only_classes = (7, 8)
  # Soft targets as a regulariser: a class-balanced subset of the training set (3% = 1,800).
  config.regulariser = ml_collections.ConfigDict()
  config.regulariser.subset = 1800
  config.regulariser.subset_seed = 0
  config.regulariser.num_epochs = 150
  config.regulariser.checkpoint_every = 25

  if profile == "quick":
    config.teacher.num_epochs = 5
    config.student.num_epochs = 8
    config.temperature_sweep.num_epochs = 6
    config.regulariser.num_epochs = 60
    config.regulariser.checkpoint_every = 20
  elif profile == "cpu":
    # Sample sizes from the power plan (scripts/power_plan.py on the first cpu run,
    # results/cpu_pilot; tests/test_power.py checks they reach it): 6 teachers for the ensemble
    # claim, 8 seeds for the MNIST table and the student of the ensemble, 10 per temperature
    # for 2x300 (the plan gives 9; a first, coarser
    # simulation gave 10, which the run was started with), 40
    # for 2x30, 4 for the class-omitting and subset students.
    config.teacher.members = 6
    # The first cpu run (results/cpu_pilot) tested every claim once; the student of the ensemble
    # twice (at 3 seeds, then at 5).
    config.earlier_looks = {key: 1 for key in CLAIMS}
    config.earlier_looks.ensemble_student = 2
    config.power_plan = "results/cpu_pilot/power_plan.json"
    config.seeds = 4
    config.table_seeds = 8
    config.student.num_epochs = 40
    config.temperature_sweep.num_epochs_by_size = (40, 60)  # 2x300, 2x30.
    config.temperature_sweep.seeds_by_size = (10, 40)
    config.regulariser.num_epochs = 150
    config.regulariser.checkpoint_every = 25
  elif profile == "paper":
    config.student.num_epochs = 60
    config.regulariser.num_epochs = 600
    config.regulariser.checkpoint_every = 100
  else:  # tiny: the tests' tiny IDX folder of 480 training and 200 test images.
    config.seeds = 2
    config.teacher.members = 2
    config.teacher.model.hidden_sizes = (32, 32)
    config.student.model.hidden_sizes = (16, 16)
    config.temperature_sweep.hidden_sizes = ((8, 8), (4, 4))
    config.temperature_sweep.temperatures = (1.0, 3.0, 12.0, 20.0)
    config.validation_size = 80
    config.regulariser.subset = 40
    config.regulariser.num_epochs = 6
    config.regulariser.checkpoint_every = 3
    for run in (config.teacher, config.student):
      run.num_epochs = 2
      run.batch_size = 20
      run.eval_batch_size = 40
      run.data.check_counts = False
  return config
