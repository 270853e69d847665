"""`import kd_jax` and its light modules load no heavy dependency: the API's names load on first
use (PEP 562), so the losses and models import without orbax, grain, the trainer or TensorFlow."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

HEAVY = ("orbax.checkpoint", "grain", "array_record", "kd_jax.trainer", "kd_jax.api",
         "tensorflow", "tensorflow_datasets")


def _fresh(code: str) -> dict:
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.slow  # Fresh interpreters.
def test_light_modules_import_no_heavy_dependency_and_the_api_still_resolves():
  for module in ("kd_jax", "kd_jax.losses", "kd_jax.models"):
    loaded = _fresh(f"import json, sys, {module}; "
                    f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    assert loaded == [], f"import {module} loads {loaded}"
  names = _fresh(
      "import json, kd_jax\n"
      "from kd_jax import Run, distill, load, train, use_deterministic_kernels, Preempted\n"
      "print(json.dumps({'all': sorted(kd_jax.__all__), 'dir': sorted(dir(kd_jax)),\n"
      "  'train': callable(train), 'Run': Run.__name__, 'distill': kd_jax.distill is distill,\n"
      "  'configs': 'quick_teacher' in kd_jax.configs.names(),\n"
      "  'errors': issubclass(kd_jax.ConfigError, kd_jax.KdJaxError),\n"
      "  'deterministic': callable(kd_jax.use_deterministic_kernels),\n"
      "  'missing': not hasattr(kd_jax, 'no_such_name')}))")
  assert set(names["all"]) <= set(names["dir"])
  assert names["Run"] == "Run"
  assert all(names[key] for key in ("train", "distill", "configs", "errors", "deterministic",
                                    "missing"))
