"""Sample sizes chosen before a run: the n at which a claim's own test reaches the planned power.

Each claim is simulated as it will be decided: normal seeds drawn at the pilot's means and spread
(or at an assumed effect), put through the same `kd_jax.paper.verdicts` function at the same
level, with the same selection of "the best temperature" where the claim has one. The power at n
is the share of simulated studies that reach the verdict the assumed effect implies ("holds", or
"does not hold" where the pilot points against the claim); the planned n is the smallest n in the
search range that reaches POWER. A simulation, not a formula, because two of the tests are
not textbook ones (the best of three temperatures against the best of the others; every pair of
temperatures alike).

`looks` is the number of times a claim's data will have been tested once this run is read (an
earlier run of the same seeds counts); each claim is tested at ALPHA / looks, a Bonferroni split
over looks, which holds whatever the earlier looks showed.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from kd_jax.paper import verdicts

POWER = 0.8  # The planned chance of "holds" when the assumed effect is true.
SIMULATIONS = 2000  # Simulated studies per n: power to within about +-0.02 (2 binomial se).

Study = Callable[[np.random.Generator, int], str]  # (rng, n per group) -> a verdict.


def level(looks: int) -> float:
  """The level of each test on a claim whose data are tested `looks` times (Bonferroni)."""
  return verdicts.ALPHA / max(1, looks)


def power(study: Study, n: int, expected: str = verdicts.HOLDS,
          simulations: int = SIMULATIONS, seed: int = 0) -> float:
  """The share of `simulations` studies of n seeds per group whose verdict is `expected` (the
  verdict the assumed effect implies: "holds", or "does not hold" where the pilot points
  against the claim)."""
  rng = np.random.default_rng(seed)
  return float(np.mean([study(rng, n) == expected for _ in range(simulations)]))


def planned_n(study: Study, candidates: Sequence[int], expected: str = verdicts.HOLDS,
              target: float = POWER, simulations: int = SIMULATIONS) -> dict[str, Any]:
  """The smallest n of `candidates` (ascending) whose power reaches `target`, with the power at
  every n tried; `n` is None when none does."""
  powers = {}
  for n in candidates:
    powers[n] = power(study, n, expected, simulations)
    if powers[n] >= target:
      return {"n": n, "power": powers[n], "powers": powers}
  return {"n": None, "power": max(powers.values()), "powers": powers}


def _draw(rng: np.random.Generator, mean: float, sd: float, n: int) -> np.ndarray:
  return rng.normal(mean, sd, n)


def one_group(verdict_of: Callable[[np.ndarray], dict[str, Any]], mean: float,
              sd: float) -> Study:
  """A claim on one group of n values (members against a figure, or paired differences),
  decided by `verdict_of` (a `verdicts` test of the values)."""
  return lambda rng, n: verdict_of(_draw(rng, mean, sd, n))["verdict"]


def two_groups(mean_a: float, sd_a: float, mean_b: float, sd_b: float, alpha: float) -> Study:
  """"mean(a) < mean(b)" by Welch's test (`verdicts.lower`), n seeds on each side."""
  return lambda rng, n: verdicts.lower(_draw(rng, mean_a, sd_a, n), _draw(rng, mean_b, sd_b, n),
                                       alpha=alpha)["verdict"]


def best_inside(means: dict[float, float], sds: dict[float, float], low: float, high: float,
                alpha: float) -> Study:
  """The temperature claim as `reproduce.temperature_claims` decides it: the best T in
  [low, high] against the best T below and the best above, Welch, both must hold."""
  def study(rng: np.random.Generator, n: int) -> str:
    groups = {t: _draw(rng, means[t], sds[t], n) for t in means}
    return verdicts.best_in_range(groups, low, high, alpha)["verdict"]
  return study


def alike(mean: float, sd: float, groups: int, margin: float, alpha: float) -> Study:
  """Every pair of `groups` groups alike within `margin` (`verdicts.alike`), all at one true
  mean: the equivalence claim's power when it is exactly true."""
  return lambda rng, n: verdicts.alike({str(g): _draw(rng, mean, sd, n) for g in range(groups)},
                                       margin, alpha)["verdict"]


def _stats(values: Sequence[float]) -> tuple[float, float]:
  return float(np.mean(values)), float(np.std(values, ddof=1))


def _direction(difference: float) -> str:
  """The verdict a pilot difference points to (negative: fewer errors, the claim's side)."""
  return verdicts.HOLDS if difference < 0 else verdicts.FAILS


