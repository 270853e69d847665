"""How often following a run's config from the training entry point climbs back up the modules.

  python scripts/config_trace.py [--distill]

Trains a tiny run in-process under a profiler that records, in call order, the kd_jax module of
every function called with the run's config (or one of its sub-configs: config.data, config.model,
...) as an argument (the field table, kd_jax.config_fields, counted with kd_jax.config_lib).
Consecutive calls in one module collapse into one visit; a visit to a module
already left before is a *return*. A layered trainer hands the config down once and gets results
back, so its returns stay few (issue 29's bound: at most 10). Prints the visits and the count.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

import ml_collections

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from conftest import make_tiny_mnist, tiny_config  # pylint: disable=wrong-import-position
from kd_jax import data, trainer  # pylint: disable=wrong-import-position


# Modules counted as one: the field table's checks (config_fields) are called back from
# config_lib's validate() loop, a table read in place rather than a climb up the layers.
ONE_CONCEPT = {"kd_jax.config_fields": "kd_jax.config_lib"}


def config_ids(config: ml_collections.ConfigDict) -> set[int]:
  ids, stack = set(), [config]
  while stack:
    node = stack.pop()
    ids.add(id(node))
    stack.extend(v for v in node.values() if isinstance(v, ml_collections.ConfigDict))
  return ids


def trace(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> list[str]:
  """The modules visited with the config, in call order (consecutive repeats collapsed)."""
  ids, visits = config_ids(config), []

  def profile(frame, event, arg):
    del arg
    if event != "call" or not frame.f_globals.get("__name__", "").startswith("kd_jax"):
      return
    code = frame.f_code
    args = [frame.f_locals.get(name) for name in code.co_varnames[:code.co_argcount
                                                                 + code.co_kwonlyargcount]]
    if any(id(a) in ids for a in args if isinstance(a, ml_collections.ConfigDict)):
      module = ONE_CONCEPT.get(frame.f_globals["__name__"], frame.f_globals["__name__"])
      if not visits or visits[-1] != module:
        visits.append(module)

  sys.setprofile(profile)
  try:
    trainer.train_and_evaluate(config, workdir)
  finally:
    sys.setprofile(None)
  return visits


def returns(visits: list[str]) -> int:
  """Visits to a module that had been left before."""
  seen, count = set(), 0
  for module in visits:
    count += module in seen
    seen.add(module)
  return count


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--distill", action="store_true", help="Trace a distilled run (a teacher "
                      "is trained first, untraced).")
  args = parser.parse_args()
  root = pathlib.Path(tempfile.mkdtemp(prefix="config_trace_"))
  data.write_idx_folder(root / "mnist", make_tiny_mnist())
  config = tiny_config(root / "mnist", num_epochs=1, model__hidden_sizes=(16,))
  if args.distill:
    trainer.train_and_evaluate(config, root / "teacher")
    config = tiny_config(root / "mnist", teacher=root / "teacher", num_epochs=1,
                         model__hidden_sizes=(16,))
  visits = trace(config, root / "run")
  print(" -> ".join(v.removeprefix("kd_jax.") for v in visits))
  print(f"{len(visits)} visits, {returns(visits)} returns to a module already left")


if __name__ == "__main__":
  main()
