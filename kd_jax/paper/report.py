"""The reproduction's report: RESULTS.md (ours beside the paper's) and the README's claims block.

Both are rendered from RUN/results.json's content (`kd_jax.paper.reproduce` writes it), so the
README's block can be regenerated and tested against the committed results
(scripts/readme_claims.py).
"""

from __future__ import annotations

import pathlib
from typing import Any

from kd_jax import reporting
from kd_jax.paper import stages, verdicts


def _pm(stats: dict[str, Any], scale: float = 1.0, digits: int = 1, suffix: str = "") -> str:
  """'74.3 ± 5.1 (n=3)' from a mean_sd dict."""
  return (f"{stats['mean'] * scale:.{digits}f} ± {stats['sd'] * scale:.{digits}f}{suffix} "
          f"(n={stats['n']})")


def render_markdown(results: dict[str, Any]) -> str:
  """RESULTS.md: one table per experiment, ours beside the paper's."""
  e = results["experiments"]
  machine = results["machine"]
  table = stages.markdown_table
  total_min = sum(results["wall_time_s"].values()) / 60
  sweeps = ", ".join(f"{tag} {epochs}" for tag, epochs in
                     results["schedule"]["sweep_epochs"].items())
  lines = [f"# Distillation on MNIST: the paper's claims, re-run (profile `{results['profile']}`)",
           "",
           f"Ours: mean ± sd over seeds (n = members); the paper's figures are single runs, typed "
           f"in from Hinton, Vinyals & Dean (2015) and labelled *paper*. Hardware: "
           f"{reporting.describe_machine(machine)}. Code: "
           f"`{results['code_version']}`. Wall time: {total_min:.1f} min in all "
           f"(per stage below). Schedules: teachers {results['schedule']['teacher_epochs']} "
           f"epochs, students {results['schedule']['student_epochs']} epochs (temperature "
           f"sweeps: {sweeps}), subset students "
           f"{results['schedule']['subset_epochs']} epochs.",
           "", "## Claims checked", ""]
  lines += [RULE, "", CONVENTION, ""]
  lines += table(["claim", "verdict", "level", "at the last epoch", "over the last 10% of epochs"],
                 [[c["claim"], c["verdict"] if c["verdict"] != verdicts.FAILS else
                   "**does not hold**", f"{c.get('alpha', verdicts.ALPHA):.3g}",
                   f"{c['last_epoch']['verdict']}: {verdicts.describe(c['last_epoch'])}",
                   c.get("window") if c.get("last_10_percent") is None else
                   f"{c['last_10_percent']['verdict']}: "
                   f"{verdicts.describe(c['last_10_percent'])}"]
                  for c in results["claims"]])
  lines += sample_sizes(results.get("plan")) + to_decide(results.get("to_decide"))
  t = e["table"]
  transfer = f"{t['transfer']:.2f}" if t["transfer"] is not None else "n/a"
  teacher, student = results["models"]["teacher"], results["models"]["student"]
  lines += ["", f"## 1. The MNIST table (section 3): test errors of "
            f"{e['mythical']['test_examples']:,}", ""]
  lines += table(["model", "ours", "paper (2x1200 / 2x800)"], [
      [f"teacher {teacher} (member {results['teacher_member']})",
       f"{t['teacher_errors']} (all {t['teacher_population_errors']['n']} members: "
       f"{_pm(t['teacher_population_errors'])})", t["paper"]["teacher_errors"]],
      [f"{student} alone, hard labels", _pm(t["alone_errors"]), t["paper"]["alone_errors"]],
      [f"{student} distilled, T = {results['models']['temperature']:g}, un-jittered transfer set",
       _pm(t["distilled_errors"]), t["paper"]["distilled_errors"]],
      ["share of the teacher's advantage transferred", transfer, t["paper"]["transfer"]]])
  temperature = e["temperature"]
  lines += ["", "## 2. Temperature versus student size: test errors", "",
            f"*Paper:* {temperature['paper']} Plot: `temperature.png`.", ""]
  for tag, sweep in temperature["sizes"].items():
    temps = list(sweep["by_temperature"])
    lines += [f"**{tag}** (alone: {_pm(sweep['alone_errors'])}; best T = "
              f"{sweep['best_temperature']:g})", ""]
    lines += table(["T", *(f"{float(t):g}" for t in temps)], [
        ["errors", *(f"{sweep['by_temperature'][t]['mean']:.0f} ± "
                     f"{sweep['by_temperature'][t]['sd']:.0f}" for t in temps)]])
    lines.append("")
  ens = e["ensemble"]
  lines += ["## 3. Ensembles: test errors", "", f"*Paper:* {ens['paper']}", ""]
  lines += table(["model", "ours"], [
      ["teacher members", f"{_pm(ens['member_errors'])}, best {ens['best_member_errors']}"],
      ["ensemble, arithmetic mean of probabilities", ens["arithmetic_ensemble_errors"]],
      ["ensemble, geometric mean", ens["geometric_ensemble_errors"]],
      [f"{student} distilled from the ensemble", _pm(ens["student_from_ensemble_errors"])],
      [f"{student} distilled from teacher member {ens['one_teacher_member']}",
       _pm(ens["student_from_one_teacher_errors"])]])
  m, p = e["mythical"], e["mythical"]["paper"]
  digit = m["classes"][0]
  lines += ["", f"## 4. The mythical digit: no {digit}s in the transfer set", "",
            f"Offsets tuned per member on the validation split (held out of the training set; "
            f"never the test set): {m['corrected']['offsets']}; the paper's: {p['offset']}.", ""]
  lines += table(["model", "test errors, ours",
                  f"on the {m['class_test_examples']} test {digit}s, ours", "paper"], [
      [f"distilled without {digit}s", _pm(m["distilled"]["errors"]),
       _pm(m["distilled"]["errors_on_classes"]),
       f"{p['errors']} ({p['errors_on_class']} on {p['class_test_examples']} {digit}s)"],
      [f"+ bias of {digit} raised by the tuned offset", _pm(m["corrected"]["errors"]),
       _pm(m["corrected"]["errors_on_classes"]), ""],
      [f"+ bias of {digit} raised by the paper's {p['offset']}",
       _pm(m["corrected_paper"]["errors"]), _pm(m["corrected_paper"]["errors_on_classes"]),
       f"{p['corrected_errors']} ({p['corrected_errors_on_class']} on {digit}s)"]])
  o, p = e["only_classes"], e["only_classes"]["paper"]
  kept = " and ".join(str(c) for c in o["classes"])
  lines += ["", f"## 5. Only {kept} in the transfer set: test error rate", "",
            f"Tuned offsets: {o['corrected']['offsets']}; the paper's: {p['offset']}.", ""]
  rate = lambda stats: _pm(stats, 100, suffix="%")
  lines += table(["model", "ours", "paper"], [
      [f"distilled on {kept} only", rate(o["distilled"]["error_rate"]),
       f"{100 * p['error_rate']:.1f}%"],
      [f"+ biases of {kept} moved by the tuned offset", rate(o["corrected"]["error_rate"]), ""],
      [f"+ biases moved by the paper's {p['offset']}", rate(o["corrected_paper"]["error_rate"]),
       f"{100 * p['corrected_error_rate']:.1f}%"]])
  r = e["regulariser"]
  lines += ["", f"## 6. Soft targets as a regulariser: {r['subset_size']} training images "
            f"({100 * r['subset_fraction']:.0f}%, class-balanced)", "",
            f"*Paper:* {r['paper']} Curves: `regulariser.png`.", ""]
  lines += table([f"{student} student", "test errors, last epoch",
                  "with early stopping on validation (epochs)"], [
      [label, _pm(r[name]["final_test_errors"]),
       f"{_pm(r[name]['early_stopped_test_errors'])} "
       f"({', '.join(map(str, r[name]['early_stopping_epochs']))})"]
      for name, label in (("full", "all training data, hard labels"),
                          ("hard_subset", "subset, hard labels"),
                          ("soft_subset", "subset, the teacher's soft targets"))])
  lines += ["", "## Wall time and code per stage", "",
            "Summed over every invocation that worked on the stage; each code version and CPU "
            "that trained it is listed (a stage resumed across commits or machines lists more "
            "than one).", ""]
  versions = results.get("code_versions", {})
  lines += table(["stage", "minutes", "code and CPU"], [
      [name, f"{seconds / 60:.1f}", "; ".join(versions.get(name, [])) or "not recorded"]
      for name, seconds in results["wall_time_s"].items()])
  return "\n".join(lines) + "\n"