def plan(pilot: dict[str, Any], earlier_looks: dict[str, int], margin: float,
         paper_accuracy: float, simulations: int = SIMULATIONS,
         keys: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
  """Per claim (keyed as `kd_jax.paper.reproduce.claims` keys them; only `keys` if given): the
  effect assumed (the pilot's means and sds, from a reproduction's results.json `pilot`), the
  level (ALPHA over its looks: the earlier ones in `earlier_looks` plus this one), the verdict
  that effect implies, the smallest n per group reaching POWER, and the config field that n goes
  to."""
  e = pilot["experiments"]
  entries = {}

  def add(key: str, study_of: Callable[[float], Study], expected: str, assumed: str,
          candidates: Sequence[int], field: str) -> None:
    if keys is not None and key not in keys:
      return
    looks = earlier_looks.get(key, 0) + 1
    alpha = level(looks)
    entries[key] = {"assumed": assumed, "looks": looks, "alpha": alpha, "expected": expected,
                    "target_power": POWER, "field": field,
                    **planned_n(study_of(alpha), candidates, expected, simulations=simulations)}

  def welch_entry(key: str, a: Sequence[float], b: Sequence[float], what: str, field: str):
    (mean_a, sd_a), (mean_b, sd_b) = _stats(a), _stats(b)
    add(key, lambda alpha: two_groups(mean_a, sd_a, mean_b, sd_b, alpha),
        _direction(mean_a - mean_b), f"{what}: {mean_a:.1f} ± {sd_a:.1f} against "
        f"{mean_b:.1f} ± {sd_b:.1f} (the pilot's means ± sds)", range(2, 21), field)

  def paired_entry(key: str, after: Sequence[float], before: Sequence[float], what: str):
    mean, sd = _stats(np.subtract(after, before))
    add(key, lambda alpha: one_group(
        lambda d: verdicts.lower(d, np.zeros_like(d), pairs=True, alpha=alpha), mean, sd),
        _direction(mean), f"{what}: paired differences {mean:+.1f} ± {sd:.1f} (the pilot's)",
        range(2, 21), "seeds")

  table, ensemble = e["table"], e["ensemble"]
  welch_entry("distilled_beats_alone", table["distilled_errors"]["values"],
              table["alone_errors"]["values"], "test errors, distilled against alone",
              "table_seeds")
  members, figure = ensemble["member_errors"]["values"], ensemble["arithmetic_ensemble_errors"]
  mean, sd = _stats(members)
  add("ensemble_beats_members", lambda alpha: one_group(
      lambda a: verdicts.figure_lower(figure, a, alpha), mean, sd), _direction(figure - mean),
      f"the ensemble's {figure} test errors against members at {mean:.1f} ± {sd:.1f} (the "
      "pilot's; a larger ensemble would do at least as well)", range(2, 21), "teacher.members")
  welch_entry("ensemble_student", ensemble["student_from_ensemble_errors"]["values"],
              ensemble["student_from_one_teacher_errors"]["values"],
              "test errors, student of the ensemble against student of one teacher",
              "table_seeds")
  sizes = e["temperature"]["sizes"]
  tags = sorted(sizes, key=lambda tag: int(tag.split("x")[-1]))
  small, large = sizes[tags[0]]["by_temperature"], sizes[tags[-1]]["by_temperature"]
  means = {float(t): _stats(s["values"])[0] for t, s in small.items()}
  sds = {float(t): _stats(s["values"])[1] for t, s in small.items()}
  inside = [t for t in means if 2.5 <= t <= 4.0]
  best_in = min(inside, key=means.get, default=None)
  best_out = min((t for t in means if t not in inside), key=means.get, default=None)
  if best_in is not None and best_out is not None:  # A sweep with T on both sides.
    add("small_student_temperature", lambda alpha: best_inside(means, sds, 2.5, 4.0, alpha),
        verdicts.HOLDS, f"{tags[0]}: every T at the pilot's mean ± sd (T = {best_in:g} "
        f"{means[best_in]:.0f} ± {sds[best_in]:.0f}, the best outside T = {best_out:g} "
        f"{means[best_out]:.0f} ± {sds[best_out]:.0f})", (5, 10, 15, 20, 25, 30, 35, 40, 50, 60),
        "temperature_sweep.seeds_by_size[1]")
  hot = [s["values"] for t, s in large.items() if float(t) > 8]
  pooled = float(np.sqrt(np.mean([np.var(v, ddof=1) for v in hot])))
  add("large_student_alike", lambda alpha: alike(0.0, pooled, len(hot), margin, alpha),
      verdicts.HOLDS, f"{tags[-1]}: the {len(hot)} temperatures above 8 truly alike (equal "
      f"means), sd {pooled:.1f} (the pilot's pooled), margin ±{margin:g}", range(3, 41),
      "temperature_sweep.seeds_by_size[0]")
  mythical = e["mythical"]
  accuracy = mythical["corrected"]["accuracy_on_classes"]["values"]
  mean, sd = _stats(accuracy)
  add("mythical_paper_figure", lambda alpha: one_group(
      lambda a: verdicts.above(a, paper_accuracy, alpha), mean, sd),
      verdicts.HOLDS if mean > paper_accuracy else verdicts.FAILS,
      f"accuracy on the omitted class {mean:.4f} ± {sd:.4f} (the pilot's) against the paper's "
      f"{paper_accuracy:.4f}", range(2, 21), "seeds")
  paired_entry("mythical_correction_helps", mythical["corrected"]["errors"]["values"],
               mythical["distilled"]["errors"]["values"], "test errors, corrected - uncorrected")
  only = e["only_classes"]
  paired_entry("only_classes_lowered", only["corrected"]["errors"]["values"],
               only["distilled"]["errors"]["values"], "test errors, corrected - uncorrected")
  regulariser = e["regulariser"]
  welch_entry("regulariser", regulariser["soft_subset"]["final_test_errors"]["values"],
              regulariser["hard_subset"]["final_test_errors"]["values"],
              "test errors, soft against hard targets on the subset", "seeds")
  return entries


def to_decide(results: dict[str, Any], earlier_looks: dict[str, int], margin: float,
              paper_accuracy: float, simulations: int = SIMULATIONS) -> dict[str, dict[str, Any]]:
  """For each claim a reproduction's results.json left undecided: the n per group a further run
  would need, planned as `plan` plans one with this study as its pilot and one look more (its
  own, after `earlier_looks` and this study's)."""
  undecided = [c["key"] for c in results["claims"] if c["verdict"] == verdicts.UNDECIDED]
  if not undecided:
    return {}
  looks = {key: earlier_looks.get(key, 0) + 1 for key in undecided}
  return plan(results, looks, margin, paper_accuracy, simulations, keys=undecided)
