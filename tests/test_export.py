"""`kd_jax.export`: the served model equals the evaluated one; `kd_jax.frontier` reads a
reproduction and measures what each model costs to serve."""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import make_tiny_mnist, run_command, snapshot
from kd_jax import checkpointing, data, export, losses, models, parallelism, targets
from kd_jax.paper import frontier

pytestmark = pytest.mark.slow  # Every test here starts processes (see conftest.py).

# A fresh interpreter that needs jax alone: the README's serving example.
SERVE = """
import sys, numpy as np
from jax import export
model = export.deserialize(open(sys.argv[1] + "/model.jax_exported", "rb").read())
images = np.load(sys.argv[2])
one_by_one = np.concatenate([np.asarray(model.call(images[i:i + 1])) for i in range(10)])
np.savez(sys.argv[3], batch=np.asarray(model.call(images)), one_by_one=one_by_one,
         kd_jax_imported="kd_jax" in sys.modules)
"""


def _reference_probabilities(workdir, images, member=None):
  """What kd_jax itself computes: the members' softmax, averaged (the arithmetic ensemble)."""
  params, config, _ = checkpointing.restore_variables(
      workdir, parallelism.make_mesh(), members=None if member is None else (member,))
  logits = targets.member_logits(models.model_from_config(config.model), params,
                                 data.normalize(images))
  return np.exp(np.asarray(losses.ensemble_log_probabilities(logits)))


@pytest.mark.parametrize("member", [None, 1])
def test_exported_model_serves_what_evaluate_scores(tiny_reproduction, tmp_path, member):
  root, _ = tiny_reproduction
  workdir = root / "teachers"  # A population of two: its ensemble, or member 1 alone.
  out = tmp_path / "exported"
  args = [f"--workdir={workdir}", f"--out={out}"] + ([f"--member={member}"] if member else [])
  run_command("export", *args)
  metadata = json.loads((out / "metadata.json").read_text())
  assert metadata["members"] == ([0, 1] if member is None else [1])
  assert set(metadata["platforms"]) == {"cpu", "cuda"}
  test = make_tiny_mnist()
  images = np.resize(test["test_images"], (1000, 28, 28))  # Batch 1000: the test set, tiled.
  np.save(tmp_path / "images.npy", images)
  subprocess.run([sys.executable, "-c", SERVE, str(out), str(tmp_path / "images.npy"),
                  str(tmp_path / "served.npz")], check=True, cwd=tmp_path)
  served = np.load(tmp_path / "served.npz")
  assert not served["kd_jax_imported"]
  expected = _reference_probabilities(workdir, images, member)
  np.testing.assert_allclose(served["batch"], expected, atol=1e-5)
  np.testing.assert_allclose(served["one_by_one"], expected[:10], atol=1e-5)
  # Same errors as kd_jax.evaluate reports for that model.
  report = json.loads((workdir / "eval.json").read_text())
  errors = int((served["batch"][:200].argmax(1) != test["test_labels"]).sum())
  assert errors == (report["test_errors"] if member is None
                    else report["members"][member]["test_errors"])
  np.testing.assert_allclose(export.load(out)(images[:3]), expected[:3], atol=1e-5)


def test_export_refuses_bad_requests_before_writing(tiny_reproduction, tmp_path):
  root, _ = tiny_reproduction
  existing = tmp_path / "existing"
  existing.mkdir()
  (existing / "keep.txt").write_text("mine")
  before = snapshot(tmp_path)
  result = run_command("export", f"--workdir={root / 'teachers'}", f"--out={existing}",
                       check=False)
  assert result.returncode == 2 and "not a kd_jax export; it is left as it is" in result.stderr
  result = run_command("export", f"--workdir={root / 'teachers'}", f"--out={tmp_path / 'x'}",
                       "--member=5", check=False)
  assert result.returncode == 4 and "has 2 member(s)" in result.stderr
  empty = tmp_path / "not_a_run"
  empty.mkdir()
  result = run_command("export", f"--workdir={empty}", f"--out={tmp_path / 'y'}", check=False)
  assert result.returncode == 4 and "not a kd_jax run directory" in result.stderr
  for result_text in (result.stderr,):
    assert "Traceback" not in result_text
  assert snapshot(tmp_path) == before and not (tmp_path / "x").exists()


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="needs tensorflow")
def test_saved_model_matches_the_jax_export(tiny_reproduction, tmp_path):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  root, _ = tiny_reproduction
  export.export_run(root / "table" / "distilled", tmp_path / "out", member=0, saved_model=True)
  images = make_tiny_mnist()["test_images"][:7]
  served = tf.saved_model.load(str(tmp_path / "out" / "saved_model")).serve(images).numpy()
  np.testing.assert_allclose(served, export.load(tmp_path / "out")(images), atol=1e-5)


def test_frontier_measures_every_model_of_a_reproduction(tiny_reproduction, tiny_mnist_dir,
                                                         tmp_path):
  root, _ = tiny_reproduction
  run_command("frontier", f"--root={root}", f"--out={tmp_path}", "--latency_calls=5",
              "--throughput_calls=2", mnist_dir=tiny_mnist_dir)
  entries = json.loads((tmp_path / "frontier.json").read_text())["models"]
  kinds = [e["kind"] for e in entries]
  assert kinds.count("teacher") == kinds.count("ensemble") == 1
  # The table's 2x800 and the two sizes of the temperature sweep, distilled and alone.
  assert kinds.count("distilled") == kinds.count("alone") == 3
  by_name = {e["name"]: e for e in entries}
  teacher, ensemble = by_name["teacher"], by_name["ensemble of 2 teachers"]
  assert teacher["flops_per_image"] == 2 * (784 * 32 + 32 * 32 + 32 * 10)
  assert ensemble["flops_per_image"] == 2 * teacher["flops_per_image"]
  assert ensemble["num_parameters"] == 2 * teacher["num_parameters"]
  results = json.loads((root / "results.json").read_text())
  assert ensemble["test_errors"]["mean"] == (
      results["experiments"]["ensemble"]["arithmetic_ensemble_errors"])
  for entry in entries:
    assert 0 < entry["latency_batch1_ms"]["median"] <= entry["latency_batch1_ms"]["p99"]
    assert entry["throughput_batch1000_per_s"] > 0
  assert (tmp_path / "frontier.png").stat().st_size > 0
  assert frontier.matmul_flops((1200, 1200), 10) == 10 * 2 * (784 * 1200 + 1200**2 + 12000)
