"""Readouts that mean what they say: the distilled loss is KL(teacher || student) x T^2 and falls
towards 0, every run's figures print under its own line, and TensorBoard gets every epoch."""

import struct

import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from kd_jax import reporting, trainer
from conftest import tiny_config

NUM_EPOCHS = 10


def _events(folder):
  """The scalar events of a TensorBoard folder, {tag: [steps]}, read from the TFRecord files."""
  scalars = {}
  for path in sorted(folder.glob("events.out.tfevents.*")):
    raw, offset = path.read_bytes(), 0
    while offset < len(raw):
      (length,) = struct.unpack("<Q", raw[offset:offset + 8])
      event = event_pb2.Event.FromString(raw[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append(event.step)
  return scalars


@pytest.fixture(scope="module")
def runs(tiny_mnist_dir, tmp_path_factory):
  root = tmp_path_factory.mktemp("readouts")
  trainer.train_and_evaluate(tiny_config(tiny_mnist_dir, num_epochs=4, model__hidden_sizes=(32,)),
                             root / "teacher")
  trainer.train_and_evaluate(
      tiny_config(tiny_mnist_dir, teacher=root / "teacher", num_epochs=NUM_EPOCHS,
                  model__hidden_sizes=(32,), temperature=20.0, alpha=0.9), root / "student")
  return root


def test_distilled_loss_is_kl_and_falls_towards_zero(runs):
  records = reporting.read_metrics(runs / "student" / "metrics.jsonl")
  soft = [r["train_soft_loss"] for r in records]
  assert soft[-1] < 0.5 * soft[0]  # At T = 20 the cross-entropy would sit near 800 throughout.
  assert all(s >= 0 for s in soft)
  for r in records:  # The total is alpha * soft + (1 - alpha) * hard.
    np.testing.assert_allclose(r["train_loss"], 0.9 * r["train_soft_loss"]
                               + 0.1 * r["train_hard_loss"], rtol=1e-4)


def test_tensorboard_gets_every_epoch_of_every_figure(runs):
  scalars = _events(runs / "student" / "tensorboard")
  for tag in ("train_loss", "train_soft_loss", "train_hard_loss", "test_errors", "test_loss"):
    assert scalars[tag] == list(range(1, NUM_EPOCHS + 1)), tag