RULE = (f"A claim holds only where its test is decisive in the claimed direction: p below the "
        f"claim's level (two-sided; {verdicts.ALPHA} over the number of times the claim's data have "
        "been tested, a Bonferroni split over looks, see the sample sizes below), at the last "
        "epoch and over each member's mean of the last 10% of epochs alike (the bias corrections "
        "score final checkpoints only, so those claims have one window); decisive evidence the "
        "other way does not hold; anything else is not decided at this length. An equivalence "
        "claim's p is its two one-sided tests' p (every pair within the margin).")
CONVENTION = ("Every difference is what the claim says is better minus what it is compared with "
              "(the distilled student minus the one alone, the ensemble minus its members, ours "
              "minus the paper's figure), in test errors, where a negative difference supports "
              "the claim, or in accuracy, where a positive one does.")


def sample_sizes(plan: dict[str, Any] | None) -> list[str]:
  """RESULTS.md's account of the sample sizes: per claim, the effect assumed, the looks and
  level, the power and the n the plan gave (`kd_jax.paper.power`), or a line saying none was
  made."""
  lines = ["", "### Sample sizes", ""]
  if not plan:
    return lines + ["No power plan: the sizes are the profile's defaults."]
  lines += [f"Chosen before this run by a power plan (`scripts/power_plan.py` on "
            f"`{plan['pilot']}`, code `{plan['pilot_code_version']}`): each claim's own test "
            f"simulated {plan['simulations']} times per n at the assumed effect, n the smallest "
            f"reaching power {plan['target_power']}. {plan['rule'].capitalize()}.", ""]
  lines += stages.markdown_table(
      ["claim", "assumed", "looks", "level", "expected verdict", "planned n (power)",
       "config field"],
      [[key, entry["assumed"], entry["looks"], f"{entry['alpha']:.3g}", entry["expected"],
        f"{entry['n']} ({entry['power']:.2f})" if entry["n"] else
        f"none up to {max(map(int, entry['powers']))} (best {entry['power']:.2f})",
        f"`{entry['field']}`"] for key, entry in plan["claims"].items()])
  return lines


