"""Where results go: metrics.jsonl, TensorBoard events, a progress bar and one-line summaries.

Only process 0 writes or prints, so a multi-process run logs once.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import math
import os
import pathlib
import platform
import subprocess
import sys
from typing import Any, Iterator

import jax
from absl import logging

from kd_jax import faults
from kd_jax.errors import CheckpointError

TIMINGS_FILE = "timings.json"  # Multi-stage commands' wall seconds per stage, in their ROOT.


def is_main_process() -> bool:
  return jax.process_index() == 0


def _to_python(value: Any) -> Any:
  """JSON-ready: arrays to lists, and NaN/Infinity (which strict JSON has no words for) to null."""
  if hasattr(value, "tolist"):
    value = value.tolist()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, (list, tuple)):
    return [_to_python(v) for v in value]
  if isinstance(value, dict):
    return {k: _to_python(v) for k, v in value.items()}
  return value


def read_metrics(path: str | pathlib.Path) -> list[dict[str, Any]]:
  """The records of a metrics.jsonl. A cut-off last line (a kill or a full disk mid-write) is
  dropped with a warning; a bad line before the last is an error naming it."""
  path = pathlib.Path(path)
  lines = [line for line in path.read_text().splitlines() if line.strip()]
  records = []
  for number, line in enumerate(lines, start=1):
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError as e:
      if number < len(lines):
        raise CheckpointError(f"{path} line {number} is not valid JSON ({e}); remove that line "
                              "or the file.") from e
      say(f"Warning: dropped the cut-off last line of {path} (an interrupted write).")
  return records


class MetricsWriter:
  """Appends one JSON object per epoch to a run's metrics file (RUN/metrics.jsonl) and mirrors
  scalars to TensorBoard events in `tensorboard_dir`."""

  def __init__(self, path: str | pathlib.Path, tensorboard_dir: str | pathlib.Path,
               keep_epochs_up_to: int = 0):
    """Opens `path`, dropping records past `keep_epochs_up_to` (the resumed epoch).

    A run killed after logging an epoch but before checkpointing it redoes that epoch; dropping
    the stale record keeps exactly one line per epoch.
    """
    self._path = pathlib.Path(path)
    self._tb_dir = pathlib.Path(tensorboard_dir)
    self._tb = None
    if not is_main_process():
      return
    if self._path.exists():
      lines = [line for line in self._path.read_text().splitlines() if line.strip()]
      kept = [r for r in read_metrics(self._path) if r["epoch"] <= keep_epochs_up_to]
      if len(kept) != len(lines):
        tmp = self._path.with_suffix(".jsonl.tmp")
        with written(self._path):
          tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
          tmp.replace(self._path)
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      with written(self._tb_dir):
        self._tb = SummaryWriter(str(self._tb_dir))
    except ImportError:
      logging.info("tensorboardX is not installed: no TensorBoard events are written.")
      print("Note: tensorboardX is not installed, so no TensorBoard events are written.")

  def write(self, record: dict[str, Any]) -> None:
    """Appends the epoch's record; a failed write (a full disk) is a CheckpointError (exit 4),
    raised before the epoch's checkpoint is saved, so the run resumes from the one before."""
    if not is_main_process():
      return
    record = {k: _to_python(v) for k, v in record.items()}
    with written(self._path):
      faults.point("write_metrics")
      with self._path.open("a") as f:
        f.write(json.dumps(record, allow_nan=False) + "\n")
    if self._tb is not None:
      with written(self._tb_dir):
        faults.point("write_tensorboard")
        for key, value in record.items():
          if isinstance(value, (int, float)) and key != "epoch":
            self._tb.add_scalar(key, value, record["epoch"])
          elif isinstance(value, list):  # A population's per-member figures.
            for member, member_value in enumerate(value):
              self._tb.add_scalar(f"{key}/member_{member}", member_value, record["epoch"])
        self._tb.flush()

  def close(self) -> None:
    """Flushes and closes TensorBoard's events; a failed flush (a full disk) is the one-line
    CheckpointError (exit 4) that `write` raises too."""
    tb, self._tb = self._tb, None
    if tb is None:
      return
    try:
      with written(self._tb_dir):
        tb.close()
    finally:  # Failed or not, closed: tensorboardX's atexit hook would retry, with a traceback,
      events = getattr(getattr(tb, "file_writer", None), "event_writer", None)  # and its thread
      if events is not None and not events._closed:  # pylint: disable=protected-access
        worker = events._worker  # pylint: disable=protected-access  # would read a closed queue.
        if worker is not None and worker.is_alive():
          worker.stop()
        events._closed = True  # pylint: disable=protected-access


