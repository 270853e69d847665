"""The statistics behind the reproduction's verdicts (kd_jax.paper.verdicts)."""

import json

import numpy as np
import pytest
from scipy import stats

from kd_jax.paper import verdicts


def test_welch_is_scipys_unequal_variance_t_test():
  a, b = [97.0, 92.0, 101.0, 95.0, 99.0], [137.0, 139.0, 138.0]
  test = verdicts.welch(a, b)
  reference = stats.ttest_ind(a, b, equal_var=False)
  assert test["t"] == pytest.approx(reference.statistic)
  assert test["p"] == pytest.approx(reference.pvalue)
  assert test["difference"] == pytest.approx(np.mean(a) - np.mean(b)) and test["n"] == [5, 3]
  one = verdicts.one_sample([70.0, 72.0, 71.0], 63.0)
  assert one["p"] == pytest.approx(stats.ttest_1samp([70.0, 72.0, 71.0], 63.0).pvalue)
  before, after = [120.0, 131.0, 125.0], [101.0, 110.0, 108.0]
  pair = verdicts.paired(after, before)
  assert pair["p"] == pytest.approx(stats.ttest_rel(after, before).pvalue)
  assert pair["p"] < verdicts.welch(after, before)["p"]  # The pairing removes the members' spread.


def test_a_claim_holds_only_on_decisive_evidence():
  assert verdicts.lower([97, 92, 101], [137, 138, 139])["verdict"] == verdicts.HOLDS
  assert verdicts.lower([137, 138, 139], [97, 92, 101])["verdict"] == verdicts.FAILS
  # The quick profile's table: 139.3 +- 4.0 against 143.0 +- 2.6 is not decided.
  assert verdicts.lower([135, 143, 140], [140, 145, 144])["verdict"] == verdicts.UNDECIDED
  assert verdicts.above([0.97, 0.98, 0.975], 0.9)["verdict"] == verdicts.HOLDS
  assert verdicts.lower([90], [100, 101])["verdict"] == verdicts.UNDECIDED  # One seed: no spread.


def test_alike_needs_every_pair_inside_the_margin():
  close = {"T=12": [100, 102, 101], "T=20": [101, 100, 102], "T=30": [102, 101, 100]}
  assert verdicts.alike(close, 10)["verdict"] == verdicts.HOLDS
  assert verdicts.alike(close, 0.5)["verdict"] == verdicts.UNDECIDED  # Too narrow to show.
  apart = {"T=12": [100, 100.5, 99.5], "T=20": [130, 130.5, 129.5]}
  result = verdicts.alike(apart, 10)
  assert result["verdict"] == verdicts.FAILS and result["pair"] == ["T=12", "T=20"]
  # Different by Welch's test, yet within the margin: alike.
  near = {"T=12": [100, 100.5, 99.5], "T=20": [102, 102.5, 101.5]}
  assert verdicts.welch(near["T=12"], near["T=20"])["p"] < 0.05
  assert verdicts.alike(near, 10)["verdict"] == verdicts.HOLDS


def test_alikes_p_is_the_two_one_sided_tests_p():
  # The first cpu run's 2x300 temperatures above 8 (results/cpu_pilot): the widest pair differs
  # by Welch's test at p = 0.043, yet the equivalence test's own p is 0.57: not decided.
  hot = {"T=12": [118, 124, 118], "T=20": [107, 106, 115], "T=30": [109, 109, 121]}
  result = verdicts.alike(hot, 10)
  a, b = (np.array(hot[name], float) for name in result["pair"])
  # TOST restated with scipy: H0 d <= -10 (shift a up by the margin), H0 d >= +10 (down).
  reference = max(stats.ttest_ind(a + 10, b, equal_var=False, alternative="greater").pvalue,
                  stats.ttest_ind(a - 10, b, equal_var=False, alternative="less").pvalue)
  assert result["p"] == pytest.approx(reference) == pytest.approx(0.57, abs=0.01)
  assert result["pair"] == ["T=12", "T=20"] and result["welch_p"] == pytest.approx(0.043, abs=1e-3)
  assert result["verdict"] == verdicts.UNDECIDED
  assert "p = 0.57" in verdicts.describe(result)
  # Decisively beyond the margin: does not hold, with the one-sided p of |d| > margin.
  apart = {"a": [100, 101, 99, 100], "b": [125, 126, 124, 125]}
  beyond = verdicts.alike(apart, 10)
  reference = stats.ttest_ind(np.array(apart["b"], float) - 10, apart["a"], equal_var=False,
                              alternative="greater").pvalue
  assert beyond["verdict"] == verdicts.FAILS and beyond["p_beyond"] == pytest.approx(reference)


