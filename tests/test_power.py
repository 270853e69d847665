"""Sample sizes chosen in advance (kd_jax.paper.power, scripts/power_plan.py)."""

import json
import pathlib

import pytest

from kd_jax import configs
from kd_jax.paper import power, verdicts
from kd_jax.paper.figures import PAPER

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_levels_split_alpha_over_looks():
  assert power.level(1) == verdicts.ALPHA and power.level(3) == pytest.approx(verdicts.ALPHA / 3)


def test_power_grows_with_n_and_the_plan_takes_the_smallest_n_that_reaches_it():
  study = power.two_groups(100.0, 5.0, 110.0, 5.0, alpha=0.05)  # One sd of difference per 5.
  plan = power.planned_n(study, range(2, 30), simulations=400)
  powers = list(plan["powers"].values())
  assert powers[0] < 0.3 and plan["power"] >= power.POWER
  assert all(p < power.POWER for p in powers[:-1]) and list(plan["powers"])[-1] == plan["n"]
  # The textbook figure for d = 2 at alpha 0.05 and power 0.8 is n = 6 per group (Welch: 6-7).
  assert 5 <= plan["n"] <= 8
  # A stricter level needs more seeds; no effect never reaches the power.
  assert power.planned_n(power.two_groups(100.0, 5.0, 110.0, 5.0, alpha=0.005), range(2, 30),
                         simulations=400)["n"] > plan["n"]
  assert power.planned_n(power.two_groups(100.0, 5.0, 100.0, 5.0, alpha=0.05), range(2, 8),
                         simulations=200)["n"] is None


def test_an_equivalence_claim_needs_more_seeds_as_the_margin_narrows():
  wide = power.planned_n(power.alike(0.0, 5.3, 3, 15.0, 0.025), range(2, 20), simulations=150)
  narrow = power.planned_n(power.alike(0.0, 5.3, 3, 10.0, 0.025), range(2, 20), simulations=150)
  assert wide["n"] < narrow["n"]
  # The simulation at the pilot's sd (5.3, margin 10, alpha 0.05): about 8% at n = 3.
  assert power.power(power.alike(0.0, 5.3, 3, 10.0, 0.05), 3, simulations=300) < 0.2


def test_the_cpu_profile_reaches_its_committed_power_plan():
  plan = json.loads((REPO_ROOT / "results" / "cpu_pilot" / "power_plan.json").read_text())
  config = configs.module("reproduce").get_config("cpu")
  assert set(plan["claims"]) == set(configs.module("reproduce").CLAIMS)
  assert config.power_plan == "results/cpu_pilot/power_plan.json"
  sizes = {"table_seeds": config.table_seeds, "teacher.members": config.teacher.members,
           "seeds": config.seeds,
           "temperature_sweep.seeds_by_size[0]": config.temperature_sweep.seeds_by_size[0],
           "temperature_sweep.seeds_by_size[1]": config.temperature_sweep.seeds_by_size[1]}
  for key, entry in plan["claims"].items():
    assert entry["n"] is not None and sizes[entry["field"]] >= entry["n"], key
    assert entry["looks"] == config.earlier_looks[key] + 1
    assert entry["alpha"] == pytest.approx(power.level(entry["looks"]))


def test_what_would_decide_the_claims_a_run_left_undecided():
  """The committed cpu run as a pilot: an n per group for each undecided claim (and none for the
  decided ones), at the level of one look more, and more seeds than that run had."""
  results = json.loads((REPO_ROOT / "results/cpu/results.json").read_text())
  config = configs.module("reproduce").get_config("cpu")
  looks = dict(config.earlier_looks)
  entries = power.to_decide(results, looks, config.temperature_sweep.alike_margin,
                            PAPER["mythical"]["corrected_accuracy_on_class"], simulations=200)
  undecided = {c["key"]: c for c in results["claims"] if c["verdict"] == verdicts.UNDECIDED}
  assert set(entries) == set(undecided)
  for key, entry in entries.items():
    assert entry["looks"] == looks.get(key, 0) + 2
    assert entry["alpha"] == pytest.approx(verdicts.ALPHA / entry["looks"])
    if entry["n"] is not None:
      assert entry["n"] > min(undecided[key]["last_epoch"]["n"])
  assert power.to_decide({"claims": [{"key": "regulariser", "verdict": verdicts.HOLDS}]}, {},
                         10.0, 0.986) == {}
