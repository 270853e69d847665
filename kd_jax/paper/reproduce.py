"""Every MNIST claim of the paper from one command: ours (mean ± sd over seeds) beside the paper's.

  python -m kd_jax.reproduce --profile quick --workdir runs/reproduce

Each stage is an ordinary run directory under RUN/ (teachers/, table/alone/, ...; see
`training_stages` and `correction_stages`), so a killed command resumes every stage where it
stopped and reports finished ones without retraining; RUN/teachers links to the teacher run shared
by every study of the same teacher config (`stages.shared_stage_dir`, under --teachers_dir). At the
end it evaluates every stage, tests each of the paper's claims on the seeds (`claim_verdicts`:
holds, does not hold, or not decided at this length) and writes RUN/results.json, RUN/RESULTS.md,
RUN/temperature.png, RUN/regulariser.png and RUN/curves.png.
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Any

import ml_collections
import numpy as np
from absl import flags

from kd_jax import cli, config_fields, configs, data, models, plots, population, reporting, rundir
from kd_jax.paper import bias_correction, power, report, stages, verdicts
from kd_jax.paper.figures import PAPER
from kd_jax.errors import ConfigError

# The paper's own figures (Hinton, Vinyals & Dean 2015), typed in; everything else is measured.
# ----------------------------------------------------------------------------- stages


def size_tag(hidden_sizes) -> str:
  """'2x300' for (300, 300); '784-...' style for unequal layers."""
  sizes = tuple(hidden_sizes)
  return f"{len(sizes)}x{sizes[0]}" if len(set(sizes)) == 1 else "-".join(map(str, sizes))


def by_size(config: ml_collections.ConfigDict, field: str, default: int) -> list[int]:
  """temperature_sweep.<field>_by_size: one number per hidden size of the sweep (0 or an empty
  tuple: `default`)."""
  sizes = config.temperature_sweep.hidden_sizes
  values = list(config.temperature_sweep.get(f"{field}_by_size") or [0] * len(sizes))
  if len(values) != len(sizes):
    raise ConfigError(f"temperature_sweep.{field}_by_size={tuple(values)} needs one entry per "
                      f"hidden size ({len(sizes)}).")
  return [v or default for v in values]


def sweep_epochs(config: ml_collections.ConfigDict) -> list[int]:
  """The temperature sweep's epochs for each of its hidden sizes."""
  return by_size(config, "num_epochs", config.temperature_sweep.get("num_epochs")
                 or config.student.num_epochs)


def training_stages(config: ml_collections.ConfigDict,
                    root: pathlib.Path) -> dict[str, ml_collections.ConfigDict]:
  """Every run to train, in the order to train them, by stage name (its directory under
  `root`)."""
  teachers = str(root / "teachers")

  def student(distil: bool = True, validation: bool = False,
              seeds: int = 0) -> ml_collections.ConfigDict:
    run = config.student.copy_and_resolve_references()
    run.members = seeds or config.seeds
    run.teacher_workdir = teachers if distil else ""
    run.teacher_members = (config.teacher_member,)
    run.data.validation_size = config.validation_size if validation else 0
    return run

  table_seeds = config.get("table_seeds", 0)
  stages = {"teachers": config.teacher.copy_and_resolve_references(),
            "table/alone": student(distil=False, seeds=table_seeds),
            "table/distilled": student(seeds=table_seeds)}
  stages["ensemble/distilled"] = student(seeds=table_seeds)
  stages["ensemble/distilled"].teacher_members = ()  # All teachers: their averaged targets.
  for sizes, epochs, seeds in zip(config.temperature_sweep.hidden_sizes, sweep_epochs(config),
                                  by_size(config, "seeds", config.seeds)):
    sweep, alone = student(seeds=seeds), student(distil=False, seeds=seeds)
    sweep.sweep.temperature = tuple(config.temperature_sweep.temperatures)
    sweep.model.hidden_sizes = alone.model.hidden_sizes = tuple(sizes)
    sweep.num_epochs = alone.num_epochs = epochs
    stages[f"temperature/{size_tag(sizes)}"] = sweep
    stages[f"temperature/{size_tag(sizes)}_alone"] = alone
  stages["mythical/distilled"] = student(validation=True)
  stages["mythical/distilled"].data.train_classes = tuple(
      c for c in range(data.NUM_CLASSES) if c != config.mythical_digit)
  stages["only_classes/distilled"] = student(validation=True)
  stages["only_classes/distilled"].data.train_classes = tuple(config.only_classes)
  for name, distil in (("full", False), ("hard_subset", False), ("soft_subset", True)):
    run = student(distil=distil, validation=True)
    if name != "full":
      run.data.train_subset = config.regulariser.subset
      run.data.subset_seed = config.regulariser.subset_seed
      run.num_epochs = config.regulariser.num_epochs
      run.checkpoint.every_epochs = config.regulariser.checkpoint_every
    stages[f"regulariser/{name}"] = run
  # Students on hard labels need no teacher, so they come first (a long profile cut short then
  # holds finished stages), then the teachers, then everything distilled from them.
  order = lambda item: 1 if item[0] == "teachers" else 2 * config_fields.is_distillation(item[1])
  return dict(sorted(stages.items(), key=order))


