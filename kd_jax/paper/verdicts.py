"""Verdicts a few seeds can support: Welch's t-test for "A beats B", a one-sample t-test for "A beats
a figure", and two one-sided tests for "these are alike".

A claim "holds" only when the evidence is decisive (p < ALPHA, two-sided, in the claimed
direction); the evidence against it is "does not hold" only when equally decisive the other way;
everything between is "not decided at this length". With n = 3 to 5 seeds per side only large
differences (several sds) are decisive, which is the point: a claim is not marked as holding on
means less than one sd apart.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Sequence

import numpy as np
from scipy import stats

ALPHA = 0.05  # Two-sided significance level of every test.
HOLDS, FAILS, UNDECIDED = "holds", "does not hold", "not decided at this length"


def _verdict(better: bool, p: float, alpha: float) -> str:
  if p < alpha:
    return HOLDS if better else FAILS
  return UNDECIDED


def welch(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
  """Welch's t-test of mean(a) - mean(b): difference, its standard error, t, degrees of freedom
  (Welch-Satterthwaite), the two-sided p and both n. A side of one value has no spread, so the
  test is never decisive (p = 1)."""
  a, b = np.asarray(a, float), np.asarray(b, float)
  difference = float(a.mean() - b.mean())
  var_a = a.var(ddof=1) / len(a) if len(a) > 1 else math.nan
  var_b = b.var(ddof=1) / len(b) if len(b) > 1 else math.nan
  se = math.sqrt(var_a + var_b) if not (math.isnan(var_a) or math.isnan(var_b)) else math.nan
  if math.isnan(se):
    t = df = p = math.nan
  elif se == 0:  # Identical values within each side: a few seeds tied, not certainty.
    t = df = p = math.nan
  else:
    t = difference / se
    df = (var_a + var_b) ** 2 / (var_a**2 / (len(a) - 1) + var_b**2 / (len(b) - 1))
    p = float(2 * stats.t.sf(abs(t), df))
  return _finite({"test": "Welch", "difference": difference, "se": se, "t": t, "df": df,
                  "p": 1.0 if math.isnan(p) else p, "n": [len(a), len(b)]})


def one_sample(a: Sequence[float], figure: float, test: str = "one-sample") -> dict[str, Any]:
  """The one-sample t-test of mean(a) - figure (a figure without spread: one ensemble's errors,
  a threshold). No spread (one value, or all equal) is never decisive (p = 1)."""
  a = np.asarray(a, float)
  difference = float(a.mean() - figure)
  se = float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else math.nan
  if math.isnan(se) or se == 0:
    t = df = p = math.nan
  else:
    t, df = difference / se, len(a) - 1
    p = float(2 * stats.t.sf(abs(t), df))
  return _finite({"test": test, "difference": difference, "se": se, "t": t, "df": df,
                  "p": 1.0 if math.isnan(p) else p, "n": [len(a)]})


def paired(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
  """The paired t-test of mean(a - b): the same members measured twice (before and after a bias
  correction)."""
  a, b = np.asarray(a, float), np.asarray(b, float)
  if a.shape != b.shape:
    raise ValueError(f"a paired test needs pairs: {a.shape} against {b.shape}")
  return {**one_sample(a - b, 0.0, test="paired"), "n": [len(a), len(b)]}


def _finite(test: dict[str, Any]) -> dict[str, Any]:
  """Python floats, and None for a figure without a value (no spread: nan; no spread but a
  difference: an infinite t), so results.json stays standard JSON."""
  return {k: (None if isinstance(v, float) and not math.isfinite(float(v)) else
              float(v) if isinstance(v, (float, np.floating)) else v) for k, v in test.items()}


def lower(a: Sequence[float], b: Sequence[float], pairs: bool = False,
          alpha: float = ALPHA) -> dict[str, Any]:
  """"mean(a) < mean(b)" (fewer errors): Welch's test (the paired test for `pairs`, the same
  members twice) and its verdict at level `alpha`."""
  test = paired(a, b) if pairs else welch(a, b)
  return {**test, "alpha": alpha, "verdict": _verdict(test["difference"] < 0, test["p"], alpha)}


def above(a: Sequence[float], figure: float, alpha: float = ALPHA) -> dict[str, Any]:
  """"mean(a) > figure": the one-sample test and its verdict at level `alpha`."""
  test = one_sample(a, figure)
  return {**test, "alpha": alpha, "verdict": _verdict(test["difference"] > 0, test["p"], alpha)}


def figure_lower(figure: float, a: Sequence[float], alpha: float = ALPHA) -> dict[str, Any]:
  """"figure < mean(a)" (one ensemble's errors below its members'): the one-sample test of
  figure - mean(a), so the difference reads like every other one (what the claim says is better
  minus what it is compared with)."""
  test = one_sample(figure - np.asarray(a, float), 0.0)
  return {**test, "alpha": alpha, "verdict": _verdict(test["difference"] < 0, test["p"], alpha)}


def best_in_range(groups: dict[float, Sequence[float]], low: float, high: float,
                  alpha: float = ALPHA) -> dict[str, Any]:
  """"The best setting is in [low, high]": the best group inside (fewest mean errors) against
  the best below and the best above, Welch; holds when both hold, does not hold when either is
  decisive the other way, else not decided. Returns the deciding test (the failing one, else the
  less decisive one), the verdict, the best setting and both tests."""
  mean = lambda key: float(np.mean(groups[key]))
  inside = [key for key in groups if low <= key <= high]
  sides = ([key for key in groups if key < low], [key for key in groups if key > high])
  best = min(inside, key=mean)
  tests = [lower(groups[best], groups[min(side, key=mean)], alpha=alpha) for side in sides]
  outcomes = [test["verdict"] for test in tests]
  verdict = (FAILS if FAILS in outcomes else
             HOLDS if all(outcome == HOLDS for outcome in outcomes) else UNDECIDED)
  shown = ([test for test in tests if test["verdict"] == FAILS] if verdict == FAILS
           else [max(tests, key=lambda test: test["p"])])[0]
  return {**shown, "verdict": verdict, "best": best, "tests": tests}


def alike(groups: dict[str, Sequence[float]], margin: float,
          alpha: float = ALPHA) -> dict[str, Any]:
  """"These groups are alike": two one-sided tests (TOST) per pair, at level `alpha`.

  A pair is alike when both one-sided tests reject (its difference is above -margin and below
  +margin): its TOST p is the larger of the two p's, and its (1 - 2 alpha) interval lies inside
  +-margin. The claim holds when every pair is alike: an intersection-union test whose p
  (`p_equivalence`) is the largest pair's TOST p. It does not hold when some pair is decisively
  beyond the margin (a one-sided test that |difference| > margin rejects: `p_beyond`, the
  smallest such p over pairs); else it is not decided. A pair different by Welch's test can
  still be alike: a difference inside the margin is alike. `p` is the equivalence p, so "holds
  only where p < alpha" reads the same here as for every other claim; the pair furthest apart
  is reported with its Welch figures."""
  pairs = []
  for (name_a, a), (name_b, b) in itertools.combinations(groups.items(), 2):
    test = welch(a, b)
    if test["se"] is None:  # No spread on a side: no interval, nothing decisive.
      half_width, p_equivalence, p_beyond = math.inf, 1.0, 1.0
    else:
      t_dist = stats.t(test["df"])
      half_width = float(t_dist.ppf(1 - alpha) * test["se"])
      p_equivalence = float(max(t_dist.sf((test["difference"] + margin) / test["se"]),
                                t_dist.cdf((test["difference"] - margin) / test["se"])))
      p_beyond = float(t_dist.sf((abs(test["difference"]) - margin) / test["se"]))
    pairs.append({**test, "pair": [name_a, name_b], "welch_p": test["p"],
                  "p_equivalence": p_equivalence, "p_beyond": p_beyond,
                  "interval": [test["difference"] - half_width, test["difference"] + half_width],
                  "interval_level": 1 - 2 * alpha})
  widest = max(pairs, key=lambda pair: pair["p_equivalence"])
  p_equivalence = widest["p_equivalence"]
  p_beyond = min(pair["p_beyond"] for pair in pairs)
  verdict = FAILS if p_beyond < alpha else HOLDS if p_equivalence < alpha else UNDECIDED
  return {**widest, "test": f"two one-sided tests within ±{margin:g}, every pair; least alike "
                           f"pair {widest['pair'][0]} vs {widest['pair'][1]}",
          "p": p_equivalence, "p_beyond": p_beyond, "margin": margin, "alpha": alpha,
          "pairs": pairs, "verdict": verdict}


def combined(last: dict[str, Any], tail: dict[str, Any]) -> str:
  """One verdict from the verdicts at the last epoch and over the last 10% of epochs: theirs when
  they agree, else not decided (the schedule is not yet long enough to settle it)."""
  return last["verdict"] if last["verdict"] == tail["verdict"] else UNDECIDED


def describe(test: dict[str, Any], brief: bool = False) -> str:
  """'-34.2 ± 3.1 errors, Welch t = -11.0, df = 6.2, p = 3e-05, n = 5 / 5', or (brief)
  '-34.2 ± 3.1 errors (Welch, p = 3e-05, n = 5 / 5)'; the unit is the test's "unit" (default
  errors); a level other than ALPHA is named (', at alpha = 0.025'). An equivalence test
  (`alike`) shows its least alike pair's difference and interval and its own p."""
  unit = test.get("unit", "errors")
  se = "n/a" if test["se"] is None else f"{test['se']:.3g}"
  n = " / ".join(map(str, test["n"]))
  level = f", at alpha = {test['alpha']:.3g}" if test.get("alpha", ALPHA) != ALPHA else ""
  if "p_equivalence" in test:
    low, high = test["interval"]
    what = (f"{test['difference']:+.4g} ± {se} {unit} ({test['pair'][0]} - {test['pair'][1]}, "
            f"the least alike pair; {100 * test['interval_level']:.0f}% interval {low:+.3g} to "
            f"{high:+.3g}), two one-sided tests within ±{test['margin']:g}")
    return f"{what}, p = {test['p']:.2g}, n = {n}{level}"
  if brief:
    return (f"{test['difference']:+.4g} ± {se} {unit} ({test['test']}, p = {test['p']:.2g}, "
            f"n = {n}{level})")
  df = "" if test["df"] is None else f", df = {test['df']:.1f}"
  t = "n/a" if test["t"] is None else f"{test['t']:.2f}"
  return (f"{test['difference']:+.4g} ± {se} {unit}, {test['test']} t = {t}{df}, "
          f"p = {test['p']:.2g}, n = {n}{level}")
