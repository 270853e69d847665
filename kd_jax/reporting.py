"""Where results go: metrics.jsonl, TensorBoard events, a progress bar and one-line summaries.

Only process 0 writes or prints, so a multi-process run logs once.
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

import jax
from absl import logging


def is_main_process() -> bool:
  return jax.process_index() == 0


def _to_python(value: Any) -> Any:
  if hasattr(value, "tolist"):
    return value.tolist()
  return value


class MetricsWriter:
  """Appends one JSON object per epoch to RUN/metrics.jsonl and mirrors scalars to TensorBoard."""

  def __init__(self, workdir: str | pathlib.Path, keep_epochs_up_to: int = 0):
    """Opens RUN/metrics.jsonl, dropping records past `keep_epochs_up_to` (the resumed epoch).

    A run killed after logging an epoch but before checkpointing it redoes that epoch; dropping
    the stale record keeps exactly one line per epoch.
    """
    self._path = pathlib.Path(workdir) / "metrics.jsonl"
    self._tb = None
    if not is_main_process():
      return
    if self._path.exists():
      lines = self._path.read_text().splitlines()
      kept = [line for line in lines
              if line.strip() and json.loads(line)["epoch"] <= keep_epochs_up_to]
      if kept != lines:
        tmp = self._path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(self._path)
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"))
    except ImportError:
      logging.info("tensorboardX is not installed: no TensorBoard events are written.")
      print("Note: tensorboardX is not installed, so no TensorBoard events are written.")

  def write(self, record: dict[str, Any]) -> None:
    if not is_main_process():
      return
    record = {k: _to_python(v) for k, v in record.items()}
    with self._path.open("a") as f:
      f.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for key, value in record.items():
        if isinstance(value, (int, float)) and key != "epoch":
          self._tb.add_scalar(key, value, record["epoch"])
        elif isinstance(value, list):  # A population's per-member figures.
          for member, member_value in enumerate(value):
            self._tb.add_scalar(f"{key}/member_{member}", member_value, record["epoch"])
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def write_json(path: str | pathlib.Path, payload: dict[str, Any]) -> None:
  """Writes JSON atomically (temp file then rename), so a kill never leaves half a file."""
  if not is_main_process():
    return
  path = pathlib.Path(path)
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps({k: _to_python(v) for k, v in payload.items()}, indent=2) + "\n")
  tmp.replace(path)


def progress_bar(total: int, initial: int, description: str):
  """A tqdm bar over epochs on process 0 at a terminal; elsewhere (other processes, logs of batch
  jobs) a no-op whose `write` still prints, so logs get one plain line per epoch."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=total, initial=initial, desc=description, unit="epoch",
              disable=not is_main_process() or not sys.stderr.isatty(), dynamic_ncols=True)


def say(message: str) -> None:
  if is_main_process():
    print(message, flush=True)
