"""Rewrites the README's claims block from a reproduction's results.json.

  python scripts/readme_claims.py [results/cpu/results.json]

The block sits between `report.README_BEGIN` and `report.README_END`; tests/test_docs.py
fails when it no longer matches the committed results.
"""

import json
import pathlib
import re
import sys

from kd_jax.paper import report

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT = "results/cpu/results.json"


def current_block(readme: str) -> re.Match:
  """The block in README.md text (an error if it has none)."""
  begin = re.escape(report.README_BEGIN).replace(re.escape("{path}"), "(?P<path>[^ ]+)")
  match = re.search(f"{begin}.*?{re.escape(report.README_END)}", readme, flags=re.S)
  if match is None:
    raise SystemExit("README.md has no claims block (" + report.README_BEGIN + ").")
  return match


def rendered(path: str) -> str:
  return report.readme_claims(json.loads((ROOT / path).read_text()), path)


if __name__ == "__main__":
  results_path = sys.argv[1] if len(sys.argv) > 1 else DEFAULT
  readme_path = ROOT / "README.md"
  readme = readme_path.read_text()
  match = current_block(readme)
  readme_path.write_text(readme[:match.start()] + rendered(results_path) + readme[match.end():])
  print(f"Wrote the claims block of {readme_path} from {results_path}")