def correction_stages(config: ml_collections.ConfigDict) -> dict[str, dict[str, Any]]:
  """Bias-corrected copies of the class-omitting students: tuned on validation, and the paper's."""
  mythical, only = (config.mythical_digit,), tuple(config.only_classes)
  return {
      "mythical/corrected": {"source": "mythical/distilled", "classes": mythical, "offset": None},
      "mythical/corrected_paper": {"source": "mythical/distilled", "classes": mythical,
                                   "offset": PAPER["mythical"]["offset"]},
      "only_classes/corrected": {"source": "only_classes/distilled", "classes": only,
                                 "offset": None},
      "only_classes/corrected_paper": {"source": "only_classes/distilled", "classes": only,
                                       "offset": PAPER["only_classes"]["offset"]},
  }


# ----------------------------------------------------------------------------- analysis


def table_results(reports: dict[str, Any], config: ml_collections.ConfigDict) -> dict[str, Any]:
  teacher = stages.member_errors(reports["teachers"])[config.teacher_member]
  alone = stages.mean_sd(stages.member_errors(reports["table/alone"]))
  distilled = stages.mean_sd(stages.member_errors(reports["table/distilled"]))
  return {"teacher_errors": teacher,
          "teacher_population_errors": stages.mean_sd(stages.member_errors(reports["teachers"])),
          "alone_errors": alone, "distilled_errors": distilled,
          "transfer": stages.transfer_fraction(alone["mean"], distilled["mean"], teacher),
          "paper": PAPER["table"]}


def temperature_results(root: pathlib.Path, reports: dict[str, Any],
                        config: ml_collections.ConfigDict) -> dict[str, Any]:
  results = {}
  for sizes in config.temperature_sweep.hidden_sizes:
    tag = size_tag(sizes)
    groups = by_temperature(root / f"temperature/{tag}",
                            stages.member_errors(reports[f"temperature/{tag}"]))
    sweep = {str(t): stages.mean_sd(errors) for t, errors in groups.items()}
    best = min(sweep, key=lambda t: sweep[t]["mean"])
    results[tag] = {"by_temperature": sweep, "best_temperature": float(best),
                    "alone_errors": stages.mean_sd(stages.member_errors(reports[f"temperature/{tag}_alone"]))}
  return {"sizes": results, "paper": PAPER["temperature"]}


def ensemble_results(reports: dict[str, Any], geometric: dict[str, Any],
                     config: ml_collections.ConfigDict) -> dict[str, Any]:
  members = stages.member_errors(reports["teachers"])
  return {"member_errors": stages.mean_sd(members), "best_member_errors": min(members),
          "arithmetic_ensemble_errors": reports["teachers"]["test_errors"],
          "geometric_ensemble_errors": geometric["test_errors"],
          "student_from_ensemble_errors": stages.mean_sd(stages.member_errors(reports["ensemble/distilled"])),
          "student_from_one_teacher_errors": stages.mean_sd(stages.member_errors(reports["table/distilled"])),
          "one_teacher_member": config.teacher_member, "paper": PAPER["ensemble"]}


