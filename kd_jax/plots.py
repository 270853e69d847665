"""matplotlib for the commands that draw (optional: without it they skip the PNGs and say so)."""

from __future__ import annotations

import pathlib

from kd_jax import reporting


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