def stage_timings(root: pathlib.Path) -> dict[str, float]:
  """ROOT/timings.json of a multi-stage command: wall seconds per stage so far (empty before)."""
  path = root / TIMINGS_FILE
  return json.loads(path.read_text()) if path.exists() else {}


@contextlib.contextmanager
def written(path: str | pathlib.Path) -> Iterator[None]:
  """Turns an OS error while writing `path` (a full or read-only disk) into the one-line
  CheckpointError (exit 4) that commands print instead of a traceback."""
  try:
    yield
  except OSError as e:
    raise CheckpointError(f"could not write {path} ({e.strerror or e}): is the disk full or "
                          "read-only? Checkpoints already written are intact; free space and "
                          "rerun to resume.") from e


def write_json(path: str | pathlib.Path, payload: dict[str, Any]) -> None:
  """Writes JSON atomically (temp file then rename), so a kill never leaves half a file; an OS
  error is a CheckpointError naming the file."""
  if not is_main_process():
    return
  path = pathlib.Path(path)
  tmp = path.with_suffix(path.suffix + ".tmp")
  with written(path):
    faults.point(f"write_json:{path.name}")
    tmp.write_text(json.dumps(_to_python(payload), indent=2, allow_nan=False) + "\n")
    tmp.replace(path)


def progress_bar(total: int, initial: int, description: str):
  """A tqdm bar over epochs on process 0 at a terminal; elsewhere (other processes, logs of batch
  jobs) a no-op whose `write` still prints, so logs get one plain line per epoch."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=total, initial=initial, desc=description, unit="epoch",
              disable=not is_main_process() or not sys.stderr.isatty(), dynamic_ncols=True)


# The CPU features that decide XLA:CPU's kernels (and whether bfloat16 has native instructions).
VECTOR_EXTENSIONS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


def machine() -> dict[str, Any]:
  """The accelerator, host CPU and software versions behind a set of numbers."""
  device = jax.devices()[0]
  cpu = platform.processor() or platform.machine()
  extensions = []
  if pathlib.Path("/proc/cpuinfo").exists():
    lines = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    cpu = names[0] if names else cpu
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    extensions = [name for name in VECTOR_EXTENSIONS if name in flags]
  return {"platform": device.platform, "device": device.device_kind,
          "num_devices": jax.device_count(), "host_cpu": cpu, "host_cores": os.cpu_count(),
          "host_vector_extensions": extensions,
          "jax": jax.__version__, "jaxlib": jax.lib.__version__ if hasattr(jax, "lib") else None,
          "backend_version": device.client.platform_version,
          "matmul_library": ("cuBLAS/cuDNN" if device.platform == "gpu" else
                             "XLA:CPU (Eigen/oneDNN kernels)" if device.platform == "cpu" else
                             device.platform)}


def describe_machine(machine_record: dict[str, Any]) -> str:
  """The phrase every report uses to name the machine behind its numbers: device, host CPU,
  cores, the vector extensions that decide XLA:CPU's kernels, device count when above one, and
  jax (records written before a field existed show it as not recorded)."""
  extensions = " ".join(machine_record.get("host_vector_extensions") or []) or \
      "vector extensions not recorded"
  devices = machine_record.get("num_devices", 1)
  return (f"{machine_record['host_cpu']} ({machine_record.get('host_cores', '?')} cores, "
          f"{extensions}), device {machine_record.get('device', 'cpu')}"
          f"{f' × {devices}' if devices > 1 else ''}, jax {machine_record['jax']}")


@functools.cache
def code_version() -> str:
  """The git commit of the kd_jax checkout (with '-dirty' for uncommitted changes), or the
  package version when it is not a git checkout; read once per process, so it names the code
  this process imported even when the checkout changes under a long run."""
  repo = pathlib.Path(__file__).resolve().parents[1]
  try:
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=repo, check=True,
                            capture_output=True, text=True, timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    commit = ""
  return commit or f"kd_jax {importlib.metadata.version('kd_jax')}"


def say(message: str) -> None:
  if is_main_process():
    print(message, flush=True)
