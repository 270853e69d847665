"""The documentation: the site builds in strict mode (no broken link or missing page), the config
reference is current and describes every field, and the README stays a front page."""

import html
import os
import re
import subprocess
import sys

import pytest

from kd_jax import config_fields, config_lib, rundir
from conftest import REPO_ROOT, load_script


def test_config_reference_describes_every_field_and_is_current():
  defaults = config_lib.add_distillation(config_lib.base_config())
  flat = rundir._flatten(defaults.to_dict())  # pylint: disable=protected-access
  assert set(flat) == set(config_fields.FIELDS), "describe new fields in config_fields.FIELDS"
  committed = (REPO_ROOT / "docs" / "config_reference.md").read_text()
  assert committed == load_script("config_reference").reference_markdown(), (
      "docs/config_reference.md is stale: run python scripts/config_reference.py")


def test_readme_tables_are_the_committed_results():
  script = load_script("readme_claims")
  readme = (REPO_ROOT / "README.md").read_text()
  for name in script.BLOCKS:
    block = script.current_block(readme, name)
    assert block.group(0) == script.rendered(name, block.groupdict()), (
        f"README.md's {name} block is stale: run python scripts/readme_claims.py")


@pytest.mark.slow
def test_docs_build_strictly(tmp_path):
  env = dict(os.environ, NO_MKDOCS_2_WARNING="1", JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  api = (tmp_path / "site" / "api" / "index.html").read_text()
  assert "kd_jax.api.train" in api and "Run" in api  # Generated from the docstrings.
  # The docstrings' examples render as code, not as run-on prose.
  code = [html.unescape(re.sub(r"<[^>]+>", "", block))
          for block in re.findall(r"<pre[^>]*>(.*?)</pre>", api, re.S)]
  assert any("kd_jax.train(" in block for block in code), "the API example is not a code block"


def test_readme_is_a_front_page():
  lines = (REPO_ROOT / "README.md").read_text().splitlines()
  assert len(lines) <= 150
  text = "\n".join(lines)
  for needed in ("python -m kd_jax.pipeline --workdir runs/quick", "python -m pytest -q",
                 "import kd_jax", "docs/quickstart.md"):
    assert needed in text
