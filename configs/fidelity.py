"""The distillation-gap ablation (issue 11), as run by `python -m kd_jax.fidelity --profile P`.

Every cell is the paper's distilled 2x800 (T = 20, alpha = 0.9, un-jittered transfer set, Adam
with a cosine schedule) with a few fields changed, `seeds` seeds each; `teacher` names the teacher
stage it distils from (default `config.teacher`), `teacher_workdir=""` trains on hard labels.
Cells whose transfer set is jittered (`data.jitter`) depart from the paper's protocol: the teacher
then relabels every jittered view inside the step.

Profiles:
  cpu   a 2-core CPU in about 40 minutes: the quick teacher (10 epochs, lighter dropout and
        jitter than the paper's), students of 8 epochs (16 for the longer cells), T x alpha
        without the paper's alpha (its cell is `paper`).
        Orders ingredients; absolute errors stay far above the paper's.
  cpu_long  a 2-core CPU in about 2 hours: teachers of 100 epochs with the paper's 2-px jitter,
        dropout 0.1/0.3 (to converge in CPU time; the cells' teacher) and the 2012 recipe's
        0.2/0.5 with max-norm sqrt(15) (cell teacher_sqrt15), students of 40 epochs (80 for
        jittered_relabelled_longer, 200 for jittered_relabelled_longest: 80 more minutes), the
        cells that decide the question: paper, alone (40 and 80 epochs, the references of the
        transfer fractions), jittered_relabelled, alone_jittered; then
        an ensemble of three of our teachers (57 min) for paper_ensemble (40 and 80
        epochs: 10 and 20 min) and jittered_relabelled_ensemble (about 1 hour).
  decisive  one more attack on the paper's protocol, in about 12 minutes on a 2-core CPU once the
        teachers exist: the reproduction's `cpu` teachers (configs/teacher_ensemble.py, shared with
        `kd_jax.reproduce --profile cpu`: trained once), the 2x800 distilled for 40 epochs from
        member 2 (seed 2, 66 errors) in eval mode (`paper`) and with its tempered probabilities
        averaged over 10 dropout masks per image (`dropout_masks`: dropout trains an ensemble of
        weight-sharing models, so average that ensemble).
  gpu   the long schedules the paper's numbers need: teachers 300 epochs, students 150, 500 and
        1500 epochs.
  tiny  seconds, on the tests' tiny IDX folder; its teacher is the tiny reproduction's, so a study
        after `kd_jax.reproduce --profile tiny` trains no teacher.
"""

import ml_collections

from kd_jax import config_lib
from kd_jax.configs import paper_teacher, quick_teacher, reproduce, teacher, teacher_ensemble

PROFILES = ("cpu", "cpu_long", "decisive", "gpu", "tiny")


