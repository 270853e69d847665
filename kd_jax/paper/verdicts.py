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


def _verdict(better: bool, p: float) -> str:
  if p < ALPHA:
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


def lower(a: Sequence[float], b: Sequence[float], pairs: bool = False) -> dict[str, Any]:
  """"mean(a) < mean(b)" (fewer errors): Welch's test (the paired test for `pairs`, the same
  members twice) and its verdict."""
  test = paired(a, b) if pairs else welch(a, b)
  return {**test, "verdict": _verdict(test["difference"] < 0, test["p"])}


def above(a: Sequence[float], figure: float) -> dict[str, Any]:
  """"mean(a) > figure": the one-sample test and its verdict."""
  test = one_sample(a, figure)
  return {**test, "verdict": _verdict(test["difference"] > 0, test["p"])}


def alike(groups: dict[str, Sequence[float]], margin: float) -> dict[str, Any]:
  """"These groups are alike": every pair within `margin` by two one-sided tests (each pair's
  90% interval inside +-margin), which holds; some pair's interval wholly beyond the margin, which
  does not; else not decided. (Different by Welch's test is not unlike: a difference inside the
  margin is alike.) Reports the pair furthest apart."""
  pairs = []
  for (name_a, a), (name_b, b) in itertools.combinations(groups.items(), 2):
    test = welch(a, b)
    if test["se"] is None:  # No spread on a side: no interval.
      half_width = math.inf
    else:
      half_width = float(stats.t.ppf(1 - ALPHA, test["df"]) * test["se"])
    pairs.append({**test, "pair": [name_a, name_b],
                  "interval_90": [test["difference"] - half_width,
                                  test["difference"] + half_width]})
  widest = max(pairs, key=lambda p: max(abs(x) for x in p["interval_90"]))
  if any(p["interval_90"][0] > margin or p["interval_90"][1] < -margin for p in pairs):
    verdict = FAILS
  elif all(-margin < p["interval_90"][0] and p["interval_90"][1] < margin for p in pairs):
    verdict = HOLDS
  else:
    verdict = UNDECIDED
  return {**widest, "test": f"two one-sided tests within ±{margin:g}; widest pair "
                           f"{widest['pair'][0]} vs {widest['pair'][1]}, Welch",
          "margin": margin, "pairs": pairs, "verdict": verdict}


def combined(last: dict[str, Any], tail: dict[str, Any]) -> str:
  """One verdict from the verdicts at the last epoch and over the last 10% of epochs: theirs when
  they agree, else not decided (the schedule is not yet long enough to settle it)."""
  return last["verdict"] if last["verdict"] == tail["verdict"] else UNDECIDED


def describe(test: dict[str, Any], brief: bool = False) -> str:
  """'-34.2 ± 3.1 errors, Welch t = -11.0, df = 6.2, p = 3e-05, n = 5 / 5', or (brief)
  '-34.2 ± 3.1 errors (Welch, p = 3e-05, n = 5 / 5)'; the unit is the test's "unit" (default
  errors)."""
  unit = test.get("unit", "errors")
  se = "n/a" if test["se"] is None else f"{test['se']:.3g}"
  n = " / ".join(map(str, test["n"]))
  if brief:
    return f"{test['difference']:+.4g} ± {se} {unit} ({test['test']}, p = {test['p']:.2g}, n = {n})"
  df = "" if test["df"] is None else f", df = {test['df']:.1f}"
  t = "n/a" if test["t"] is None else f"{test['t']:.2f}"
  return (f"{test['difference']:+.4g} ± {se} {unit}, {test['test']} t = {t}{df}, "
          f"p = {test['p']:.2g}, n = {n}")