def test_each_claim_is_tested_at_its_own_level():
  # The student of the ensemble in the first cpu run: p = 0.02 holds at 0.05, not at the 0.05 / 3
  # of its third look.
  ensemble, one = [93, 85, 91, 82, 77], [99, 96, 96, 96, 94]
  assert verdicts.lower(ensemble, one)["verdict"] == verdicts.HOLDS
  third_look = verdicts.lower(ensemble, one, alpha=0.05 / 3)
  assert third_look["verdict"] == verdicts.UNDECIDED and third_look["alpha"] == 0.05 / 3
  assert "at alpha = 0.0167" in verdicts.describe(third_look)
  close = {"T=12": [100, 102, 101], "T=20": [101, 100, 102]}
  assert verdicts.alike(close, 3)["verdict"] == verdicts.HOLDS
  assert verdicts.alike(close, 3, alpha=0.005)["verdict"] == verdicts.UNDECIDED


def test_an_ensemble_is_compared_as_ensemble_minus_members():
  test = verdicts.figure_lower(62.0, [74.0, 74.0, 66.0])
  assert test["difference"] == pytest.approx(62 - 71.333, abs=1e-3)  # Negative: fewer errors.
  assert test["p"] == pytest.approx(stats.ttest_1samp([74, 74, 66], 62).pvalue)
  assert test["verdict"] == verdicts.UNDECIDED  # p = 0.073, the first cpu run's.
  assert verdicts.figure_lower(62.0, [74, 73, 75, 72, 74])["verdict"] == verdicts.HOLDS
  assert verdicts.figure_lower(80.0, [74, 73, 75, 72, 74])["verdict"] == verdicts.FAILS


def test_the_best_setting_in_a_range_must_beat_the_best_on_each_side():
  groups = {1.0: [310, 300, 305], 2.0: [290, 285, 288], 2.5: [270, 268, 272], 3.0: [280, 279, 281],
            6.0: [300, 302, 298]}
  result = verdicts.best_in_range(groups, 2.5, 4.0)
  assert result["best"] == 2.5 and result["verdict"] == verdicts.HOLDS
  assert [t["n"] for t in result["tests"]] == [[3, 3], [3, 3]]
  # The less decisive of the two tests is shown: against the best below.
  assert result["difference"] == pytest.approx(np.mean(groups[2.5]) - np.mean(groups[2.0]))
  groups[2.0] = [250, 252, 251]  # Decisively better below the range: does not hold.
  assert verdicts.best_in_range(groups, 2.5, 4.0)["verdict"] == verdicts.FAILS
  groups[2.0] = [265, 290, 280]  # Overlapping: not decided.
  assert verdicts.best_in_range(groups, 2.5, 4.0)["verdict"] == verdicts.UNDECIDED


def test_the_last_epoch_and_the_tail_must_agree():
  holds, undecided = {"verdict": verdicts.HOLDS}, {"verdict": verdicts.UNDECIDED}
  assert verdicts.combined(holds, holds) == verdicts.HOLDS
  assert verdicts.combined(holds, undecided) == verdicts.UNDECIDED


def test_tests_without_spread_are_standard_json():
  for test in (verdicts.lower([70, 70], [63, 63]), verdicts.lower([70], [63]),
               verdicts.above([70, 70, 70], 63)):
    json.loads(json.dumps(test, allow_nan=False))
    assert verdicts.describe(test)
  # Tied seeds on both sides are no evidence either way.
  assert verdicts.lower([70, 70], [63, 63])["verdict"] == verdicts.UNDECIDED
