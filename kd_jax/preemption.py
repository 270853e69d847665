"""SIGTERM/SIGINT handling: finish the epoch in flight, checkpoint, exit with EXIT_PREEMPTED.

Schedulers preempt with SIGTERM (SLURM, Kubernetes, TPU maintenance) and users with Ctrl-C. From
the moment a command starts (`install`, called when kd_jax is imported by `python -m kd_jax.*`)
both only set a flag: the training loop checks it between compiled epochs, saves, and raises
`Preempted`, whose exit code tells a job script to requeue the same command; a signal during
imports, data loading or compilation ends the command with that code at the next check (nothing
new to save). A second signal, or no exit within the grace period ($KD_JAX_GRACE_S, default 300 s)
after the first, ends the process at once with the same code: the latest checkpoint stays valid.

This module imports nothing heavy, so it can be installed before jax is.
"""

from __future__ import annotations

import os
import signal
import threading

from kd_jax.errors import KdJaxError

EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL: "try again later".
GRACE_ENV = "KD_JAX_GRACE_S"
_received: list[str] = []  # Names of the signals received, in order.


class Preempted(KdJaxError):
  """Training stopped on a signal after writing a checkpoint; rerun the command to resume."""

  exit_code = EXIT_PREEMPTED
  label = "stopped"


def _exit_now(reason: str) -> None:
  os.write(2, f"kd_jax: stopped: {reason}; exiting now without saving (the latest checkpoint "
              "is intact). Rerun the same command to resume.\n".encode())
  os._exit(EXIT_PREEMPTED)  # pylint: disable=protected-access


def _handle(signum, frame) -> None:
  del frame
  _received.append(signal.Signals(signum).name)
  if len(_received) > 1:
    _exit_now(f"a second signal ({_received[-1]})")
  grace = float(os.environ.get(GRACE_ENV, "300"))
  timer = threading.Timer(grace, _exit_now, args=(f"{_received[0]}, and the run did not stop "
                                                  f"within {grace:g} s ({GRACE_ENV})",))
  timer.daemon = True
  timer.start()


def install() -> None:
  """Turns SIGTERM and SIGINT into the flag `signal_received` reads (main thread only)."""
  if threading.current_thread() is threading.main_thread():
    for signum in (signal.SIGTERM, signal.SIGINT):
      signal.signal(signum, _handle)


def signal_received() -> str | None:
  """The name of the first signal received since `install`, or None."""
  return _received[0] if _received else None


class PreemptionGuard:
  """The flag, for the training loop; installs the handlers if no command did, and restores the
  previous ones on exit when it installed them (library use, e.g. inside tests)."""

  def __init__(self):
    self._previous = {}

  @property
  def signal_name(self) -> str | None:
    return signal_received()

  def __enter__(self) -> PreemptionGuard:
    if signal.getsignal(signal.SIGTERM) is not _handle:
      self._previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
      install()
    return self

  def __exit__(self, *exc_info) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)

  def requested(self) -> bool:
    """True on every process as soon as any process got a signal (so all save together)."""
    import jax  # pylint: disable=g-import-not-at-top
    local = signal_received() is not None
    if jax.process_count() == 1:
      return local
    import numpy as np  # pylint: disable=g-import-not-at-top
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return bool(np.any(multihost_utils.process_allgather(np.array(local))))