def to_decide(entries: dict[str, Any] | None) -> list[str]:
  """RESULTS.md's account of the claims left undecided: the n per group a further run would
  need, planned with this run as its pilot (`kd_jax.paper.power.to_decide`)."""
  if not entries:
    return []
  return ["", "### What would decide the rest", "",
          "A further run planned as this one was, with this run as its pilot and one look more "
          "(so at a lower level):", "", *stages.markdown_table(
              ["claim", "assumed", "looks", "level", "n per group (power)", "config field"],
              [[key, entry["assumed"], entry["looks"], f"{entry['alpha']:.3g}",
                f"{entry['n']} ({entry['power']:.2f})" if entry["n"] else
                f"none up to {max(map(int, entry['powers']))} (best {entry['power']:.2f})",
                f"`{entry['field']}`"] for key, entry in entries.items()])]


README_BEGIN = "<!-- claims: generated by scripts/readme_claims.py from {path} -->"
README_END = "<!-- /claims -->"


def readme_claims(results: dict[str, Any], path: str) -> str:
  """The README's claims block: each claim's verdict, level and test at the last epoch, from a
  reproduction's results.json at `path` (scripts/readme_claims.py writes it; a test keeps it
  current)."""
  machine = results["machine"]
  minutes = sum(results["wall_time_s"].values()) / 60
  lines = [README_BEGIN.format(path=path), "",
           f"The paper's claims (`kd_jax.reproduce --profile {results['profile']}`, "
           f"{minutes:.0f} min on {reporting.describe_machine(machine)}; all "
           f"figures, the sample sizes and their power plan in "
           f"`{pathlib.PurePosixPath(path).parent}/RESULTS.md`; how a verdict is reached: "
           "[Verdicts](docs/paper/index.md#verdicts)):", ""]
  lines += stages.markdown_table(["claim", "verdict", "level", "ours: difference ± se (test)"], [
      [c["claim"], f"**{c['verdict']}**" if c["verdict"] != verdicts.HOLDS else c["verdict"],
       f"{c.get('alpha', verdicts.ALPHA):.3g}", verdicts.describe(c["last_epoch"], brief=True)]
      for c in results["claims"]])
  return "\n".join([*lines, "", README_END])


RESULTS_BEGIN = ("<!-- results: generated by scripts/readme_claims.py from {path}, {fidelity} "
                 "and {teaching} -->")
RESULTS_END = "<!-- /results -->"


def _cell(stats: dict[str, Any]) -> str:
  """'96.2 ± 1.8 (5)': a README results cell."""
  return f"{stats['mean']:.1f} ± {stats['sd']:.1f} ({stats['n']})"


