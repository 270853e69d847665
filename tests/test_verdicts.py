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