def get_config(profile: str = "cpu") -> ml_collections.ConfigDict:
  if profile not in PROFILES:
    raise ValueError(f"unknown profile {profile!r}: expected one of {PROFILES}")
  config = ml_collections.ConfigDict()
  config.profile = profile
  config.seeds = 3
  # Teachers: the 2012 dropout recipe's max-norm sqrt(15) (the paper's teacher), and ours (4).
  config.teachers = ml_collections.ConfigDict()
  config.teachers.sqrt15 = paper_teacher.get_config()
  config.teachers.sqrt15.model.max_norm = 15**0.5
  config.teachers.maxnorm4 = paper_teacher.get_config()
  config.teacher = "sqrt15"
  config.student = config_lib.add_distillation(config_lib.base_config(), temperature=20.0,
                                               alpha=0.9)
  long_epochs = {"cpu": 16, "cpu_long": 80, "decisive": 80, "gpu": 500, "tiny": 3}[profile]
  # name -> ((field, value), ...) changed from `student`; "teacher" picks a teacher stage.
  config.cells = ml_collections.ConfigDict()
  config.cells.paper = ()
  config.cells.alone = (("teacher_workdir", ""),)
  config.cells.alone_jittered = (("teacher_workdir", ""), ("data.jitter", 2))
  config.cells.constant_lr = (("lr_schedule", "constant"),)
  config.cells.sgd_momentum = (("optimizer", "sgd_momentum"), ("learning_rate", 0.1),
                               ("lr_schedule", "constant"))
  config.cells.longer = (("num_epochs", long_epochs),)
  config.cells.alone_longer = (("teacher_workdir", ""), ("num_epochs", long_epochs))
  config.cells.jittered_relabelled = (("data.jitter", 2),)
  config.cells.jittered_relabelled_longer = (("data.jitter", 2), ("num_epochs", long_epochs))
  config.cells.t_alpha = (("sweep.temperature", (4.0, 8.0, 20.0)),
                          ("sweep.alpha", (0.5, 0.9, 1.0)))
  config.cells.no_t_squared = (("soft_t_squared", False),)
  config.cells.teacher_maxnorm4 = (("teacher", "maxnorm4"),)

  if profile == "cpu":  # 40 minutes on a 2-core EPYC at ~5 s per member-epoch of the 2x800.
    del config.cells["jittered_relabelled_longer"]
    # The paper's teacher needs hundreds of epochs (after 8 it has 161 errors, worse than the
    # student alone); the quick teacher (dropout 0.1/0.3, 1-px jitter) gets ~105 in 10.
    config.teachers = ml_collections.ConfigDict({"quick": quick_teacher.get_config()})
    config.teacher = "quick"
    config.student.num_epochs = 8
    del config.cells["teacher_maxnorm4"]  # A teacher comparison needs the gpu profile.
    config.cells.t_alpha = (("sweep.temperature", (4.0, 8.0, 20.0)), ("sweep.alpha", (0.5, 1.0)))
  elif profile == "cpu_long":  # About 2 hours on a 2-core EPYC.
    config.teachers.sqrt15.num_epochs = 100
    ensemble = teacher.get_config()
    ensemble.members = 3  # Seeds 0, 1, 2 (member 0 is the cpu_long teacher); the students
    # distil from their averaged tempered probabilities (teacher_ensemble "arithmetic").
    config.teachers = ml_collections.ConfigDict({"cpu_long": teacher.get_config(),
                                                 "ensemble3": ensemble,
                                                 "sqrt15": config.teachers.sqrt15})
    config.teacher = "cpu_long"
    config.student.num_epochs = 40
    for cell in list(config.cells):
      if cell not in ("paper", "alone", "alone_longer", "jittered_relabelled",
                      "jittered_relabelled_longer", "alone_jittered"):
        del config.cells[cell]
    config.cells.teacher_sqrt15 = (("teacher", "sqrt15"),)
    # The jittered recipe from the single teacher at 2.5x the epochs (80: 79.0 errors; 200: 77.7).
    config.cells.jittered_relabelled_longest = (("data.jitter", 2), ("num_epochs", 200))
    # A better teacher transferred more (76 -> 107, 70 -> 97): three of ours, averaged.
    config.cells.paper_ensemble = (("teacher", "ensemble3"),)
    config.cells.paper_ensemble_longer = (("teacher", "ensemble3"), ("num_epochs", 80))
    config.cells.jittered_relabelled_ensemble = (("data.jitter", 2), ("num_epochs", 80),
                                                 ("teacher", "ensemble3"))
  elif profile == "decisive":
    config.teachers = ml_collections.ConfigDict({"ensemble3": teacher_ensemble.get_config()})
    config.teacher = "ensemble3"
    config.student.num_epochs = 40
    config.cells = ml_collections.ConfigDict()
    # Member 2 (66 test errors; members 0 and 1 had 74) is the one teacher of at most 70 errors
    # the question asks for. Chosen by its test errors, it is the same teacher in both cells, so
    # the comparison between them is not biased by the choice.
    config.cells.paper = (("teacher_members", (2,)),)
    config.cells.dropout_masks = (("teacher_members", (2,)), ("teacher_dropout_masks", 10))
  elif profile == "gpu":
    for gpu_teacher in (config.teachers.sqrt15, config.teachers.maxnorm4):
      gpu_teacher.num_epochs = 300
    config.student.num_epochs = 150
    config.cells.longest = (("num_epochs", 1500),)
    config.cells.alone_longest = (("teacher_workdir", ""), ("num_epochs", 1500))
  else:  # tiny: the tests' tiny IDX folder of 480 training and 200 test images; fewer cells.
    config.seeds = 2
    config.cells.t_alpha = (("sweep.temperature", (4.0, 20.0)), ("sweep.alpha", (0.9,)))
    for cell in ("jittered_relabelled", "jittered_relabelled_longer", "constant_lr", "longer",
                 "alone_longer", "no_t_squared", "teacher_maxnorm4", "sgd_momentum"):
      del config.cells[cell]
    config.cells.dropout_masks = (("teacher_dropout_masks", 3),)
    # The tiny reproduction's teachers, so the study shares them (tests/test_reproduce.py).
    config.teachers = ml_collections.ConfigDict({"shared": reproduce.get_config("tiny").teacher})
    config.teacher = "shared"
    config.student.num_epochs = 2
    config.student.batch_size = 20
    config.student.eval_batch_size = 40
    config.student.data.check_counts = False
    config.student.model.hidden_sizes = (16, 16)
  return config
