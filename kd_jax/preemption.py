"""SIGTERM/SIGINT handling: finish the epoch in flight, checkpoint, exit with EXIT_PREEMPTED.

Schedulers preempt with SIGTERM (SLURM, Kubernetes, TPU maintenance) and users with Ctrl-C. Both
only set a flag; the training loop checks it between compiled epochs, saves, and raises
`Preempted`, whose exit code tells a job script to requeue the same command.
"""

from __future__ import annotations

import signal

import jax
import numpy as np

from kd_jax.errors import KdJaxError

EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL: "try again later".


class Preempted(KdJaxError):
  """Training stopped on a signal after writing a checkpoint; rerun the command to resume."""

  exit_code = EXIT_PREEMPTED
  label = "stopped"


class PreemptionGuard:
  """Context manager that turns SIGTERM and SIGINT into a flag while training runs."""

  def __init__(self):
    self.signal_name: str | None = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    self.signal_name = signal.Signals(signum).name

  def __enter__(self) -> PreemptionGuard:
    for signum in (signal.SIGTERM, signal.SIGINT):
      self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)

  def requested(self) -> bool:
    """True on every process as soon as any process got a signal (so all save together)."""
    local = self.signal_name is not None
    if jax.process_count() == 1:
      return local
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return bool(np.any(multihost_utils.process_allgather(np.array(local))))
