"""Rewrites the README's results table and claims block from the committed results.json files.

  python scripts/readme_claims.py

Each block sits between its markers (`report.RESULTS_BEGIN` / `RESULTS_END`, `report.README_BEGIN`
/ `README_END`), which name the files it was generated from; tests/test_docs.py fails when a
block no longer matches what those files render.
"""

import json
import pathlib
import re

from kd_jax.paper import report

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULTS = {"path": "results/cpu/results.json", "fidelity": "results/fidelity/results.json",
            "teaching": "results/function_matching/results.json"}
# Each block: its markers and how to render it from the files its begin marker names.
BLOCKS = {
    "results": (report.RESULTS_BEGIN, report.RESULTS_END,
                lambda files: report.readme_results(_load(files["path"]), files["path"],
                                                    _load(files["fidelity"]), files["fidelity"],
                                                    _load(files["teaching"]), files["teaching"])),
    "claims": (report.README_BEGIN, report.README_END,
               lambda files: report.readme_claims(_load(files["path"]), files["path"])),
}


def _load(path: str) -> dict:
  return json.loads((ROOT / path).read_text())


def current_block(readme: str, name: str) -> re.Match:
  """Block `name` in README.md text, its source files as named groups (an error if it has
  none)."""
  begin, end, _ = BLOCKS[name]
  pattern = re.escape(begin)
  for field in ("path", "fidelity", "teaching"):
    pattern = pattern.replace(re.escape("{" + field + "}"), f"(?P<{field}>[^ ]+)")
  match = re.search(f"{pattern}.*?{re.escape(end)}", readme, flags=re.S)
  if match is None:
    raise SystemExit(f"README.md has no {name} block ({begin}).")
  return match


def rendered(name: str, files: dict[str, str]) -> str:
  """Block `name` rendered from `files` (the paths its begin marker names)."""
  return BLOCKS[name][2](files)


if __name__ == "__main__":
  readme_path = ROOT / "README.md"
  readme = readme_path.read_text()
  for name in BLOCKS:
    match = current_block(readme, name)
    files = {**DEFAULTS, **{k: v for k, v in match.groupdict().items() if v}}
    readme = readme[:match.start()] + rendered(name, files) + readme[match.end():]
  readme_path.write_text(readme)
  print(f"Wrote the results table and claims block of {readme_path}")