def omitted_class_results(reports: dict[str, Any], experiment: str, classes: tuple[int, ...],
                          class_counts: np.ndarray) -> dict[str, Any]:
  """Before and after the bias correction (tuned on validation, and the paper's offset)."""
  num_test = int(class_counts.sum())
  on_classes = int(class_counts[list(classes)].sum())
  result = {"classes": list(classes), "class_test_examples": on_classes,
            "test_examples": num_test}
  for stage in ("distilled", "corrected", "corrected_paper"):
    report = reports[f"{experiment}/{stage}"]
    errors = stages.member_errors(report)
    result[stage] = {"errors": stages.mean_sd(errors),
                     "error_rate": stages.mean_sd([e / num_test for e in errors]),
                     "errors_on_classes": stages.mean_sd(stages.member_errors(report, classes)),
                     "accuracy_on_classes": stages.mean_sd(
                         [1 - e / on_classes for e in stages.member_errors(report, classes)])}
    if stage != "distilled":
      result[stage]["offsets"] = report["bias_correction"]["offsets"]
  return result


def early_stopping(curves: dict[str, np.ndarray]) -> dict[str, Any]:
  """Per member: test errors at the epoch of fewest validation errors (the first such epoch)
  and at the last epoch."""
  best = curves["validation_errors"].argmin(axis=0)
  members = np.arange(best.shape[0])
  return {"final_test_errors": stages.mean_sd(curves["test_errors"][-1]),
          "early_stopped_test_errors": stages.mean_sd(curves["test_errors"][best, members]),
          "early_stopping_epochs": [int(b) + 1 for b in best]}


def regulariser_results(root: pathlib.Path, config: ml_collections.ConfigDict,
                        num_train: int) -> dict[str, Any]:
  results = {"subset_size": config.regulariser.subset,
             "subset_fraction": config.regulariser.subset / num_train,
             "paper": PAPER["regulariser"]}
  for name in ("full", "hard_subset", "soft_subset"):
    results[name] = early_stopping(stages.metrics_curves(root / "regulariser" / name))
  return results


def summarise(root: pathlib.Path, config: ml_collections.ConfigDict,
              reports: dict[str, Any], geometric: dict[str, Any]) -> dict[str, Any]:
  splits = data.load_dataset(config.student.data)
  class_counts = np.bincount(splits.test_labels, minlength=data.NUM_CLASSES)
  return {
      "table": table_results(reports, config),
      "temperature": temperature_results(root, reports, config),
      "ensemble": ensemble_results(reports, geometric, config),
      "mythical": {**omitted_class_results(reports, "mythical", (config.mythical_digit,),
                                           class_counts), "paper": PAPER["mythical"]},
      "only_classes": {**omitted_class_results(reports, "only_classes",
                                               tuple(config.only_classes), class_counts),
                       "paper": PAPER["only_classes"]},
      "regulariser": regulariser_results(root, config, len(splits.train_labels)
                                         - config.validation_size),
  }


def temperature_members(run: pathlib.Path) -> dict[float, list[int]]:
  """A temperature sweep's member indices by T, in order of T (from the run's config)."""
  groups: dict[float, list[int]] = {}
  for member in population.members(rundir.load_config(run)):
    groups.setdefault(float(member["temperature"]), []).append(member["index"])
  return dict(sorted(groups.items()))


def by_temperature(run: pathlib.Path, errors) -> dict[float, list[float]]:
  """A temperature sweep's member figures (one per member, in member order) grouped by T."""
  return {t: [float(errors[i]) for i in members]
          for t, members in temperature_members(run).items()}


def claim_level(config: ml_collections.ConfigDict, key: str) -> float:
  """The level claim `key` is tested at: ALPHA over its looks (config.earlier_looks + this one)."""
  return power.level(config.get("earlier_looks", {}).get(key, 0) + 1)


