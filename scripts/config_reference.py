"""Writes docs/config_reference.md from kd_jax.config_fields.FIELDS, where each field is declared.

  python scripts/config_reference.py

tests/test_docs.py fails when the committed page is not what `reference_markdown` renders.
"""

import json
import pathlib

from kd_jax.config_fields import FIELDS


def reference_markdown() -> str:
  """docs/config_reference.md: every field with its default, type, readers and meaning."""
  lines = ["# Config reference", "",
           "Generated from `kd_jax.config_fields.FIELDS` (the table behind `base_config()` and "
           "`add_distillation()`) by `python scripts/config_reference.py`; a test keeps it "
           "current. Override any field with `--config.FIELD=VALUE` or `kd_jax.configs.get(NAME, FIELD=VALUE)` "
           "(nested: `model__hidden_sizes`).", "",
           "| field | default | type | used by | meaning |", "|---|---|---|---|---|"]
  for name, field in FIELDS.items():
    shown = json.dumps(field.default).replace("|", "\\|")
    lines.append(f"| `{name}` | `{shown}` | {field.type.__name__} | {field.used_by} | "
                 f"{field.meaning} |")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  path = pathlib.Path(__file__).resolve().parents[1] / "docs" / "config_reference.md"
  path.write_text(reference_markdown())
  print(f"Wrote {path}")
