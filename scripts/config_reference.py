"""Writes docs/config_reference.md from kd_jax.config_lib.FIELDS, where each field is declared.

  python scripts/config_reference.py
"""

import pathlib

from kd_jax import config_lib

if __name__ == "__main__":
  path = pathlib.Path(__file__).resolve().parents[1] / "docs" / "config_reference.md"
  path.write_text(config_lib.reference_markdown())
  print(f"Wrote {path}")
