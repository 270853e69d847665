"""The sample sizes of a reproduction, chosen before it runs: a power plan from a pilot.

  python scripts/power_plan.py [PILOT_RESULTS_JSON] [OUT_JSON] [PROFILE]

Reads a finished reproduction's results.json (default results/cpu_pilot/results.json, the first
cpu run), simulates each claim's own test at the pilot's means and spread at the level its looks
allow (`kd_jax.paper.power.plan`, `configs/reproduce.py`'s `earlier_looks` for PROFILE, default
cpu) and writes, per claim, the assumed effect, the level, the power and the n it gives (default
results/cpu_pilot/power_plan.json). The profile's sizes must be at least these
(tests/test_power.py).
"""

import json
import pathlib
import sys

from kd_jax import configs, reporting
from kd_jax.paper import power
from kd_jax.paper.figures import PAPER


def main(pilot_path: str, out_path: str, profile: str) -> None:
  config = configs.module("reproduce").get_config(profile)
  pilot = json.loads(pathlib.Path(pilot_path).read_text())
  entries = power.plan(pilot, dict(config.earlier_looks), config.temperature_sweep.alike_margin,
                       PAPER["mythical"]["corrected_accuracy_on_class"])
  reporting.write_json(pathlib.Path(out_path), {
      "pilot": pilot_path, "pilot_code_version": pilot["code_version"], "profile": profile,
      "target_power": power.POWER, "simulations": power.SIMULATIONS,
      "rule": "each claim tested at 0.05 / looks (Bonferroni over looks); power = the share of "
              "simulated studies at the assumed effect reaching the verdict it implies",
      "claims": entries})
  for key, entry in entries.items():
    print(f"{key}: n = {entry['n']} (power {entry['power']:.2f} at alpha {entry['alpha']:.3g}; "
          f"{entry['field']}) | {entry['assumed']}")


if __name__ == "__main__":
  args = sys.argv[1:] + [None] * 3
  main(args[0] or "results/cpu_pilot/results.json", args[1] or "results/cpu_pilot/power_plan.json",
       args[2] or "cpu")