def readme_results(results: dict[str, Any], path: str, fidelity: dict[str, Any],
                   fidelity_path: str, teaching: dict[str, Any], teaching_path: str) -> str:
  """The README's results table: the paper's MNIST figures beside the fidelity study's
  (`fidelity`, its results.json at `fidelity_path`), the reproduction's (`results` at `path`)
  and the teaching-modes study's best function-matching cell (`teaching` at `teaching_path`,
  scripts/function_matching_study.py), every number read from those files; the best of our
  student rows in bold."""
  machine, e = results["machine"], results["experiments"]
  cells = {name: runs[0] for name, runs in fidelity["cells"].items()}
  teachers = e["ensemble"]["member_errors"]
  members = len(teachers["values"])
  paper = e["table"]["paper"]
  matching = min((name for name in teaching["cells"] if name.endswith("function_matching")),
                 key=lambda name: teaching["cells"][name]["test_errors"]["mean"])
  matched, relabelled = (teaching["cells"][matching],
                         cells["jittered_relabelled_ensemble"]["test_errors"])
  best = lambda stats, other: (f"**{_cell(stats)}**" if stats["mean"] <= other["mean"]
                               else _cell(stats))
  lines = [RESULTS_BEGIN.format(path=path, fidelity=fidelity_path, teaching=teaching_path), "",
           f"MNIST test errors out of 10,000 on {reporting.describe_machine(machine)} (ours: "
           "mean ± sd over seeds, n in "
           "brackets; the paper's figures are single runs). Two runs of the same configs: the "
           f"fidelity study (`{pathlib.PurePosixPath(fidelity_path).parent}`) and the "
           f"`{results['profile']}` reproduction (`{pathlib.PurePosixPath(path).parent}`, whose "
           f"{members} teachers came out at "
           f"{', '.join(str(round(v)) for v in teachers['values'])} errors); and the "
           f"teaching-modes study (`{pathlib.PurePosixPath(teaching_path).parent}`, on "
           f"{reporting.describe_machine(teaching['machine'])}, whose 3 teachers came out at "
           f"{', '.join(map(str, teaching['teacher_test_errors']['members']))} errors, "
           f"{teaching['teacher_test_errors']['ensemble']} as an ensemble):", ""]
  lines += stages.markdown_table(
      ["model", "paper", "fidelity study", f"`{results['profile']}` reproduction",
       "teaching-modes study"], [
          ["teacher 784-1200-1200-10 (`configs/teacher.py`, 100 epochs; 3 as an ensemble, "
           "`configs/teacher_ensemble.py`)", paper["teacher_errors"],
           f"{fidelity['teachers']['cpu_long']} (ensemble of 3: "
           f"{fidelity['teachers']['ensemble3']})",
           f"{e['table']['teacher_errors']} (ensemble of {members}: "
           f"{e['ensemble']['arithmetic_ensemble_errors']})",
           f"{teaching['teacher_test_errors']['members'][0]} (ensemble of 3: "
           f"{teaching['teacher_test_errors']['ensemble']})"],
          [f"2×800 student alone (`configs/student.py`, {cells['alone']['student_epochs']} "
           "epochs)", paper["alone_errors"], _cell(cells["alone"]["test_errors"]),
           _cell(e["table"]["alone_errors"]), ""],
          ["2×800 distilled, T = 20, the paper's un-jittered transfer set (`configs/distill.py`, "
           f"{cells['paper']['student_epochs']} epochs)", paper["distilled_errors"],
           f"{_cell(cells['paper']['test_errors'])}; from the ensemble "
           f"{_cell(cells['paper_ensemble']['test_errors'])}",
           f"{_cell(e['table']['distilled_errors'])}; from the ensemble "
           f"{_cell(e['ensemble']['student_from_ensemble_errors'])}", ""],
          ["2×800 distilled on a jittered transfer set the ensemble relabels "
           "(`configs/distill_jittered.py`, "
           f"{cells['jittered_relabelled_ensemble']['student_epochs']} epochs; departs from the "
           "paper)", "—", best(relabelled, matched["test_errors"]), "", ""],
          ["2×800 taught by function matching: the ensemble's view of each jittered image, "
           f"mixed by mixup (`configs/function_matching.py`, {matched['epochs'][-1]} epochs; "
           "departs from the paper)", "—", "", "", best(matched["test_errors"], relabelled)]])
  return "\n".join([*lines, "", RESULTS_END])
