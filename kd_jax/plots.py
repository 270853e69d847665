"""matplotlib for the commands that draw (optional: without it they skip the PNGs and say so)."""

from __future__ import annotations

import pathlib
from typing import Sequence

import numpy as np

from kd_jax import reporting, rundir


def pyplot():
  """matplotlib.pyplot on the Agg backend, or None (with a note) when it is not installed."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    reporting.say("Note: matplotlib is not installed, so no plot is written.")
    return None
  return plt


def save(fig, path: str | pathlib.Path) -> None:
  """Writes the figure as a PNG (process 0 only) and closes it."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig.tight_layout()
  if reporting.is_main_process():
    fig.savefig(path, dpi=120)
  plt.close(fig)


def test_errors(root: pathlib.Path, runs: Sequence[str]) -> None:
  """Test errors per epoch of each run under `root` (a population's: its members' mean), as
  ROOT/test_errors.png; skipped without matplotlib."""
  plt = pyplot()
  if plt is None:
    return
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for run in runs:
    records = [r for r in reporting.read_metrics(root / run / rundir.METRICS_FILE)
               if "test_errors" in r]  # Epochs evaluated (`eval_every_epochs`).
    ax.plot([r["epoch"] for r in records], [np.mean(r["test_errors"]) for r in records],
            marker="o" if len(records) <= 40 else None, markersize=3, label=run)
  ax.set(xlabel="epoch", ylabel="test errors (of 10,000)", yscale="log",
         title="MNIST test errors")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize="small")
  save(fig, root / "test_errors.png")