def temperature_claims(root: pathlib.Path, config: ml_collections.ConfigDict,
                       tail: bool) -> list[dict[str, Any]]:
  """The paper's two temperature claims: the smallest student best at T from 2.5 to 4 (better than
  the best T below and the best above), and with the largest all T above 8 alike."""
  sizes = sorted(config.temperature_sweep.hidden_sizes, key=lambda s: s[0])
  small, large = size_tag(sizes[0]), size_tag(sizes[-1])
  groups = by_temperature(root / f"temperature/{small}",
                          stages.curve_errors(root / f"temperature/{small}", tail))
  claims = []
  if any(2.5 <= t <= 4 for t in groups) and min(groups) < 2.5 and max(groups) > 4:
    test = verdicts.best_in_range(groups, 2.5, 4.0,
                                  claim_level(config, "small_student_temperature"))
    claims.append({"key": "small_student_temperature",
                   "claim": f"the {small} student does best at a temperature from 2.5 to 4 "
                            f"(best of them, T = {test['best']:g}, against the best T below and "
                            "above)", **test})
  groups = by_temperature(root / f"temperature/{large}",
                          stages.curve_errors(root / f"temperature/{large}", tail))
  hot = {f"T={t:g}": groups[t] for t in groups if t > 8}
  if len(hot) > 1:
    margin = config.temperature_sweep.alike_margin
    claims.append({"key": "large_student_alike",
                   "claim": f"with {large}, all temperatures above 8 give alike errors (within "
                            f"+-{margin:g})",
                   **verdicts.alike(hot, margin, claim_level(config, "large_student_alike"))})
  return claims


FINAL_ONLY = "final checkpoint only"  # The bias corrections score each member's last checkpoint.


def claims(root: pathlib.Path, config: ml_collections.ConfigDict, experiments: dict[str, Any],
           tail: bool) -> list[dict[str, Any]]:
  """The paper's claims, each keyed, worded as the paper words it and tested
  (`kd_jax.paper.verdicts`) at its level (`claim_level`) on the members' test errors at the last
  epoch, or (tail) over the last 10% of epochs. Every difference is what the claim says is better
  minus what it is compared with, so fewer errors (or more accuracy) supports the claim. The bias
  corrections score final checkpoints only: their claims have no second window (`window`)."""
  errors = lambda stage, key="test_errors": stages.curve_errors(root / stage, tail, key)
  level = lambda key: claim_level(config, key)
  mythical, only = experiments["mythical"], experiments["only_classes"]
  digit = mythical["classes"][0]
  kept = " and ".join(map(str, only["classes"]))
  paper_accuracy = PAPER["mythical"]["corrected_accuracy_on_class"]
  final_only = {"window": FINAL_ONLY}
  return [
      {"key": "distilled_beats_alone",
       "claim": "the distilled student beats the same student trained alone",
       **verdicts.lower(errors("table/distilled"), errors("table/alone"),
                        alpha=level("distilled_beats_alone"))},
      {"key": "ensemble_beats_members",
       "claim": "the ensemble of teachers makes fewer errors than its members on average",
       **verdicts.figure_lower(float(errors("teachers", "ensemble_test_errors")[0]),
                               errors("teachers"), level("ensemble_beats_members"))},
      {"key": "ensemble_student",
       "claim": "a student distilled from the ensemble beats one distilled from one teacher",
       **verdicts.lower(errors("ensemble/distilled"), errors("table/distilled"),
                        alpha=level("ensemble_student"))},
      *temperature_claims(root, config, tail),
      {"key": "mythical_paper_figure", **final_only,
       "claim": f"with the bias of {digit} raised (offset tuned on validation), the student that "
                f"never saw a {digit} gets at least the paper's {100 * paper_accuracy:.1f}% of "
                f"the test {digit}s right",
       **verdicts.above(mythical["corrected"]["accuracy_on_classes"]["values"], paper_accuracy,
                        level("mythical_paper_figure")), "unit": "accuracy"},
      {"key": "mythical_correction_helps", **final_only,
       "claim": f"raising the bias of {digit} (tuned on validation) cuts the test errors of the "
                f"student that never saw a {digit}",
       **verdicts.lower(mythical["corrected"]["errors"]["values"],
                        mythical["distilled"]["errors"]["values"], pairs=True,
                        alpha=level("mythical_correction_helps"))},
      {"key": "only_classes_lowered", **final_only,
       "claim": f"lowering the biases of {kept} (tuned on validation) cuts the errors of the "
                "student that saw only them",
       **verdicts.lower(only["corrected"]["errors"]["values"],
                        only["distilled"]["errors"]["values"], pairs=True,
                        alpha=level("only_classes_lowered"))},
      {"key": "regulariser", "claim": "soft targets on the subset beat hard targets on it",
       **verdicts.lower(errors("regulariser/soft_subset"), errors("regulariser/hard_subset"),
                        alpha=level("regulariser"))},
  ]


def claim_verdicts(root: pathlib.Path, config: ml_collections.ConfigDict,
                   experiments: dict[str, Any]) -> list[dict[str, Any]]:
  """Every claim with its test at the last epoch and over the last 10% of epochs, and one verdict:
  theirs when they agree, else not decided. A claim scored on final checkpoints only has no
  second window: its verdict is the last epoch's, and `last_10_percent` is None."""
  last, tail = (claims(root, config, experiments, tail) for tail in (False, True))
  return [{"key": a["key"], "claim": a["claim"], "alpha": a["alpha"],
           "window": a.get("window", "last epoch and last 10% of epochs"),
           "verdict": a["verdict"] if "window" in a else verdicts.combined(a, b),
           "last_epoch": a, "last_10_percent": None if "window" in a else b}
          for a, b in zip(last, tail)]


# ----------------------------------------------------------------------------- evaluation, report


def evaluate_stages(config: ml_collections.ConfigDict, root: pathlib.Path
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
  """eval.json of every stage (corrected ones with their bias_correction.json), and the
  teachers' geometric-mean ensemble (teachers/eval_geometric.json)."""
  geometric = stages.evaluated(root / "teachers", "geometric", "eval_geometric.json")
  reports = {}
  for name in [*training_stages(config, root), *correction_stages(config)]:
    reports[name] = stages.evaluated(root / name)
    correction = root / name / bias_correction.REPORT_FILE
    if correction.exists():
      reports[name]["bias_correction"] = json.loads(correction.read_text())
  return reports, geometric


def write_plots(root: pathlib.Path, results: dict[str, Any],
                config: ml_collections.ConfigDict) -> None:
  """temperature.png (errors against T per size), regulariser.png (test-error curves) and
  curves.png (every stage's, `write_curves`)."""
  plt = plots.pyplot()
  if plt is None:
    return
  fig, axes = plt.subplots(1, len(results["temperature"]["sizes"]), figsize=(10, 4))
  for ax, (tag, sweep) in zip(np.atleast_1d(axes), results["temperature"]["sizes"].items()):
    temps = [float(t) for t in sweep["by_temperature"]]
    stats = list(sweep["by_temperature"].values())
    ax.errorbar(temps, [s["mean"] for s in stats], yerr=[s["sd"] for s in stats], marker="o",
                capsize=3, label="distilled")
    alone = sweep["alone_errors"]
    ax.axhline(alone["mean"], color="gray", linestyle="--", label="alone (hard labels)")
    ax.set(xscale="log", xlabel="temperature T", ylabel="test errors (mean ± sd)",
           title=f"student {tag}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
  plots.save(fig, root / "temperature.png")
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, label in (("full", "100%, hard"), ("hard_subset", "subset, hard"),
                      ("soft_subset", "subset, soft targets")):
    curves = stages.metrics_curves(root / "regulariser" / name)
    ax.plot(curves["step"], curves["test_errors"].mean(axis=1), label=label)
  ax.set(xlabel="training step", ylabel="test errors (mean over seeds)", yscale="log",
         title="Soft targets as a regulariser")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend()
  plots.save(fig, root / "regulariser.png")
  write_curves(root, config)


def write_curves(root: pathlib.Path, config: ml_collections.ConfigDict) -> None:
  """curves.png: every trained stage's test errors per epoch (mean ± sd over its members; a
  temperature sweep's per T), the evidence that its schedule is long enough for its verdict."""
  plt = plots.pyplot()
  if plt is None:
    return
  names = list(training_stages(config, root))
  columns = 4
  fig, axes = plt.subplots(math.ceil(len(names) / columns), columns,
                           figsize=(4 * columns, 3 * math.ceil(len(names) / columns)),
                           squeeze=False)
  for ax, name in zip(axes.flat, names):
    curves = stages.metrics_curves(root / name)
    run = rundir.load_config(root / name)
    groups = ({f"T={t:g}": members for t, members in temperature_members(root / name).items()}
              if run.sweep.get("temperature") else {"": list(range(curves["test_errors"].shape[1]))})
    for label, members in groups.items():
      errors = curves["test_errors"][:, members]
      mean, sd = errors.mean(axis=1), errors.std(axis=1)
      ax.plot(curves["epoch"], mean, label=label or None, linewidth=1)
      ax.fill_between(curves["epoch"], mean - sd, mean + sd, alpha=0.15)
    ax.set(title=f"{name} (n={curves['test_errors'].shape[1]})", yscale="log", xlabel="epoch")
    ax.grid(True, which="both", alpha=0.3)
    if len(groups) > 1:
      ax.legend(fontsize="xx-small", ncol=2)
  for ax in list(axes.flat)[len(names):]:
    ax.axis("off")
  plots.save(fig, root / "curves.png")


def power_plan(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """The power plan the profile's sample sizes came from (config.power_plan, written by
  scripts/power_plan.py before the run), or None when it names none or the file is not here (the
  command was run outside the repository)."""
  path = pathlib.Path(config.get("power_plan") or "")
  if not config.get("power_plan") or not path.is_file():
    return None
  return json.loads(path.read_text())


def define_flags() -> flags.FlagHolder:
  """The command's flags (defined only when it runs, so the library imports without them);
  returns the --config holder."""
  flags.DEFINE_enum("profile", "quick", configs.module("reproduce").PROFILES,
                    "Schedules: quick (a 2-core CPU, <45 min), cpu (every claim at decisive "
                    "length, <2 h on 2 cores), paper (long), tiny (seconds, for tests).")
  flags.DEFINE_string("workdir", None, "Root folder of every stage and the results.",
                      required=True)
  stages.define_teachers_dir_flag()
  return cli.define_config(
      "config", None, "Experiment config (default reproduce:PROFILE); fields can be overridden, "
      "e.g. --config.seeds=5.")


def load_config(config: ml_collections.ConfigDict | None, profile: str,
                profile_given: bool = False) -> ml_collections.ConfigDict:
  """`config` (--config) if given, which must agree with a `profile_given` --profile; else
  configs/reproduce.py's for `profile`."""
  if config is None:
    config = configs.module("reproduce").get_config(profile)
  elif profile_given and config.profile != profile:
    raise ConfigError(f"--profile={profile} contradicts --config, whose profile is "
                      f"{config.profile}; give one of them.")
  return config


def main(argv):
  del argv
  config = load_config(flags.FLAGS.config, flags.FLAGS.profile, flags.FLAGS["profile"].present)
  root = pathlib.Path(flags.FLAGS.workdir)
  start = time.perf_counter()
  timings = stages.run_stages(training_stages(config, root), root, flags.FLAGS.overwrite,
                              correction_stages(config), shared=("teachers",),
                              teachers_dir=stages.teachers_dir_flag())
  reporting.say("== reproduce: evaluating every stage ==")
  reports, geometric = evaluate_stages(config, root)
  results = {"profile": config.profile, "machine": reporting.machine(),
             "code_version": reporting.code_version(), "wall_time_s": timings,
             "teacher_member": config.teacher_member,
             "models": {"teacher": models.describe(config.teacher.model),
                        "student": size_tag(config.student.model.hidden_sizes),
                        "temperature": config.student.temperature},
             "schedule": {"teacher_epochs": config.teacher.num_epochs,
                          "student_epochs": config.student.num_epochs,
                          "sweep_epochs": dict(zip(
                              map(size_tag, config.temperature_sweep.hidden_sizes),
                              sweep_epochs(config))),
                          "subset_epochs": config.regulariser.num_epochs},
             "experiments": summarise(root, config, reports, geometric)}
  results["claims"] = claim_verdicts(root, config, results["experiments"])
  results["code_versions"] = stages.code_versions(root)
  results["plan"] = power_plan(config)
  results["to_decide"] = power.to_decide(  # Sizes from a plan: say what a next plan would need.
      results, dict(config.get("earlier_looks", {})), config.temperature_sweep.alike_margin,
      PAPER["mythical"]["corrected_accuracy_on_class"]) if results["plan"] else {}
  reporting.write_json(root / "results.json", results)
  (root / "RESULTS.md").write_text(report.render_markdown(results))
  write_plots(root, results["experiments"], config)
  held = sum(c["verdict"] == verdicts.HOLDS for c in results["claims"])
  reporting.say(f"Reproduced in {(time.perf_counter() - start) / 60:.1f} min (this invocation); "
                f"{held} of {len(results['claims'])} claims hold. Written: {root / 'RESULTS.md'}, "
                f"{root / 'results.json'}.")


if __name__ == "__main__":
  cli.run(main, [define_flags()])
